-- rule: plateau
-- purpose: a training run whose loss has stopped improving for a window that scales with its stage:
--   the LR may be too low (or too high to settle), the data exhausted, or it is time to stop early.
-- grain: one row per training run with at least one plateaued block; the range runs from the start of
--   the first flat window to the last block judged flat.
-- scope: run (recomputed for the runs whose train_steps changed)
-- subject: run_id
-- sources: train_steps, diagnose_runs
-- params: block_steps int >= 2; window_frac float > 0 <= 1; min_window_steps int >= 1;
--   min_rel_improvement float >= 0; min_step int >= 0; min_window_blocks int >= 2;
--   min_block_points int >= 1
-- audits: tests/pipelines/test_diagnose_rules.py (fires on a flat tail, quiet on a power-law twin)
--
-- Per block of block_steps: the median finite loss (robust to spikes). At the end e of each block,
-- the window is the last max(min_window_steps, window_frac · e) steps: a power-law loss curve improves
-- by a roughly constant share of its excess loss over such a window at every stage, so one threshold
-- serves early and late training. The improvement over the window is the least-squares trend of the
-- window's block medians (regr_slope) times the window's length, relative to their mean: a trend
-- uses every block, where comparing two minima is biased by how many blocks each side has. The
-- block is flat when that improvement is below min_rel_improvement. Blocks ending before min_step
-- are not judged (warmup, fast start).
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

blocks as (
    select
        model,
        hardware,
        run_id,
        block,
        max(precision) as precision,
        median(loss) as loss_median,
        (min(step) + max(step)) / 2.0 as mid_step,
        min(step) as first_step,
        max(step) as last_step,
        min(ts) as first_ts,
        max(ts) as last_ts
    from steps
    group by model, hardware, run_id, block
    having count(*) >= {{ min_block_points }}
),

windows as (
    select
        *,
        last_step + 1 - greatest({{ min_window_steps }}, {{ window_frac }} * (last_step + 1)) as window_start
    from blocks
    where last_step + 1 >= {{ min_step }}
),

fitted as (
    select
        cur.model,
        cur.hardware,
        cur.precision,
        cur.run_id,
        cur.block,
        cur.last_step,
        cur.last_ts,
        cur.window_start,
        count(*) as n_blocks,
        avg(prev.loss_median) as mean_loss,
        regr_slope(prev.loss_median, prev.mid_step - cur.window_start) as slope,
        min(prev.first_step) as flat_from_step,
        min(prev.first_ts) as flat_from_ts
    from windows as cur
    inner join blocks as prev
        on prev.run_id = cur.run_id
        and prev.block <= cur.block
        and prev.first_step >= cur.window_start
    group by cur.model, cur.hardware, cur.precision, cur.run_id, cur.block, cur.last_step, cur.last_ts,
        cur.window_start
),

flat as (
    select
        *,
        -slope * (last_step + 1 - window_start) / nullif(abs(mean_loss), 0) as rel_improvement
    from fitted
    where n_blocks >= {{ min_window_blocks }}
        and -slope * (last_step + 1 - window_start) < {{ min_rel_improvement }} * abs(mean_loss)
),

per_run as (
    select
        model,
        hardware,
        run_id,
        max(precision) as precision,
        min(flat_from_step) as step_start,
        max(last_step) as step_end,
        min(flat_from_ts) as start_at,
        max(last_ts) as end_at,
        min_by(rel_improvement, block) as observed,
        min_by(last_step + 1 - flat_from_step, block) as window_steps,
        count(*) as n_points
    from flat
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
        cast({{ min_rel_improvement }} as double) as expected,
        cast(concat('trend of the block median loss over the last ', cast(window_steps as varchar), ' steps')
            as varchar) as baseline,
        cast(n_points as bigint) as n_points,
        cast(false as boolean) as escalate
    from per_run
)

select * from final
