-- rule: vanishing_gradients
-- purpose: gradient norms that collapse by orders of magnitude (or below an absolute floor) and stay
--   there: the network has stopped learning (saturated activations, dead layers, a broken loss scale).
-- grain: one row per training run with at least min_blocks such blocks; the range runs from the first
--   to the last.
-- scope: run (recomputed for the runs whose train_steps changed)
-- subject: run_id
-- sources: train_steps, diagnose_runs
-- params: block_steps int >= 2; vanish_factor float > 1; min_grad_norm float >= 0; min_blocks int >= 1;
--   min_history_blocks int >= 1; min_block_points int >= 1
-- audits: tests/pipelines/test_diagnose_rules.py (fires on a 1000x collapse, quiet on the clean twin)
--
-- Per block of block_steps: the median grad norm. A block vanishes when its median is below the largest
-- block median so far divided by vanish_factor (after min_history_blocks blocks), or below
-- min_grad_norm outright. Normal training shrinks grad norms a few-fold, not a hundred-fold.
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

blocks as (
    select
        model,
        hardware,
        run_id,
        block,
        max(precision) as precision,
        median(grad_norm) as grad_median,
        min(step) as first_step,
        max(step) as last_step,
        min(ts) as first_ts,
        max(ts) as last_ts,
        count(*) as n_steps
    from steps
    group by model, hardware, run_id, block
    having count(*) >= {{ min_block_points }}
),

with_history as (
    select
        *,
        max(grad_median) over (
            partition by run_id order by block
            rows between unbounded preceding and 1 preceding) as peak_before,
        count(*) over (
            partition by run_id order by block
            rows between unbounded preceding and 1 preceding) as n_before
    from blocks
),

vanished as (
    select *
    from with_history
    where grad_median < {{ min_grad_norm }}
        or (n_before >= {{ min_history_blocks }} and grad_median * {{ vanish_factor }} < peak_before)
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
        min_by(grad_median, block) as observed,
        min_by(peak_before, block) as expected,
        count(*) as n_points
    from vanished
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
        cast('grad_norm' as varchar) as metric,
        cast(step_start as bigint) as step_start,
        cast(step_end as bigint) as step_end,
        cast(start_at as timestamptz) as start_at,
        cast(end_at as timestamptz) as end_at,
        cast(observed as double) as observed,
        cast(expected as double) as expected,
        cast('largest block median grad norm before it' as varchar) as baseline,
        cast(n_points as bigint) as n_points,
        cast(false as boolean) as escalate
    from per_run
)

select * from final
