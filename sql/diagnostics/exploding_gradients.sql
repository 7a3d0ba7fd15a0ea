-- rule: exploding_gradients
-- purpose: gradient norms that spike far above their recent level, or grow block after block: the
--   update size is running away (LR too high, missing or loose clipping, a bad layer init).
-- grain: one row per training run with at least one spike step or growth block; the range runs from
--   the first anomalous step to the last.
-- scope: run (recomputed for the runs whose train_steps changed)
-- subject: run_id
-- sources: train_steps, diagnose_runs
-- params: block_steps int >= 2; z_threshold float > 0; spike_ratio float >= 1; growth_factor float > 1;
--   growth_blocks int >= 1; min_block_points int >= 3; min_rel_scale float >= 0
-- audits: tests/pipelines/test_diagnose_rules.py (fires on a 20x spike and on exponential growth, quiet
--   on the clean twin)
--
-- Spike: a step's grad norm scored against the median/MAD of the previous block (as loss_spike), and
-- at least spike_ratio times that median. Sustained growth: a block's median is growth_factor times
-- the smallest block median of the growth_blocks blocks before it. Non-finite grad norms are left to
-- the divergence rule and to fp16 loss scaling, which skips such steps by design.
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
        s.grad_norm
    from train_steps as s
    inner join diagnose_runs as r
        on r.run_id = s.run_id
    where abs(s.grad_norm) < cast('Infinity' as double)
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
        median(grad_norm) as grad_median,
        count(*) as n_steps,
        min(step) as first_step,
        min(ts) as first_ts
    from steps
    group by run_id, block
),

block_spread as (
    select
        steps.run_id,
        steps.block,
        block_medians.grad_median,
        block_medians.n_steps,
        median(abs(steps.grad_norm - block_medians.grad_median)) as grad_mad
    from steps
    inner join block_medians
        on block_medians.run_id = steps.run_id
        and block_medians.block = steps.block
    group by steps.run_id, steps.block, block_medians.grad_median, block_medians.n_steps
),

spike_steps as (
    select
        steps.model,
        steps.hardware,
        steps.precision,
        steps.run_id,
        steps.step,
        steps.ts,
        steps.grad_norm as observed,
        prev.grad_median as expected
    from steps
    inner join block_spread as prev
        on prev.run_id = steps.run_id
        and prev.block = steps.block - 1
    where prev.n_steps >= {{ min_block_points }}
        and steps.grad_norm > {{ spike_ratio }} * prev.grad_median
        and (steps.grad_norm - prev.grad_median) / greatest(
            1.4826 * prev.grad_mad, {{ min_rel_scale }} * abs(prev.grad_median), 1e-12) > {{ z_threshold }}
),

growth_blocks as (
    select
        cur.run_id,
        cur.block,
        cur.first_step,
        cur.first_ts,
        cur.grad_median,
        min(prev.grad_median) as prev_min,
        count(*) as n_prev
    from block_medians as cur
    inner join block_medians as prev
        on prev.run_id = cur.run_id
        and prev.block < cur.block
        and prev.block >= cur.block - {{ growth_blocks }}
    where cur.n_steps >= {{ min_block_points }}
        and prev.n_steps >= {{ min_block_points }}
    group by cur.run_id, cur.block, cur.first_step, cur.first_ts, cur.grad_median
),

growth_steps as (
    select
        steps.model,
        steps.hardware,
        steps.precision,
        growth_blocks.run_id,
        growth_blocks.first_step as step,
        growth_blocks.first_ts as ts,
        growth_blocks.grad_median as observed,
        growth_blocks.prev_min as expected
    from growth_blocks
    inner join steps
        on steps.run_id = growth_blocks.run_id
        and steps.step = growth_blocks.first_step
    where growth_blocks.n_prev = {{ growth_blocks }}
        and growth_blocks.grad_median > {{ growth_factor }} * growth_blocks.prev_min
),

anomalies as (
    select *, 'spike' as kind from spike_steps
    union all
    select *, 'growth' as kind from growth_steps
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
        min_by(observed, step) as observed,
        min_by(expected, step) as expected,
        min_by(kind, step) as first_kind,
        count(*) as n_points
    from anomalies
    group by model, hardware, run_id
),

final as (
    select
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(precision as varchar) as precision,
        cast(run_id as varchar) as run_id,
        cast(null as varchar) as suite,
        cast('grad_norm' as varchar) as metric,
        cast(step_start as bigint) as step_start,
        cast(step_end as bigint) as step_end,
        cast(start_at as timestamptz) as start_at,
        cast(end_at as timestamptz) as end_at,
        cast(observed as double) as observed,
        cast(expected as double) as expected,
        cast(case
            when first_kind = 'spike' then 'median grad norm of the previous block'
            else concat('smallest block median of the previous ', cast({{ growth_blocks }} as varchar), ' blocks')
        end as varchar) as baseline,
        cast(n_points as bigint) as n_points,
        cast(false as boolean) as escalate
    from per_run
)

select * from final
