-- rule: gpu_underutilization
-- purpose: a training run whose accelerators sit mostly idle, or whose utilization fell well below its
--   own earlier level: paying for GPUs it does not use (small batches, host-side bottlenecks,
--   synchronous logging, CPU preprocessing on the critical path, a job sharing the node).
-- grain: one row per training run with at least min_blocks under-used blocks; the range runs from the
--   first such block to the last.
-- scope: run (recomputed for the runs whose train_steps changed)
-- subject: run_id
-- sources: run_steps, runs
-- params: block_steps int >= 2; min_util float >= 0 <= 100; min_util_share float > 0 < 1;
--   min_history_blocks int >= 1; min_blocks int >= 1; min_block_points int >= 1
-- audits: tests/pipelines/test_diagnose_rules.py (fires at 35 % utilization, and on a fall from 90 % to
--   65 %, above min_util; quiet at a steady 90 % and on a CPU-only run that logs 0 %)
--
-- Per block of block_steps: the mean GPU utilization (percent) of the steps that report one. A block is
-- under-used when that mean is below min_util (the absolute floor), or below min_util_share times the
-- median of the run's earlier block means (its own baseline, once it has min_history_blocks of them): a
-- run that fell from 95 % to 65 % loses a third of its throughput even though 65 % clears the floor.
-- The median of every earlier block, not only the recent ones, so a long fall does not become its own
-- baseline before it has been flagged; a run that ramps up slowly only has a lower baseline.
-- Only runs with an accelerator are judged: a step reporting accelerator memory capacity
-- (gpu_mem_total_gb > 0), or a runs row with gpu_count > 0. A CPU-only run logging gpu_util 0 is not
-- idling a GPU; a GPU run whose model never left the CPU (0 % on a host that has one) is.
-- Blocks hold block_steps logged steps: block_steps times the run's logging interval (a run that logs
-- every 10th step gets blocks of 10 x block_steps steps), so sparse logs still fill them.

with

accelerated as (
    select s.run_id
    from run_steps as s
    where s.gpu_mem_total_gb > 0
    group by s.run_id
    union
    select run_id
    from runs
    where gpu_count > 0
    group by run_id
),

logged as (
    select
        s.model,
        s.hardware,
        s.precision,
        s.run_id,
        s.step,
        s.ts,
        s.gpu_util
    from run_steps as s
    inner join accelerated as a
        on a.run_id = s.run_id
    where s.gpu_util >= 0
        and s.gpu_util < cast('Infinity' as double)
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
        avg(gpu_util) as util,
        min(step) as first_step,
        max(step) as last_step,
        min(ts) as first_ts,
        max(ts) as last_ts
    from steps
    group by model, hardware, run_id, block
    having count(*) >= {{ min_block_points }}
),

baselines as (
    select
        cur.run_id,
        cur.block,
        median(prev.util) as baseline_util,
        count(*) as n_history
    from blocks as cur
    inner join blocks as prev
        on prev.run_id = cur.run_id
        and prev.block < cur.block
    group by cur.run_id, cur.block
),

judged as (
    select
        blocks.*,
        baselines.baseline_util,
        case
            when baselines.n_history >= {{ min_history_blocks }}
                then greatest({{ min_util }}, {{ min_util_share }} * baselines.baseline_util)
            else {{ min_util }}
        end as threshold,
        coalesce(baselines.n_history >= {{ min_history_blocks }}
            and {{ min_util_share }} * baselines.baseline_util > {{ min_util }}, false) as is_relative
    from blocks
    left join baselines
        on baselines.run_id = blocks.run_id
        and baselines.block = blocks.block
),

idle as (
    select *
    from judged
    where util < threshold
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
        min_by(util, block) as observed,
        min_by(threshold, block) as threshold,
        min_by(baseline_util, block) as baseline_util,
        min_by(is_relative, block) as is_relative,
        count(*) as n_points
    from idle
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
        cast('gpu_util' as varchar) as metric,
        cast(step_start as bigint) as step_start,
        cast(step_end as bigint) as step_end,
        cast(start_at as timestamptz) as start_at,
        cast(end_at as timestamptz) as end_at,
        cast(observed as double) as observed,
        cast(threshold as double) as expected,
        cast(case
            when is_relative then concat('min_util_share x the median of the run''s earlier blocks (',
                cast(cast(round(baseline_util) as bigint) as varchar), ' %)')
            else 'min_util, the lowest acceptable mean GPU utilization'
        end as varchar) as baseline,
        cast(n_points as bigint) as n_points,
        cast(false as boolean) as escalate
    from per_run
)

select * from final
