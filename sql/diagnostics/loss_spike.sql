-- rule: loss_spike
-- purpose: training steps whose loss jumps far above the loss just before them: a bad batch, an LR too
--   high for this stage, or the first sign of instability. A spike the run shakes off is information;
--   spikes that keep coming, or one the run does not recover from, are a warning.
-- grain: one row per training run with at least one spike; the range runs from the first spike to
--   the last.
-- scope: run (recomputed for the runs whose train_steps changed)
-- subject: run_id
-- sources: run_steps
-- params: window_logs int >= 3; z_threshold float > 0; min_ratio float >= 1; min_rel_scale float >= 0;
--   min_start_scale float >= 0; min_over_max float >= 1; episode_gap_logs int >= 1; recover_windows int >= 1; recover_tol float >= 0;
--   min_episodes int >= 2
-- audits: tests/pipelines/test_diagnose_rules.py (fires on a 4x spike, quiet on its clean twin);
--   tests/pipelines/test_diagnose_real.py (real runs: a one-step spike a healthy run recovers from stays
--   info, a DPO run's repeated spikes are a warning, a converged loss logged to 4 decimals is quiet)
--
-- A run's logged steps are cut in windows of window_logs consecutive logs (by count, not by step, so
-- sparse logs are judged like dense ones). Each step is scored against the window before its own:
-- that window's median, and a robust z-score with its noise (the median absolute change from one
-- logged step to the next, scaled to a sigma; a rolling median would be closer, but Spark has none). A spike is min_ratio times that median and z_threshold sigmas above it.
-- The sigma is floored at min_rel_scale of the median (a noise-free series does not turn rounding into
-- spikes) and at min_start_scale of the run's first window_logs losses (the problem's own scale: a
-- loss converged near zero and logged to four decimals does not spike from 0.0005 to 0.0014). Exact
-- medians on both engines.
--
-- Spike steps at most episode_gap_logs logged steps apart form one episode. An episode is recovered
-- when one of the recover_windows windows after its last spike has its median back within recover_tol
-- of the median it was scored against (a run not logged that far yet: judged on what there is;
-- nothing logged after it: not known, not escalated). The alert escalates (info
-- -> warning) when the run has min_episodes episodes or more, or an episode it did not recover from.

with

logged as (
    select
        s.model,
        s.hardware,
        s.precision,
        s.run_id,
        s.run_no,
        s.step,
        s.ts,
        s.loss,
        s.loss_log_no as log_no  -- its place among the run's finite losses
    from run_steps as s
    where s.loss_log_no is not null
),

differenced as (
    -- each loss against the finite loss logged before it (a join on integers, not lag(): DuckDB's
    -- median() over a window's output, below, takes 20x as long as over a join's, bench/RESULTS.md)
    select
        logged.*,
        abs(logged.loss - before.loss) as step_change,
        logged.loss - before.loss as rise
    from logged
    left join logged as before
        on before.run_no = logged.run_no
        and before.log_no = logged.log_no - 1
),

windows as (
    select
        *,
        cast(floor(log_no / {{ window_logs }}) as bigint) as window_no
    from differenced
),

window_levels as (
    select
        run_id,
        window_no,
        median(loss) as loss_median,
        median(step_change) as change_median,
        max(loss) as loss_max,
        count(*) as n_logs,
        min(step) as first_step,
        max(step) as last_step
    from windows
    group by run_id, window_no
),

run_scale as (
    select
        run_id,
        loss_median as start_level
    from window_levels
    where window_no = 0
),

scored as (
    select
        windows.*,
        prev.loss_median as before_median,
        prev.loss_max as before_max,
        prev.first_step as baseline_from,
        prev.last_step as baseline_to,
        -- noise sigma from the median absolute step-to-step change (/ 0.6745 / sqrt 2): a steady trend
        -- or a level shift inside the window barely moves it
        (windows.loss - prev.loss_median) / greatest(
            prev.change_median / 0.954,
            {{ min_rel_scale }} * abs(prev.loss_median),
            {{ min_start_scale }} * abs(run_scale.start_level),
            1e-12) as robust_z
    from windows
    inner join window_levels as prev
        on prev.run_id = windows.run_id
        and prev.window_no = greatest(windows.window_no - 1, 0)
    inner join run_scale
        on run_scale.run_id = windows.run_id
    where prev.n_logs = {{ window_logs }}
),

spikes as (
    select *
    from scored
    where robust_z > {{ z_threshold }}
        and loss > {{ min_ratio }} * before_median
        and (window_no > 0 and loss > {{ min_over_max }} * before_max
            or window_no = 0 and rise > 0 and loss > {{ min_over_max }} * (loss - rise))
),

episode_starts as (
    select
        *,
        case
            when log_no - lag(log_no) over (partition by run_id order by step) <= {{ episode_gap_logs }} then 0
            else 1
        end as is_new
    from spikes
),

numbered as (
    select
        *,
        sum(is_new) over (partition by run_id order by step rows between unbounded preceding and current row)
            as episode
    from episode_starts
),

episodes as (
    select
        run_id,
        episode,
        min_by(before_median, step) as baseline,
        max(window_no) as last_window
    from numbered
    group by run_id, episode
),

recovery as (
    select
        episodes.run_id,
        episodes.episode,
        count(later.window_no) as n_later,
        min(later.loss_median) as recovered_level,
        min(episodes.baseline) as baseline
    from episodes
    left join window_levels as later
        on later.run_id = episodes.run_id
        and later.window_no > episodes.last_window
        and later.window_no <= episodes.last_window + {{ recover_windows }}
        and later.n_logs = {{ window_logs }}
    group by episodes.run_id, episodes.episode
),

unrecovered as (
    select
        run_id,
        count(*) as n_unrecovered
    from recovery
    where n_later > 0
        and recovered_level > baseline * (1 + {{ recover_tol }})
    group by run_id
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
        min_by(before_median, step) as expected,
        min_by(baseline_from, step) as baseline_from,
        min_by(baseline_to, step) as baseline_to,
        count(*) as n_points,
        max(episode) as n_episodes
    from numbered
    group by model, hardware, run_id
),

final as (
    select
        cast(per_run.model as varchar) as model,
        cast(per_run.hardware as varchar) as hardware,
        cast(per_run.precision as varchar) as precision,
        cast(per_run.run_id as varchar) as run_id,
        cast(null as varchar) as suite,
        cast('loss' as varchar) as metric,
        cast(per_run.step_start as bigint) as step_start,
        cast(per_run.step_end as bigint) as step_end,
        cast(per_run.start_at as timestamptz) as start_at,
        cast(per_run.end_at as timestamptz) as end_at,
        cast(per_run.observed as double) as observed,
        cast(per_run.expected as double) as expected,
        cast(concat('median loss of steps ', cast(per_run.baseline_from as varchar), '-',
            cast(per_run.baseline_to as varchar), '; ',
            cast(per_run.n_episodes as varchar), ' episode(s), ',
            cast(coalesce(unrecovered.n_unrecovered, 0) as varchar), ' not recovered') as varchar) as baseline,
        cast(per_run.n_points as bigint) as n_points,
        cast(per_run.n_episodes >= {{ min_episodes }} or coalesce(unrecovered.n_unrecovered, 0) > 0 as boolean)
            as escalate
    from per_run
    left join unrecovered
        on unrecovered.run_id = per_run.run_id
)

select * from final
