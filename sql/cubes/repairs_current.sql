-- model: repairs_current
-- purpose: the repairs themselves, served, for dashboards and mhw query's readers of the serving file:
--   one row per attempt of the closed-loop repair (mhw repair, the repair_runs DAG), as the lake
--   table repairs holds it (a retried attempt rewrites its row, never adds one).
-- grain: attempt_id (one row per attempt); date is the UTC date the answered alert's anomaly started
--   (the repairs partition, the same as the alert's)
-- time column: date
-- partitions: date (rebuilt for the dates whose repairs changed)
-- sources: repairs
-- serve: repair_list (named apart from the lake table repairs, which mhw query shows as it is)
-- audits: tests/dags/test_repair_runs.py (repair_list has every row of repairs)

with

source_repairs as (
    select
        cast(attempt_id as varchar) as attempt_id,
        cast(repair_id as varchar) as repair_id,
        cast(date as date) as date,
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(attempt as integer) as attempt,
        cast(alert_id as varchar) as alert_id,
        cast(rule as varchar) as rule,
        cast(severity as varchar) as severity,
        cast(onset_step as bigint) as onset_step,
        cast(parent_run_id as varchar) as parent_run_id,
        cast(child_run_id as varchar) as child_run_id,
        cast(action as varchar) as action,
        cast(patch as varchar) as patch,
        cast(resume_step as bigint) as resume_step,
        cast(checkpoint as varchar) as checkpoint,
        cast(verdict as varchar) as verdict,
        cast(reason as varchar) as reason,
        cast(observed as double) as observed,
        cast(expected as double) as expected,
        cast(margin as double) as margin,
        cast(compute_s as double) as compute_s,
        cast(samples as bigint) as samples,
        cast(alert_detected_at as timestamptz) as alert_detected_at,
        cast(started_at as timestamptz) as started_at,
        cast(verdict_at as timestamptz) as verdict_at,
        cast(seconds_to_verdict as double) as seconds_to_verdict,
        cast(notified_at as timestamptz) as notified_at
    from repairs
),

final as (
    select
        cast(attempt_id as varchar) as attempt_id,             -- stable id of the attempt
        cast(repair_id as varchar) as repair_id,               -- stable id of the repair (run x alert)
        cast(date as date) as date,                            -- UTC date the answered alert started
        cast(model as varchar) as model,                       -- model slug
        cast(hardware as varchar) as hardware,                 -- hardware fingerprint
        cast(attempt as integer) as attempt,                   -- 1, 2, ... (0: advice or escalation only)
        cast(alert_id as varchar) as alert_id,                 -- the alert answered
        cast(rule as varchar) as rule,                         -- its rule: the policy applied
        cast(severity as varchar) as severity,                 -- its severity
        cast(onset_step as bigint) as onset_step,              -- its first anomalous step
        cast(parent_run_id as varchar) as parent_run_id,       -- the run repaired
        cast(child_run_id as varchar) as child_run_id,         -- the run this attempt trained, or null
        cast(action as varchar) as action,                     -- retrain | mark_best | advise | escalate
        cast(patch as varchar) as patch,                       -- the policy's patch (conf/repair.yaml)
        cast(resume_step as bigint) as resume_step,            -- parent checkpoint started from (null: scratch)
        cast(checkpoint as varchar) as checkpoint,             -- checkpoint produced or marked
        cast(verdict as varchar) as verdict,                   -- running | healed | not_healed | escalated | advised
        cast(reason as varchar) as reason,                     -- the checks behind the verdict
        cast(observed as double) as observed,                  -- the child's loss at its end
        cast(expected as double) as expected,                  -- the reference it was held to
        cast(margin as double) as margin,                      -- allowed share above the reference
        cast(compute_s as double) as compute_s,                -- seconds of training the attempt took
        cast(samples as bigint) as samples,                    -- training samples it processed
        cast(alert_detected_at as timestamptz) as alert_detected_at,  -- UTC time the alert was computed
        cast(started_at as timestamptz) as started_at,         -- UTC time the attempt was claimed
        cast(verdict_at as timestamptz) as verdict_at,         -- UTC time of the verdict, or null
        cast(seconds_to_verdict as double) as seconds_to_verdict,  -- alert to verdict, seconds
        cast(notified_at as timestamptz) as notified_at        -- UTC time the verdict was notified, or null
    from source_repairs
)

select * from final
