-- rule: memory_pressure
-- purpose: a training run whose accelerator memory peaks within a few percent of capacity: the next
--   longer sequence, bigger batch or fragmentation spike is an out-of-memory crash.
-- grain: one row per training run with at least min_blocks blocks near capacity; the range runs from
--   the first such block to the last.
-- scope: run (recomputed for the runs whose train_steps changed)
-- subject: run_id
-- sources: run_steps
-- params: block_steps int >= 2; max_mem_share float > 0 <= 1; min_blocks int >= 1; critical_mem_share float > 0 <= 1
-- audits: tests/pipelines/test_diagnose_rules.py (fires at 98 % of capacity, quiet at 70 %)
--
-- Per block of block_steps: the peak of gpu_mem_gb / gpu_mem_total_gb. Escalated to critical when the
-- peak reaches critical_mem_share.
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
        s.gpu_mem_gb / nullif(s.gpu_mem_total_gb, 0) as mem_share
    from run_steps as s
    where s.gpu_mem_total_gb > 0
        and s.gpu_mem_total_gb < cast('Infinity' as double)
        and s.gpu_mem_gb >= 0
        and s.gpu_mem_gb < cast('Infinity' as double)
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
        max(mem_share) as peak_share,
        min(step) as first_step,
        max(step) as last_step,
        min(ts) as first_ts,
        max(ts) as last_ts
    from steps
    group by model, hardware, run_id, block
),

pressed as (
    select *
    from blocks
    where peak_share >= {{ max_mem_share }}
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
        min_by(peak_share, block) as observed,
        max(peak_share) as worst_share,
        count(*) as n_points
    from pressed
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
        cast('gpu_mem_share' as varchar) as metric,
        cast(step_start as bigint) as step_start,
        cast(step_end as bigint) as step_end,
        cast(start_at as timestamptz) as start_at,
        cast(end_at as timestamptz) as end_at,
        cast(observed as double) as observed,
        cast({{ max_mem_share }} as double) as expected,
        cast('largest comfortable share of accelerator memory' as varchar) as baseline,
        cast(n_points as bigint) as n_points,
        cast(worst_share >= {{ critical_mem_share }} as boolean) as escalate
    from per_run
)

select * from final
