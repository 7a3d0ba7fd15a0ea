-- model: repairs_daily
-- purpose: the repair funnel per day, for the dashboard's "alerts -> repairs -> healed" chart: the
--   training-run alerts each rule raised (warning and critical; repair children's own included), the
--   repairs that answered them, and how those ended (healed, escalated to a person, advised for
--   imported runs, still open), with the attempts, the extra training compute and the time from the
--   alert to the verdict.
-- grain: date × model × hardware × rule; date is the UTC date the alert's anomaly started (the
--   partition of both alerts and repairs), so an alert and its repair count on the same day.
-- time column: date
-- partitions: date (rebuilt for the dates whose alerts or repairs changed)
-- sources: alerts, repairs
-- serve: repair_health
-- audits: tests/dags/test_repair_runs.py (counts equal the repairs table), tests/pipelines/test_cube_spark.py

with

source_alerts as (
    select
        cast(date as date) as date,
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(rule as varchar) as rule,
        cast(severity as varchar) as severity
    from alerts
    where scope = 'run'
),

source_repairs as (
    select
        cast(date as date) as date,
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(rule as varchar) as rule,
        cast(repair_id as varchar) as repair_id,
        cast(action as varchar) as action,
        cast(verdict as varchar) as verdict,
        cast(compute_s as double) as compute_s,
        cast(samples as bigint) as samples,
        cast(seconds_to_verdict as double) as seconds_to_verdict
    from repairs
),

alerts_per_day as (
    select
        date,
        model,
        hardware,
        rule,
        count(*) filter (where severity in ('warning', 'critical')) as n_alerts,
        count(*) filter (where severity = 'critical') as n_critical
    from source_alerts
    group by date, model, hardware, rule
),

repairs_per_day as (
    select
        date,
        model,
        hardware,
        rule,
        count(distinct repair_id) as n_repairs,
        count(*) filter (where action in ('retrain', 'mark_best')) as n_attempts,
        count(distinct case when verdict = 'healed' then repair_id end) as n_healed,
        count(distinct case when verdict = 'escalated' then repair_id end) as n_escalated,
        count(distinct case when verdict = 'advised' then repair_id end) as n_advised,
        sum(coalesce(compute_s, 0)) as compute_s,
        sum(coalesce(samples, 0)) as samples,
        avg(seconds_to_verdict) filter (where verdict in ('healed', 'escalated', 'advised')) as mean_s_to_verdict,
        max(seconds_to_verdict) filter (where verdict in ('healed', 'escalated', 'advised')) as max_s_to_verdict
    from source_repairs
    group by date, model, hardware, rule
),

joined as (
    select
        coalesce(a.date, r.date) as date,
        coalesce(a.model, r.model) as model,
        coalesce(a.hardware, r.hardware) as hardware,
        coalesce(a.rule, r.rule) as rule,
        coalesce(a.n_alerts, 0) as n_alerts,
        coalesce(a.n_critical, 0) as n_critical,
        coalesce(r.n_repairs, 0) as n_repairs,
        coalesce(r.n_attempts, 0) as n_attempts,
        coalesce(r.n_healed, 0) as n_healed,
        coalesce(r.n_escalated, 0) as n_escalated,
        coalesce(r.n_advised, 0) as n_advised,
        coalesce(r.compute_s, 0) as compute_s,
        coalesce(r.samples, 0) as samples,
        r.mean_s_to_verdict,
        r.max_s_to_verdict
    from alerts_per_day as a
    full outer join repairs_per_day as r
        on a.date = r.date and a.model = r.model and a.hardware = r.hardware and a.rule = r.rule
),

final as (
    select
        cast(date as date) as date,                            -- UTC date the alerts started
        cast(model as varchar) as model,                       -- model slug
        cast(hardware as varchar) as hardware,                 -- hardware fingerprint
        cast(rule as varchar) as rule,                         -- diagnostic rule (training runs)
        cast(n_alerts as bigint) as n_alerts,                  -- run alerts at warning or critical
        cast(n_critical as bigint) as n_critical,              -- of those, critical
        cast(n_repairs as bigint) as n_repairs,                -- repairs answering this rule's alerts
        cast(n_attempts as bigint) as n_attempts,              -- attempts made (retrainings, best-checkpoint stops)
        cast(n_healed as bigint) as n_healed,                  -- repairs that ended healed
        cast(n_escalated as bigint) as n_escalated,            -- repairs handed to a person
        cast(n_advised as bigint) as n_advised,                -- imported runs given the plan, not restarted
        cast(n_repairs - n_healed - n_escalated - n_advised as bigint) as n_open,  -- repairs still going
        cast(compute_s as double) as compute_s,                -- seconds of training the attempts took
        cast(samples as bigint) as samples,                    -- training samples they processed
        cast(mean_s_to_verdict as double) as mean_s_to_verdict,  -- mean seconds from alert to final verdict
        cast(max_s_to_verdict as double) as max_s_to_verdict   -- slowest of those
    from joined
)

select * from final
