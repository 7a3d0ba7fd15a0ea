-- model: alerts_current
-- purpose: the alerts themselves, served, for dashboards (the Alerts table chart): Superset reads
--   only the serving file (file access is off by design), never the lake table alerts that
--   mhw diagnose writes. One row per alert as the lake holds it (re-runs replace, never duplicate).
--   Freshness: in the build_cubes DAG mhw diagnose runs after mhw build (its rules read the cubes),
--   and its serve_alerts task builds again (incrementally: only the alert cubes), so a DAG run serves
--   the alerts it found; mhw diagnose run by hand triggers no build (run mhw build after it).
-- grain: alert_id (one row per alert); date is the UTC date the anomaly started (the alerts partition)
-- time column: date
-- partitions: date (rebuilt for the dates whose alerts changed)
-- sources: alerts
-- serve: alert_list (named apart from the lake table alerts, which mhw query shows as it is)
-- audits: tests/dashboards/test_superset.py (the Alerts chart equals this table)

with

source_alerts as (
    select
        cast(alert_id as varchar) as alert_id,
        cast(date as date) as date,
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        coalesce(cast(precision as varchar), 'n/a') as precision,
        cast(rule as varchar) as rule,
        cast(severity as varchar) as severity,
        cast(scope as varchar) as scope,
        cast(run_id as varchar) as run_id,
        cast(suite as varchar) as suite,
        cast(metric as varchar) as metric,
        cast(step_start as bigint) as step_start,
        cast(step_end as bigint) as step_end,
        cast(start_at as timestamptz) as start_at,
        cast(end_at as timestamptz) as end_at,
        cast(observed as double) as observed,
        cast(expected as double) as expected,
        cast(baseline as varchar) as baseline,
        cast(n_points as bigint) as n_points,
        cast(message as varchar) as message,
        cast(action as varchar) as action,
        cast(detected_at as timestamptz) as detected_at,
        cast(notified_at as timestamptz) as notified_at
    from alerts
),

final as (
    select
        cast(alert_id as varchar) as alert_id,                 -- stable id of the alert
        cast(date as date) as date,                            -- UTC date the anomaly started
        cast(model as varchar) as model,                       -- model slug
        cast(hardware as varchar) as hardware,                 -- hardware fingerprint
        cast(precision as varchar) as precision,               -- precision of the run or variant, 'n/a'
        cast(rule as varchar) as rule,                         -- diagnostic rule (sql/diagnostics)
        cast(severity as varchar) as severity,                 -- info | warning | critical
        cast(case severity when 'critical' then 3 when 'warning' then 2 when 'info' then 1 else 0 end
            as integer) as severity_rank,                      -- 3 critical, 2 warning, 1 info: to sort by
        cast(scope as varchar) as scope,                       -- run | fleet
        cast(run_id as varchar) as run_id,                     -- training run (run rules), else null
        cast(suite as varchar) as suite,                       -- eval suite (eval rules)
        cast(metric as varchar) as metric,                     -- metric the rule compares
        cast(step_start as bigint) as step_start,              -- first anomalous step (run rules)
        cast(step_end as bigint) as step_end,                  -- last anomalous step seen (run rules)
        cast(start_at as timestamptz) as start_at,             -- UTC time the anomaly starts
        cast(end_at as timestamptz) as end_at,                 -- UTC time of the last anomalous point
        cast(observed as double) as observed,                  -- value observed at the start
        cast(expected as double) as expected,                  -- baseline or threshold
        cast(baseline as varchar) as baseline,                 -- what `expected` is
        cast(n_points as bigint) as n_points,                  -- anomalous points behind the alert
        cast(message as varchar) as message,                   -- one line: what happened
        cast(action as varchar) as action,                     -- suggested next step
        cast(detected_at as timestamptz) as detected_at,       -- UTC time the alert was first computed
        cast(notified_at as timestamptz) as notified_at        -- UTC time the notifiers took it, or null
    from source_alerts
)

select * from final
