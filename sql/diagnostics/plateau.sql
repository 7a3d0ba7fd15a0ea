-- rule: plateau
-- purpose: a training run whose loss has stopped improving, or abruptly slowed to a fraction of its own
--   earlier pace, over a window that scales with its stage: the LR may be too low (or too high to
--   settle), the data exhausted, or it is time to stop early.
-- grain: one row per training run whose latest block is on a plateau; the range runs from the start
--   of the flat window of the first block of that stretch to the latest block.
-- scope: run (recomputed for the runs whose train_steps changed)
-- subject: run_id
-- sources: run_steps
-- params: target_blocks int >= 4; min_loss_share float >= 0; min_block_logs int >= 1; max_block_logs int >= 1; window_frac float > 0 <= 1;
--   min_rel_improvement float >= 0; pace_window_frac float > 0 < 1; min_pace float > 0 < 1;
--   pace_z float >= 0; min_window_blocks int >= 3
-- audits: tests/pipelines/test_diagnose_rules.py (fires on a flat tail, and on a tail slowed to 40 % of
--   its pace that only the pace test sees; quiet on a power-law twin)
--
-- A run's logged steps are cut in blocks by count (n_logs / target_blocks logs each, between
-- min_block_logs and max_block_logs), so a 300-step run and one logged once per epoch are judged at
-- the same resolution; per block, the median finite loss (robust to spikes). At the end E of each block
-- two tests look back; the block is flat when either holds. The run is on a plateau when its latest
-- block is: a stretch it has left since (the early plateau of a small LM at its unigram loss, before
-- it finds the structure of the data) is over and needs no alert. A block whose loss is below
-- min_loss_share of the run's first block has converged (a fine-tune or a memorized set near zero
-- loss): it is not judged.
--
-- Flat: the window is the last max(min_window_blocks blocks, window_frac · E) steps. A power-law loss curve
-- improves by a roughly constant share of its excess loss over such a window at every stage, so one
-- threshold serves early and late training. The improvement over the window is the least-squares
-- trend of the window's block medians (regr_slope) times the window's length, relative to their mean:
-- a trend uses every block, where comparing two minima is biased by how many blocks each side has.
-- Flat when that improvement is below min_rel_improvement.
--
-- Slowed: a loss near its floor improves by a small share of its level even when healthy, so the first
-- test cannot see a run that still creeps down at a fraction of its pace. The second compares the run
-- with itself: the improvement over the last max(min_window_blocks blocks, pace_window_frac · E) steps, [S, E),
-- against the improvement over the same window scaled back by S / E, [S² / E, S). A power law
-- L = f + A·t^-a keeps exactly (S / E)^a of its improvement from the earlier window to the later one,
-- whatever its floor f and scale A: 0.5^a at pace_window_frac 0.5, 0.73 at a = 0.45, 0.6 at a = 0.74.
-- Slowed when the later improvement falls short of min_pace times the earlier one by more than pace_z
-- standard errors of the two trends (each from the residual scatter of its block medians about its
-- line, which a curved window only inflates), so loss noise alone never makes a run look slowed.

with

logged as (
    select
        s.model,
        s.hardware,
        s.precision,
        s.run_id,
        s.step,
        s.ts,
        s.loss,
        s.loss_log_no as log_no,  -- its place among the run's finite losses
        s.loss_logs as n_logs,
        (s.last_loss_step - s.first_loss_step) / greatest(s.loss_logs - 1, 1) as step_interval
    from run_steps as s
    where s.loss_log_no is not null
),

steps as (
    select
        *,
        cast(floor(log_no / greatest({{ min_block_logs }}, least({{ max_block_logs }},
            floor(n_logs / {{ target_blocks }})))) as bigint) as block,
        greatest({{ min_block_logs }}, least({{ max_block_logs }}, floor(n_logs / {{ target_blocks }})))
            * step_interval as block_span
    from logged
),

all_blocks as (
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
        max(ts) as last_ts,
        max(block_span) as block_span
    from steps
    group by model, hardware, run_id, block
),

first_blocks as (
    select
        run_id,
        min_by(loss_median, block) as start_loss
    from all_blocks
    group by run_id
),

blocks as (
    select all_blocks.*
    from all_blocks
    inner join first_blocks
        on first_blocks.run_id = all_blocks.run_id
    where not coalesce(abs(all_blocks.loss_median) < {{ min_loss_share }} * abs(first_blocks.start_loss), false)
),

latest_blocks as (
    select
        run_id,
        max(block) as last_block
    from all_blocks
    group by run_id
),

windows as (
    select
        *,
        last_step + 1 - greatest({{ min_window_blocks }} * block_span, {{ window_frac }} * (last_step + 1))
            as window_start,
        last_step + 1 - greatest({{ min_window_blocks }} * block_span, {{ pace_window_frac }} * (last_step + 1))
            as pace_start
    from blocks
),

scaled as (
    select
        *,
        pace_start * pace_start / (last_step + 1) as pace_prev_start
    from windows
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
        cur.pace_start,
        cur.pace_prev_start,
        -- the flat test's window
        count(*) filter (where prev.first_step >= cur.window_start) as n_blocks,
        avg(prev.loss_median) filter (where prev.first_step >= cur.window_start) as mean_loss,
        regr_slope(prev.loss_median, prev.mid_step - cur.window_start)
            filter (where prev.first_step >= cur.window_start) as slope,
        min(prev.first_step) filter (where prev.first_step >= cur.window_start) as flat_from_step,
        min(prev.first_ts) filter (where prev.first_step >= cur.window_start) as flat_from_ts,
        -- the slowed test's later window [S, E) ...
        count(*) filter (where prev.first_step >= cur.pace_start) as n_pace,
        avg(prev.loss_median) filter (where prev.first_step >= cur.pace_start) as mean_pace_loss,
        regr_slope(prev.loss_median, prev.mid_step - cur.pace_start)
            filter (where prev.first_step >= cur.pace_start) as slope_pace,
        regr_sxx(prev.loss_median, prev.mid_step - cur.pace_start)
            filter (where prev.first_step >= cur.pace_start) as sxx_pace,
        regr_syy(prev.loss_median, prev.mid_step - cur.pace_start)
            filter (where prev.first_step >= cur.pace_start) as syy_pace,
        regr_sxy(prev.loss_median, prev.mid_step - cur.pace_start)
            filter (where prev.first_step >= cur.pace_start) as sxy_pace,
        min(prev.first_step) filter (where prev.first_step >= cur.pace_start) as pace_from_step,
        min(prev.first_ts) filter (where prev.first_step >= cur.pace_start) as pace_from_ts,
        -- ... and its earlier window [S^2 / E, S)
        count(*) filter (where prev.first_step >= cur.pace_prev_start and prev.first_step < cur.pace_start)
            as n_before,
        regr_slope(prev.loss_median, prev.mid_step - cur.pace_prev_start)
            filter (where prev.first_step >= cur.pace_prev_start and prev.first_step < cur.pace_start)
            as slope_before,
        regr_sxx(prev.loss_median, prev.mid_step - cur.pace_prev_start)
            filter (where prev.first_step >= cur.pace_prev_start and prev.first_step < cur.pace_start)
            as sxx_before,
        regr_syy(prev.loss_median, prev.mid_step - cur.pace_prev_start)
            filter (where prev.first_step >= cur.pace_prev_start and prev.first_step < cur.pace_start)
            as syy_before,
        regr_sxy(prev.loss_median, prev.mid_step - cur.pace_prev_start)
            filter (where prev.first_step >= cur.pace_prev_start and prev.first_step < cur.pace_start)
            as sxy_before
    from scaled as cur
    inner join blocks as prev
        on prev.run_id = cur.run_id
        and prev.block <= cur.block
        and prev.first_step >= least(cur.window_start, cur.pace_prev_start)
    group by cur.model, cur.hardware, cur.precision, cur.run_id, cur.block, cur.last_step, cur.last_ts,
        cur.window_start, cur.pace_start, cur.pace_prev_start
),

improvements as (
    select
        *,
        -slope * (last_step + 1 - window_start) as improvement,
        -slope_pace * (last_step + 1 - pace_start) as pace_improvement,
        -slope_before * (pace_start - pace_prev_start) as before_improvement,
        -- standard error of a trend times its window: residual variance / sxx, the residual variance
        -- being (syy - sxy^2 / sxx) / (n - 2)
        sqrt(greatest(syy_pace - sxy_pace * sxy_pace / nullif(sxx_pace, 0), 0) / nullif(n_pace - 2, 0)
            / nullif(sxx_pace, 0))
            * (last_step + 1 - pace_start) as pace_se,
        sqrt(greatest(syy_before - sxy_before * sxy_before / nullif(sxx_before, 0), 0) / nullif(n_before - 2, 0)
            / nullif(sxx_before, 0))
            * (pace_start - pace_prev_start) as before_se
    from fitted
    where n_blocks >= {{ min_window_blocks }}
),

judged as (
    select
        *,
        improvement < {{ min_rel_improvement }} * abs(mean_loss) as is_flat,
        coalesce(n_pace >= {{ min_window_blocks }}
            and n_before >= {{ min_window_blocks }}
            and before_improvement > 0
            and {{ min_pace }} * before_improvement - pace_improvement
                > {{ pace_z }} * sqrt(pace_se * pace_se + {{ min_pace }} * {{ min_pace }} * before_se * before_se),
            false) as is_slowed
    from improvements
),

flat as (
    select
        *,
        case when is_flat then flat_from_step else pace_from_step end as from_step,
        case when is_flat then flat_from_ts else pace_from_ts end as from_ts,
        case
            when is_flat then improvement / nullif(abs(mean_loss), 0)
            else pace_improvement / nullif(abs(mean_pace_loss), 0)
        end as rel_improvement,
        case
            when is_flat then {{ min_rel_improvement }}
            else {{ min_pace }} * before_improvement / nullif(abs(mean_pace_loss), 0)
        end as rel_expected,
        case
            when is_flat then concat('the trend of the block median loss over the last ',
                cast(cast(last_step + 1 - flat_from_step as bigint) as varchar), ' steps')
            else concat('min_pace x its improvement over the ',
                cast(cast(round(pace_start - pace_prev_start) as bigint) as varchar), ' steps before the last ',
                cast(cast(last_step + 1 - pace_from_step as bigint) as varchar))
        end as baseline_desc
    from judged
    where is_flat or is_slowed
),

last_stretch as (
    -- the run is on a plateau now: its latest block is flat (or slowed); the episode starts after the
    -- last block before it that was neither
    select
        judged.run_id,
        max(latest_blocks.last_block) as last_block,
        max(case when not (judged.is_flat or judged.is_slowed) then judged.block end) as last_moving_block
    from judged
    inner join latest_blocks
        on latest_blocks.run_id = judged.run_id
    group by judged.run_id
),

current as (
    select flat.*
    from flat
    inner join last_stretch
        on last_stretch.run_id = flat.run_id
    where flat.block > coalesce(last_stretch.last_moving_block, -1)
        and exists (select 1 from flat as last_flat
                    where last_flat.run_id = flat.run_id and last_flat.block = last_stretch.last_block)
),

per_run as (
    select
        model,
        hardware,
        run_id,
        max(precision) as precision,
        min(from_step) as step_start,
        max(last_step) as step_end,
        min(from_ts) as start_at,
        max(last_ts) as end_at,
        max_by(rel_improvement, block) as observed,
        max_by(rel_expected, block) as expected,
        max_by(baseline_desc, block) as baseline_desc,
        count(*) as n_points
    from current
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
        cast(baseline_desc as varchar) as baseline,
        cast(n_points as bigint) as n_points,
        cast(false as boolean) as escalate
    from per_run
)

select * from final
