-- rule: loss_spike
-- purpose: a training step whose loss jumps far above the recent loss level: a bad batch, an LR too
--   high for this stage, or the first sign of instability.
-- grain: one row per training run with at least one spike; the range runs from the first spike to
--   the last.
-- scope: run (recomputed for the runs whose train_steps changed)
-- subject: run_id
-- sources: train_steps, diagnose_runs
-- params: block_steps int >= 2; z_threshold float > 0; min_ratio float >= 1; min_block_points int >= 3;
--   min_rel_scale float >= 0
-- audits: tests/pipelines/test_diagnose_rules.py (fires on a 4x spike, quiet on its clean twin)
--
-- Robust z-score against the previous block: steps are cut in blocks of block_steps; each step is
-- scored against the median and MAD of the block before its own (exact medians on both engines, no
-- rolling median). A spike must also be min_ratio times that median, and the MAD is floored at
-- min_rel_scale of the median, so a flat, noise-free series does not turn rounding into spikes.
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
        s.loss
    from train_steps as s
    inner join diagnose_runs as r
        on r.run_id = s.run_id
    where abs(s.loss) < cast('Infinity' as double)
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

block_medians as (
    select
        run_id,
        block,
        median(loss) as loss_median,
        count(*) as n_steps,
        min(step) as first_step,
        max(step) as last_step
    from steps
    group by run_id, block
),

block_spread as (
    select
        steps.run_id,
        steps.block,
        block_medians.loss_median,
        block_medians.n_steps,
        block_medians.first_step,
        block_medians.last_step,
        median(abs(steps.loss - block_medians.loss_median)) as loss_mad
    from steps
    inner join block_medians
        on block_medians.run_id = steps.run_id
        and block_medians.block = steps.block
    group by steps.run_id, steps.block, block_medians.loss_median, block_medians.n_steps,
        block_medians.first_step, block_medians.last_step
),

scored as (
    select
        steps.*,
        prev.loss_median as expected,
        prev.first_step as baseline_from,
        prev.last_step as baseline_to,
        (steps.loss - prev.loss_median) / greatest(
            1.4826 * prev.loss_mad, {{ min_rel_scale }} * abs(prev.loss_median), 1e-12) as robust_z
    from steps
    inner join block_spread as prev
        on prev.run_id = steps.run_id
        and prev.block = steps.block - 1
    where prev.n_steps >= {{ min_block_points }}
),

spikes as (
    select *
    from scored
    where robust_z > {{ z_threshold }}
        and loss > {{ min_ratio }} * expected
),

per_run as (
    select
        model,
        hardware,
        run_id,
        max(precision) as precision,
        min(step) as step_start,
        max(step) as step_end,
        min(ts) as start_at,
        max(ts) as end_at,
        min_by(loss, step) as observed,
        min_by(expected, step) as expected,
        min_by(baseline_from, step) as baseline_from,
        min_by(baseline_to, step) as baseline_to,
        count(*) as n_points
    from spikes
    group by model, hardware, run_id
),

final as (
    select
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(precision as varchar) as precision,
        cast(run_id as varchar) as run_id,
        cast(null as varchar) as suite,
        cast('loss' as varchar) as metric,
        cast(step_start as bigint) as step_start,
        cast(step_end as bigint) as step_end,
        cast(start_at as timestamptz) as start_at,
        cast(end_at as timestamptz) as end_at,
        cast(observed as double) as observed,
        cast(expected as double) as expected,
        cast(concat('median loss of steps ', cast(baseline_from as varchar), '-', cast(baseline_to as varchar))
            as varchar) as baseline,
        cast(n_points as bigint) as n_points,
        cast(false as boolean) as escalate
    from per_run
)

select * from final
