-- rule: vanishing_gradients
-- purpose: gradient norms that collapse by orders of magnitude (or below an absolute floor) and stay
--   there: the network has stopped learning (saturated activations, dead layers, a broken loss scale).
-- grain: one row per training run with at least min_blocks such blocks; the range runs from the first
--   to the last.
-- scope: run (recomputed for the runs whose train_steps changed)
-- subject: run_id
-- sources: run_steps
-- params: target_blocks int >= 2; min_block_logs int >= 3; max_block_logs int >= 3; vanish_factor float > 1;
--   min_grad_norm float >= 0; min_loss_share float >= 0; min_blocks int >= 1; min_history_blocks int >= 1
-- audits: tests/pipelines/test_diagnose_rules.py (fires on a 1000x collapse, quiet on the clean twin);
--   tests/pipelines/test_diagnose_real.py (real runs: quiet on a memorizing run whose loss converged
--   near zero, fires on a run logging grad norm 0.0 throughout)
--
-- Blocks by log count as in exploding_gradients (about target_blocks a run). Per block: the median grad
-- norm and loss. A block vanishes when its grad median is below min_grad_norm outright (a broken
-- backward pass), or below the largest block median so far divided by vanish_factor (after
-- min_history_blocks blocks after the first: warmup and the early turmoil of an LR too high make
-- grad norms that training is not expected to keep) while the loss is still above min_loss_share of the run's first block:
-- normal training shrinks grad norms a few-fold, not a hundred-fold, except where the loss itself has
-- converged near zero (a memorized training set has nothing left to learn, and small gradients).

with

logged as (
    select
        s.model,
        s.hardware,
        s.precision,
        s.run_id,
        s.step,
        s.ts,
        s.grad_norm,
        s.loss,
        s.grad_log_no as log_no,  -- its place among the run's finite grad norms
        s.grad_logs as n_logs
    from run_steps as s
    where s.grad_log_no is not null
),

steps as (
    select
        *,
        cast(floor(log_no / greatest({{ min_block_logs }}, least({{ max_block_logs }},
            floor(n_logs / {{ target_blocks }})))) as bigint) as block,
        greatest({{ min_block_logs }}, least({{ max_block_logs }}, floor(n_logs / {{ target_blocks }}))) as block_logs
    from logged
),

blocks as (
    select
        model,
        hardware,
        run_id,
        block,
        max(precision) as precision,
        median(grad_norm) as grad_median,
        median(loss) filter (where abs(loss) < cast('Infinity' as double)) as loss_median,
        min(step) as first_step,
        max(step) as last_step,
        min(ts) as first_ts,
        max(ts) as last_ts,
        count(*) as n_steps
    from steps
    group by model, hardware, run_id, block, block_logs
    having count(*) = block_logs
),

first_loss as (
    select
        run_id,
        min_by(loss_median, block) as start_loss
    from blocks
    group by run_id
),

with_history as (
    select
        *,
        -- the first block (warmup, and the turmoil of an LR too high) sets no peak
        max(case when block > 0 then grad_median end) over (
            partition by run_id order by block
            rows between unbounded preceding and 1 preceding) as peak_before,
        count(case when block > 0 then 1 end) over (
            partition by run_id order by block
            rows between unbounded preceding and 1 preceding) as n_before
    from blocks
),

vanished as (
    select with_history.*
    from with_history
    inner join first_loss
        on first_loss.run_id = with_history.run_id
    where grad_median < {{ min_grad_norm }}
        or (n_before >= {{ min_history_blocks }}
            and grad_median * {{ vanish_factor }} < peak_before
            and not coalesce(abs(loss_median) < {{ min_loss_share }} * abs(first_loss.start_loss), false))
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
