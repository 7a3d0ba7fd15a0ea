-- model: run_throughput
-- purpose: every training run of the models throughput_regression judges, as one row: its median
--   tokens/s and MFU and when it ran. Kept between diagnoses (pipelines/kept.py): a run whose rows did
--   not change is not read again, so an appended block reads its own run's rows, not every day of its
--   model.
-- grain: run (model × hardware × run_id; a run without a throughput reading: its row, tps null, n_steps 0)
-- time column: first_ts
-- partitions: none (computed per diagnose for the models of the pairs in scope, and held by the engine)
-- sources: run_throughput_steps, run_throughput_kept
-- serve: none (read by sql/diagnostics/throughput_regression.sql)
-- audits: tests/pipelines/test_diagnose_equal.py (the rule's alerts equal the reference's, which reads
--   raw train_steps, after diagnoses that kept rows and read only an appended run's)
--
-- run_throughput_steps holds the raw train_steps rows of the runs read this time; run_throughput_kept
-- the rows kept from the last diagnose for the model's other runs. A throughput reading is a step with
-- tokens/s positive and finite; date is the run's first day with one (its partition date).

with

steps as (
    select
        model,
        hardware,
        run_id,
        precision,
        date,
        ts,
        tokens_per_s,
        mfu,
        coalesce(tokens_per_s > 0 and tokens_per_s < cast('Infinity' as double), false) as is_tput
    from run_throughput_steps
),

fresh as (
    select
        model,
        hardware,
        run_id,
        max(precision) filter (where is_tput) as precision,
        min(date) filter (where is_tput) as date,
        min(ts) filter (where is_tput) as first_ts,
        max(ts) filter (where is_tput) as last_ts,
        median(tokens_per_s) filter (where is_tput) as tps,
        median(mfu) filter (where is_tput and mfu > 0 and mfu < cast('Infinity' as double)) as run_mfu,
        count(*) filter (where is_tput) as n_steps
    from steps
    group by model, hardware, run_id
),

final as (
    select
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(run_id as varchar) as run_id,
        cast(precision as varchar) as precision,
        cast(date as date) as date,
        cast(first_ts as timestamptz) as first_ts,
        cast(last_ts as timestamptz) as last_ts,
        cast(tps as double) as tps,
        cast(run_mfu as double) as run_mfu,
        cast(n_steps as bigint) as n_steps
    from fresh
    union all
    select
        model,
        hardware,
        run_id,
        precision,
        date,
        first_ts,
        last_ts,
        tps,
        run_mfu,
        n_steps
    from run_throughput_kept
)

select * from final
