-- model: audit_entries
-- purpose: the audit trail, served, for the admins' dashboard (the Audit trail chart): one row per
--   lake-changing command (warehouse/audit.py), who ran it, how it ended and what it counted.
--   Superset reads only the serving file, never the lake table audit_log. Freshness: the audit log
--   changes with every command, the build's own among them, so its changes alone start no rebuild
--   (pipelines/build.py PASSIVE): the served trail is as of the last build that had other work, and
--   shows that build itself as started.
-- grain: entry_id (one row per command); date is the UTC date it started (the audit_log partition)
-- time column: date
-- partitions: date (rebuilt for the dates whose entries changed)
-- sources: audit_log
-- serve: audit_trail (named apart from the lake table audit_log, which mhw query shows as it is)
-- audits: tests/warehouse/test_audit.py (the served rows equal the lake table at the build)

with

source_entries as (
    select
        cast(entry_id as varchar) as entry_id,
        cast(date as date) as date,
        cast(command as varchar) as command,
        cast(status as varchar) as status,
        cast(user as varchar) as user_name,
        cast(via as varchar) as via,
        cast(host as varchar) as host,
        cast(started_at as timestamptz) as started_at,
        cast(ended_at as timestamptz) as ended_at,
        cast(duration_s as double) as duration_s,
        cast(exit_code as integer) as exit_code,
        cast(rows_in as bigint) as rows_in,
        cast(rows_quarantined as bigint) as rows_quarantined,
        cast(files_deleted as bigint) as files_deleted,
        cast(partitions as bigint) as partitions,
        cast(alerts_new as bigint) as alerts_new,
        cast(counts as varchar) as counts,
        cast(error as varchar) as error
    from audit_log
),

final as (
    select
        cast(entry_id as varchar) as entry_id,                 -- id of the entry
        cast(date as date) as date,                            -- UTC date the command started
        cast(command as varchar) as command,                   -- ingest, build, diagnose, maintenance…
        cast(status as varchar) as status,                     -- ok | failed | started (running or killed)
        cast(user_name as varchar) as user_name,               -- OS user of the process
        cast(via as varchar) as via,                           -- cli | airflow <dag>.<task> <run> | superset
        cast(host as varchar) as host,                         -- machine it ran on
        cast(started_at as timestamptz) as started_at,         -- UTC start
        cast(ended_at as timestamptz) as ended_at,             -- UTC end, null while started
        cast(duration_s as double) as duration_s,              -- wall seconds
        cast(exit_code as integer) as exit_code,               -- 0 ok; null while started
        cast(rows_in as bigint) as rows_in,                    -- rows written into lake tables
        cast(rows_quarantined as bigint) as rows_quarantined,  -- rows rejected into quarantine
        cast(files_deleted as bigint) as files_deleted,        -- lake files deleted
        cast(partitions as bigint) as partitions,              -- partitions rebuilt, compacted or aged out
        cast(alerts_new as bigint) as alerts_new,              -- alerts never seen before
        cast(counts as varchar) as counts,                     -- every count, as JSON
        cast(error as varchar) as error                        -- why it failed
    from source_entries
)

select * from final
