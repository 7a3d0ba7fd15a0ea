-- rule: data_stall
-- purpose: a training run that spends a large share of its step time waiting for data: the input
--   pipeline (loading, decoding, augmentation, remote storage) cannot keep the accelerators fed.
-- grain: one row per training run with at least min_blocks stalled blocks; the range runs from the
--   first stalled block to the last.
-- scope: run (recomputed for the runs whose train_steps changed)
-- subject: run_id
-- sources: run_steps
-- params: block_steps int >= 2; max_data_share float > 0 < 1; min_blocks int >= 1; min_block_points int >= 1
-- audits: tests/pipelines/test_diagnose_rules.py (fires when half of each step waits for data, quiet on
--   the clean twin)
--
-- Per block of block_steps: data-wait share = total data_time_ms / total step_time_ms.
-- Blocks hold block_steps logged steps: block_steps times the run's logging interval (a run that logs
-- every 10th step gets blocks of 10 x block_steps steps), so sparse logs still fill them.

with

logged as (
    select
        s.model,
        s.hardware,
        s.precision,
        s.run_id,
        s.step,
        s.ts,
        s.step_time_ms,
        s.data_time_ms
    from run_steps as s
    where s.step_time_ms > 0
        and s.step_time_ms < cast('Infinity' as double)
        and s.data_time_ms >= 0
        and s.data_time_ms < cast('Infinity' as double)
),

logging_intervals as (
    select
        run_id,
        greatest(1, round((max(step) - min(step)) / greatest(count(*) - 1, 1))) as step_interval
    from logged
    group by run_id
),

steps as (
    select
        logged.*,
        cast(floor(logged.step / ({{ block_steps }} * logging_intervals.step_interval)) as bigint) as block
    from logged
    inner join logging_intervals
        on logging_intervals.run_id = logged.run_id
),

blocks as (
    select
        model,
        hardware,
        run_id,
        block,
        max(precision) as precision,
        sum(data_time_ms) / sum(step_time_ms) as data_share,
        min(step) as first_step,
        max(step) as last_step,
        min(ts) as first_ts,
        max(ts) as last_ts
    from steps
    group by model, hardware, run_id, block
    having count(*) >= {{ min_block_points }}
),

stalled as (
    select *
    from blocks
    where data_share > {{ max_data_share }}
),

per_run as (
    select
        model,
        hardware,
        run_id,
        max(precision) as precision,
        min(first_step) as step_start,
        max(last_step) as step_end,
        min(first_ts) as start_at,
        max(last_ts) as end_at,
        min_by(data_share, block) as observed,
        count(*) as n_points
    from stalled
    group by model, hardware, run_id
    having count(*) >= {{ min_blocks }}
),

final as (
    select
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(precision as varchar) as precision,
        cast(run_id as varchar) as run_id,
        cast(null as varchar) as suite,
        cast('data_wait_share' as varchar) as metric,
        cast(step_start as bigint) as step_start,
        cast(step_end as bigint) as step_end,
        cast(start_at as timestamptz) as start_at,
        cast(end_at as timestamptz) as end_at,
        cast(observed as double) as observed,
        cast({{ max_data_share }} as double) as expected,
        cast('largest acceptable data-wait share' as varchar) as baseline,
        cast(n_points as bigint) as n_points,
        cast(false as boolean) as escalate
    from per_run
)

select * from final
