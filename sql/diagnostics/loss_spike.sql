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

with

steps as (
    select
        s.model,
        s.hardware,
        s.precision,
        s.run_id,
        s.step,
        s.ts,
        s.loss,
        cast(floor(s.step / {{ block_steps }}) as bigint) as block
    from train_steps as s
    inner join diagnose_runs as r
        on r.run_id = s.run_id
    where abs(s.loss) < cast('Infinity' as double)
),

block_medians as (
    select
        run_id,
        block,
        median(loss) as loss_median,
        count(*) as n_steps
    from steps
    group by run_id, block
),

block_spread as (
    select
        steps.run_id,
        steps.block,
        block_medians.loss_median,
        block_medians.n_steps,
        median(abs(steps.loss - block_medians.loss_median)) as loss_mad
    from steps
    inner join block_medians
        on block_medians.run_id = steps.run_id
        and block_medians.block = steps.block
    group by steps.run_id, steps.block, block_medians.loss_median, block_medians.n_steps
),

scored as (
    select
        steps.*,
        prev.loss_median as expected,
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
        min_by(block, step) as first_block,
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
        cast(concat('median loss of steps ', cast((first_block - 1) * {{ block_steps }} as varchar), '-',
            cast(first_block * {{ block_steps }} - 1 as varchar)) as varchar) as baseline,
        cast(n_points as bigint) as n_points,
        cast(false as boolean) as escalate
    from per_run
)

select * from final
