-- model: liveness_current
-- purpose: where every process of every run with heartbeats stands: its latest heartbeat (state, last
--   step and when, last checkpoint, host), with its run's status; the live view of hung and lost runs
--   beside their alerts (rules run_hung and run_lost judge the same rows by the clock).
-- grain: one row per run × rank of the run's latest launch (its processes heard from since its rank 0
--   last started); date is the UTC date of the latest heartbeat.
-- time column: date
-- partitions: none (recomputed whole: one row per process and day, small)
-- sources: heartbeats, runs
-- serve: run_liveness
-- audits: tests/pipelines/test_fleet_cubes.py (one row per process; states as the heartbeats say)

with

beats as (
    select *
    from heartbeats
),

latest as (
    select
        run_id,
        rank,
        max(ts) as ts
    from beats
    group by run_id, rank
),

launches as (
    select
        run_id,
        max(started_at) as launch_at
    from beats
    where rank = 0
    group by run_id
),

procs as (
    select b.*
    from beats as b
    inner join latest as l
        on l.run_id = b.run_id
        and l.rank = b.rank
        and l.ts = b.ts
    inner join launches as s
        on s.run_id = b.run_id
    where b.ts >= s.launch_at
),

run_rows as (
    select
        run_id,
        max_by(status, started_at) as status
    from runs
    group by run_id
),

final as (
    select
        cast(p.model as varchar) as model,                      -- model slug
        cast(p.hardware as varchar) as hardware,                -- hardware fingerprint
        cast(cast(p.ts as date) as date) as date,               -- UTC date of the latest heartbeat
        cast(p.run_id as varchar) as run_id,                    -- training run
        cast(r.status as varchar) as run_status,                -- the runs row's status (null: none yet)
        cast(p.rank as integer) as rank,                        -- global rank
        cast(p.world_size as integer) as world_size,            -- ranks in the job
        cast(p.host as varchar) as host,                        -- host
        cast(p.pid as bigint) as pid,                           -- process id on the host
        cast(p.state as varchar) as state,                      -- running | stopped | exited | ended | killed
        cast(p.source as varchar) as source,                    -- process | watchdog
        cast(p.started_at as timestamptz) as started_at,        -- the process's start
        cast(p.ts as timestamptz) as heartbeat_at,              -- its latest heartbeat
        cast(p.interval_s as double) as interval_s,             -- seconds between heartbeats
        cast(p.last_step as bigint) as last_step,               -- last step logged
        cast(p.last_step_at as timestamptz) as last_step_at,    -- when
        cast(date_diff('millisecond', p.last_step_at, p.ts) / 1000.0 as double) as no_step_s, -- without a step, at its heartbeat
        cast(p.step_interval_s as double) as step_interval_s,   -- median seconds between its steps
        cast(p.checkpoint_step as bigint) as checkpoint_step,   -- last checkpoint
        cast(p.exit_code as integer) as exit_code               -- exit status (negative: the signal)
    from procs as p
    left join run_rows as r
        on r.run_id = p.run_id
)

select * from final
