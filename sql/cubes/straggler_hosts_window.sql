-- model: straggler_hosts_window
-- purpose: hosts, and hardware types, ranked by how often they are the straggler across jobs: the jobs
--   each host ran, in how many it was a straggler (the straggler rule's alerts), its mean slowdown
--   against its jobs' median rank. A host slow in several jobs is the suspect, not the jobs.
-- grain: one row per hardware × host (agg_level 'hardware,host') and per hardware (agg_level
--   'hardware': hosts, suspect hosts and jobs summed); over every day in the lake. Every row is rolled
--   up over every model (model 'ALL'): a host's record spans every team's jobs, so a team's role
--   (row-level security on model, conf/teams.yaml) sees none of it; admins and viewers of every model do.
-- time column: none (all dates in the lake; last_ts says how recent)
-- partitions: none (recomputed whole from the run × rank rows and the alerts, which are small)
-- sources: rank_health_window, alerts
-- serve: straggler_hosts
-- audits: tests/pipelines/test_fleet_cubes.py (the simulated fleet's slow hosts rank first)

with

ranks as (
    select *
    from rank_health_window
    where agg_level = 'run,rank'
),

host_jobs as (
    select
        hardware,
        host,
        run_id,
        count(*) as n_ranks,
        sum(n_steps) as n_steps,
        avg(slowdown) as slowdown,
        max(last_ts) as last_ts
    from ranks
    where host is not null
    group by hardware, host, run_id
),

verdicts as (
    select
        hardware,
        host,
        run_id,
        count(*) as n_alerts
    from alerts
    where rule = 'straggler'
        and host is not null
    group by hardware, host, run_id
),

suspects as (
    select
        hardware,
        host
    from alerts
    where rule = 'straggler_host'
    group by hardware, host
),

per_host as (
    select
        j.hardware,
        j.host,
        count(*) as n_jobs,
        count(v.run_id) as n_straggler_jobs,
        sum(j.n_ranks) as n_ranks,
        sum(j.n_steps) as n_steps,
        sum(j.slowdown * j.n_steps) / sum(j.n_steps) as slowdown,
        max(j.last_ts) as last_ts
    from host_jobs as j
    left join verdicts as v
        on v.hardware = j.hardware
        and v.host = j.host
        and v.run_id = j.run_id
    group by j.hardware, j.host
),

host_rows as (
    select
        p.hardware,
        p.host,
        'hardware,host' as agg_level,
        cast(1 as bigint) as n_hosts,
        cast(case when s.host is not null then 1 else 0 end as bigint) as n_suspect_hosts,
        p.n_jobs,
        p.n_straggler_jobs,
        p.n_straggler_jobs / p.n_jobs as straggler_share,
        p.n_ranks,
        p.n_steps,
        p.slowdown,
        p.last_ts
    from per_host as p
    left join suspects as s
        on s.hardware = p.hardware
        and s.host = p.host
),

hardware_rows as (
    select
        hardware,
        'ALL' as host,
        'hardware' as agg_level,
        count(*) as n_hosts,
        sum(n_suspect_hosts) as n_suspect_hosts,
        sum(n_jobs) as n_jobs,
        sum(n_straggler_jobs) as n_straggler_jobs,
        sum(n_straggler_jobs) / sum(n_jobs) as straggler_share,
        sum(n_ranks) as n_ranks,
        sum(n_steps) as n_steps,
        sum(slowdown * n_steps) / sum(n_steps) as slowdown,
        max(last_ts) as last_ts
    from host_rows
    group by hardware
),

final as (
    select
        cast('ALL' as varchar) as model,                        -- every model's jobs: a fleet rollup
        cast(hardware as varchar) as hardware,                  -- hardware fingerprint
        cast(host as varchar) as host,                          -- host, or 'ALL' (hardware level)
        cast(agg_level as varchar) as agg_level,                -- hardware,host | hardware
        cast(n_hosts as bigint) as n_hosts,                     -- hosts behind the row
        cast(n_suspect_hosts as bigint) as n_suspect_hosts,     -- of those, named by straggler_host
        cast(n_jobs as bigint) as n_jobs,                       -- host × job pairs (jobs the host ran)
        cast(n_straggler_jobs as bigint) as n_straggler_jobs,   -- of those, where it was a straggler
        cast(straggler_share as double) as straggler_share,     -- n_straggler_jobs / n_jobs
        cast(n_ranks as bigint) as n_ranks,                     -- rank × job pairs on the host(s)
        cast(n_steps as bigint) as n_steps,                     -- rank-steps on the host(s)
        cast(slowdown as double) as slowdown,                   -- mean work / its jobs' median rank, step-weighted
        cast(last_ts as timestamptz) as last_ts                 -- latest step on the host(s)
    from (
        select * from host_rows
        union all
        select * from hardware_rows
    ) as rows_out
)

select * from final
