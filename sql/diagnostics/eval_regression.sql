-- rule: eval_regression
-- purpose: a model's evaluation quality on one hardware type dropping below its baseline: the model's
--   trailing window, the previous checkpoint's results, or a pinned reference (conf/diagnostics.yaml).
-- grain: one row per model × hardware × suite × episode (consecutive evaluated days with a regressed
--   series); precision and metric name the worst series on the first day.
-- scope: fleet (recomputed for the model × hardware pairs whose eval_results changed)
-- subject: model, hardware, suite
-- sources: eval_results, diagnose_pairs, metric_directions, eval_references
-- params: suites strings; baseline enum(trailing|previous_checkpoint|pinned); window_days int >= 1;
--   min_history_days int >= 1; max_rel_drop float > 0; min_abs_change float >= 0; critical_rel_drop float > 0
-- audits: tests/pipelines/test_diagnose_rules.py (fires on a 3-point accuracy drop with each baseline,
--   quiet on the steady twin)
--
-- A series is model × hardware × precision × suite × metric, one value per day (the median of the
-- day's evals). Metrics are compared in their direction (metric_directions: +1 higher is better,
-- -1 lower is better; metrics without a direction are skipped). A day regresses when the value is
-- worse than the baseline by more than max_rel_drop (relative) and min_abs_change (absolute).
-- Baselines: trailing = median of the previous window_days days (at least min_history_days of them);
-- previous_checkpoint = median of the days of the latest earlier checkpoint_step (one self-join finds
-- both: the history of each day, and the latest checkpoint before it); pinned = the
-- eval_references value ('*' matches any hardware or precision; the most specific wins).

with

evals as (
    select
        e.model,
        e.hardware,
        e.precision,
        e.suite,
        e.metric,
        e.date,
        e.checkpoint_step,
        e.ts,
        e.value,
        d.direction
    from eval_results as e
    inner join diagnose_pairs as p
        on p.model = e.model
        and p.hardware = e.hardware
    inner join metric_directions as d
        on d.metric = e.metric
    where e.suite in ({{ suites }})
        and abs(e.value) < cast('Infinity' as double)
),

daily as (
    select
        model,
        hardware,
        precision,
        suite,
        metric,
        date,
        max(direction) as direction,
        median(value) as value,
        max(checkpoint_step) as checkpoint_step,
        min(ts) as first_ts,
        max(ts) as last_ts
    from evals
    group by model, hardware, precision, suite, metric, date
),

history as (
    select
        cur.model,
        cur.hardware,
        cur.precision,
        cur.suite,
        cur.metric,
        cur.date,
        median(prev.value) filter (
            where date_diff('day', prev.date, cur.date) <= {{ window_days }}) as trailing_value,
        count(*) filter (where date_diff('day', prev.date, cur.date) <= {{ window_days }}) as n_history,
        max(prev.checkpoint_step) filter (where prev.checkpoint_step < cur.checkpoint_step) as prev_checkpoint_step
    from daily as cur
    inner join daily as prev
        on prev.model = cur.model
        and prev.hardware = cur.hardware
        and prev.precision is not distinct from cur.precision
        and prev.suite = cur.suite
        and prev.metric = cur.metric
        and prev.date < cur.date
    group by cur.model, cur.hardware, cur.precision, cur.suite, cur.metric, cur.date
),

checkpoint_values as (
    select
        model,
        hardware,
        precision,
        suite,
        metric,
        checkpoint_step,
        median(value) as checkpoint_value
    from daily
    group by model, hardware, precision, suite, metric, checkpoint_step
),

pinned as (
    select
        daily.model,
        daily.hardware,
        daily.precision,
        daily.suite,
        daily.metric,
        daily.date,
        min_by(r.value, (case when r.hardware = '*' then 1 else 0 end)
            + (case when r.precision = '*' then 1 else 0 end)) as baseline_value
    from daily
    inner join eval_references as r
        on r.model = daily.model
        and (r.hardware = '*' or r.hardware = daily.hardware)
        and (r.precision = '*' or r.precision = daily.precision)
        and r.suite = daily.suite
        and r.metric = daily.metric
    group by daily.model, daily.hardware, daily.precision, daily.suite, daily.metric, daily.date
),

compared as (
    select
        daily.*,
        case {{ baseline }}
            when 'trailing' then case when history.n_history >= {{ min_history_days }} then history.trailing_value end
            when 'previous_checkpoint' then checkpoint_values.checkpoint_value
            when 'pinned' then pinned.baseline_value
        end as expected,
        case {{ baseline }}
            when 'trailing' then concat('median of the previous ', cast({{ window_days }} as varchar), ' days')
            when 'previous_checkpoint' then concat('checkpoint step ',
                coalesce(cast(history.prev_checkpoint_step as varchar), '?'))
            else 'pinned reference'
        end as baseline_desc
    from daily
    left join history
        on history.model = daily.model
        and history.hardware = daily.hardware
        and history.precision is not distinct from daily.precision
        and history.suite = daily.suite
        and history.metric = daily.metric
        and history.date = daily.date
    left join checkpoint_values
        on checkpoint_values.model = daily.model
        and checkpoint_values.hardware = daily.hardware
        and checkpoint_values.precision is not distinct from daily.precision
        and checkpoint_values.suite = daily.suite
        and checkpoint_values.metric = daily.metric
        and checkpoint_values.checkpoint_step = history.prev_checkpoint_step
    left join pinned
        on pinned.model = daily.model
        and pinned.hardware = daily.hardware
        and pinned.precision is not distinct from daily.precision
        and pinned.suite = daily.suite
        and pinned.metric = daily.metric
        and pinned.date = daily.date
),

scored as (
    select
        *,
        -direction * (value - expected) / nullif(abs(expected), 0) as rel_drop,
        coalesce(
            -direction * (value - expected) > {{ max_rel_drop }} * abs(expected)
                and abs(value - expected) >= {{ min_abs_change }},
            false) as is_regressed
    from compared
),

subject_days as (
    select
        model,
        hardware,
        suite,
        date,
        max(case when is_regressed then 1 else 0 end) as is_flagged,
        count(*) filter (where is_regressed) as n_regressed,
        max(rel_drop) filter (where is_regressed) as worst_rel_drop,
        max_by(precision, rel_drop) filter (where is_regressed) as precision,
        max_by(metric, rel_drop) filter (where is_regressed) as metric,
        max_by(value, rel_drop) filter (where is_regressed) as observed,
        max_by(expected, rel_drop) filter (where is_regressed) as expected,
        max_by(baseline_desc, rel_drop) filter (where is_regressed) as baseline_desc,
        min(first_ts) filter (where is_regressed) as first_ts,
        max(last_ts) filter (where is_regressed) as last_ts
    from scored
    group by model, hardware, suite, date
),

numbered as (
    select
        *,
        row_number() over (partition by model, hardware, suite order by date) as day_number
    from subject_days
),

islands as (
    select
        *,
        day_number - row_number() over (partition by model, hardware, suite order by date) as island
    from numbered
    where is_flagged = 1
),

episodes as (
    select
        model,
        hardware,
        suite,
        island,
        min_by(precision, date) as precision,
        min_by(metric, date) as metric,
        min(first_ts) as start_at,
        max(last_ts) as end_at,
        min_by(observed, date) as observed,
        min_by(expected, date) as expected,
        min_by(baseline_desc, date) as baseline_desc,
        sum(n_regressed) as n_points,
        max(worst_rel_drop) as worst_rel_drop
    from islands
    group by model, hardware, suite, island
),

final as (
    select
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(precision as varchar) as precision,
        cast(null as varchar) as run_id,
        cast(suite as varchar) as suite,
        cast(metric as varchar) as metric,
        cast(null as bigint) as step_start,
        cast(null as bigint) as step_end,
        cast(start_at as timestamptz) as start_at,
        cast(end_at as timestamptz) as end_at,
        cast(observed as double) as observed,
        cast(expected as double) as expected,
        cast(baseline_desc as varchar) as baseline,
        cast(n_points as bigint) as n_points,
        cast(worst_rel_drop >= {{ critical_rel_drop }} as boolean) as escalate
    from episodes
)

select * from final
