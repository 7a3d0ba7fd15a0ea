-- rule: exploding_gradients
-- purpose: gradient norms that grow block after block to many times their own lowest level while the
--   loss stops improving, or to an extreme multiple of it whatever the loss does: the update size is
--   running away (LR too high for this stage, missing or loose clipping, a bad layer or loss scale).
-- grain: one row per training run with at least min_blocks such blocks; the range runs from the first
--   to the last.
-- scope: run (recomputed for the runs whose train_steps changed)
-- subject: run_id
-- sources: run_steps
-- params: target_blocks int >= 2; min_block_logs int >= 3; max_block_logs int >= 3; growth_factor float > 1;
--   min_loss_gain float >= 0; extreme_factor float > 1; min_blocks int >= 1; critical_loss_rise float >= 0
-- audits: tests/pipelines/test_diagnose_rules.py (fires on exponential growth with the loss stalled, quiet
--   on the clean twin and on a lone 20x step); tests/pipelines/test_diagnose_real.py (real runs: quiet on
--   the grad norm's late rise in healthy trainings and on one-step outliers)
--
-- A run's logged steps are cut in blocks by count: n_logs / target_blocks logs each, between
-- min_block_logs and max_block_logs, so a 300-step run, a 30-epoch log and a 30 000-step log all get
-- about target_blocks blocks. Per block, the median grad norm and the median loss. A block grows when
-- its grad median is
--   - growth_factor times the lowest block median before it, while the loss (block median) has not
--     improved by min_loss_gain since that lowest block: in healthy training the grad norm often rises
--     tenfold or more late in the run (weight decay against a shrinking LR) while the loss keeps falling;
--   - or extreme_factor times that lowest median, whatever the loss does (slow exponential growth).
-- One-step outliers move no block median (a lone grad spike that hurts the loss is a loss_spike).
-- Non-finite grad norms are left to the divergence rule and to fp16 loss scaling, which skips such
-- steps by design. Escalated to critical when the loss has risen by critical_loss_rise since the lowest
-- grad block: the growth is doing damage.

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
        max(ts) as last_ts
    from steps
    group by model, hardware, run_id, block, block_logs
    having count(*) = block_logs
),

lowest_before as (
    select
        cur.run_id,
        cur.block,
        min(prev.grad_median) as grad_low,
        min_by(prev.loss_median, prev.grad_median) as loss_at_low,
        min_by(prev.first_step, prev.grad_median) as low_from
    from blocks as cur
    inner join blocks as prev
        on prev.run_id = cur.run_id
        and prev.block < cur.block
    group by cur.run_id, cur.block
),

growing as (
    select
        blocks.*,
        lowest_before.grad_low,
        lowest_before.loss_at_low,
        lowest_before.low_from
    from blocks
    inner join lowest_before
        on lowest_before.run_id = blocks.run_id
        and lowest_before.block = blocks.block
    where lowest_before.grad_low > 0
        and (blocks.grad_median >= {{ extreme_factor }} * lowest_before.grad_low
            or (blocks.grad_median >= {{ growth_factor }} * lowest_before.grad_low
                and not coalesce(blocks.loss_median < (1 - {{ min_loss_gain }}) * lowest_before.loss_at_low, false)))
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
        max(grad_median) as observed,
        max_by(grad_low, grad_median) as expected,
        min_by(low_from, block) as low_from,
        max(case when loss_median > (1 + {{ critical_loss_rise }}) * loss_at_low then 1 else 0 end) as is_damaging,
        count(*) as n_points
    from growing
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
        cast(concat('lowest block median grad norm before it, from step ', cast(low_from as varchar))
            as varchar) as baseline,
        cast(n_points as bigint) as n_points,
        cast(is_damaging = 1 as boolean) as escalate
    from per_run
)

select * from final
