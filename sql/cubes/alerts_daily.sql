-- model: alerts_daily
-- purpose: health alerts per day for dashboards: how many alerts each diagnostic rule raised on each
--   model × hardware × precision, by severity, the training runs they hit, the anomalous points
--   behind them, and the latest message. Alerts themselves come from mhw diagnose (lake table alerts).
-- grain: date × model × hardware × precision × rule × severity; date is the UTC date the anomaly
--   started (the alerts partition), precision 'n/a' for alerts that name none.
-- time column: date
-- partitions: date (rebuilt for the dates whose alerts changed)
-- sources: alerts
-- serve: alert_health (the alerts per day; the alerts themselves are the lake table alerts)
-- audits: tests/pipelines/test_diagnose.py (counts equal the alerts table)

with

source_alerts as (
    select
        cast(date as date) as date,
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        coalesce(cast(precision as varchar), 'n/a') as precision,
        cast(rule as varchar) as rule,
        cast(severity as varchar) as severity,
        cast(scope as varchar) as scope,
        cast(run_id as varchar) as run_id,
        cast(n_points as bigint) as n_points,
        cast(start_at as timestamptz) as start_at,
        cast(end_at as timestamptz) as end_at,
        cast(alert_id as varchar) as alert_id,
        cast(message as varchar) as message,
        cast(notified_at as timestamptz) as notified_at
    from alerts
),

per_day as (
    select
        date,
        model,
        hardware,
        precision,
        rule,
        severity,
        max(scope) as scope,
        count(*) as n_alerts,
        count(distinct run_id) as n_runs,
        sum(n_points) as n_points,
        count(*) filter (where notified_at is not null) as n_notified,
        min(start_at) as first_start_at,
        max(end_at) as last_end_at,
        max(struct_pack(start_at := start_at, alert_id := alert_id, message := message)) as latest
    from source_alerts
    group by date, model, hardware, precision, rule, severity
),

final as (
    select
        cast(date as date) as date,                            -- UTC date the anomalies started
        cast(model as varchar) as model,                       -- model slug
        cast(hardware as varchar) as hardware,                 -- hardware fingerprint
        cast(precision as varchar) as precision,               -- precision of the run or variant, 'n/a'
        cast(rule as varchar) as rule,                         -- diagnostic rule (sql/diagnostics)
        cast(severity as varchar) as severity,                 -- info | warning | critical
        cast(scope as varchar) as scope,                       -- run | fleet
        cast(n_alerts as bigint) as n_alerts,                  -- alerts raised
        cast(n_runs as bigint) as n_runs,                      -- training runs hit (run rules)
        cast(n_points as bigint) as n_points,                  -- anomalous steps/blocks/days behind them
        cast(n_notified as bigint) as n_notified,              -- alerts already sent to the notifiers
        cast(first_start_at as timestamptz) as first_start_at, -- earliest anomaly start
        cast(last_end_at as timestamptz) as last_end_at,       -- latest anomalous point seen
        cast(latest.message as varchar) as latest_message      -- message of the latest-starting alert
    from per_day
)

select * from final
