-- model: live_processes
-- purpose: every process of the runs with recent heartbeats, as of the diagnose's clock: its latest
--   heartbeat, how long it went without a step and without a heartbeat, and whether its run is still
--   open; what run_hung and run_lost judge (computed once per diagnose by pipelines/fleet.py).
-- grain: one row per process (run × rank) of each run's latest launch
-- time column: ts (the process's latest heartbeat)
-- partitions: none (a diagnose's working table, never stored)
-- sources: heartbeats, runs, diagnose_clock
-- serve: none
-- audits: tests/pipelines/test_fleet.py
--
-- A run's latest launch: its processes whose latest heartbeat is no older than the latest start of
-- its rank 0 (a resumed run's new processes; the old ones ended or died before it started). A run is
-- open while its runs row does not say it completed or diverged (failed stays open: when one rank is
-- killed the others fail on the broken collective and end the run 'failed', the lost rank is the
-- cause), and not every process of its launch has ended.

with

beats as (
    select
        model,
        hardware,
        run_id,
        attempt,
        rank,
        host,
        pid,
        started_at,
        ts,
        interval_s,
        state,
        last_step,
        last_step_at,
        step_interval_s,
        checkpoint_step,
        exit_code,
        source
    from heartbeats
),

launches as (
    select
        run_id,
        max(started_at) as launch_at
    from beats
    where rank = 0
    group by run_id
),

current_procs as (
    select beats.*
    from beats
    inner join launches
        on launches.run_id = beats.run_id
    where beats.ts >= launches.launch_at
),

run_rows as (
    select
        run_id,
        max_by(status, started_at) as status,
        max(precision) as precision
    from runs
    group by run_id
),

per_run as (
    select
        run_id,
        count(*) as n_procs,
        count(*) filter (where state = 'ended') as n_ended
    from current_procs
    group by run_id
),

final as (
    select
        cast(p.model as varchar) as model,
        cast(p.hardware as varchar) as hardware,
        cast(r.precision as varchar) as precision,
        cast(p.run_id as varchar) as run_id,
        cast(p.rank as bigint) as rank,
        cast(p.host as varchar) as host,
        cast(p.pid as bigint) as pid,
        cast(p.state as varchar) as state,
        cast(p.source as varchar) as source,
        cast(p.ts as timestamptz) as ts,
        cast(p.last_step as bigint) as last_step,
        cast(p.last_step_at as timestamptz) as last_step_at,
        cast(p.checkpoint_step as bigint) as checkpoint_step,
        cast(p.exit_code as integer) as exit_code,
        cast(p.interval_s as double) as interval_s,
        cast(p.step_interval_s as double) as step_interval_s,
        -- seconds since its latest heartbeat, by the diagnose's clock
        cast(date_diff('millisecond', p.ts, c.now) / 1000.0 as double) as silent_s,
        -- seconds without a step as its latest heartbeat saw it
        cast(date_diff('millisecond', p.last_step_at, p.ts) / 1000.0 as double) as no_step_s,
        cast(r.status is null or r.status not in ('completed', 'diverged') as boolean) as is_open,
        cast(pr.n_procs as bigint) as n_procs
    from current_procs as p
    cross join diagnose_clock as c
    inner join per_run as pr
        on pr.run_id = p.run_id
    left join run_rows as r
        on r.run_id = p.run_id
    where pr.n_ended < pr.n_procs
)

select * from final
