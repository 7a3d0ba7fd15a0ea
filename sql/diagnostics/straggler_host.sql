-- rule: straggler_host
-- purpose: a host that is the straggler in several of the jobs it runs, across models: the host is the
--   suspect, not the jobs (a failing device, link or cooling, a noisy neighbour). Drain it before it
--   slows the next job.
-- grain: one row per suspect host (hardware × host); model reads 'ALL' (a host serves every model).
-- scope: hosts (recomputed at every diagnose over the last window_days, from the straggler alerts and
--   the hosts the jobs of those days ran on)
-- subject: hardware, host
-- sources: straggler_verdicts, rank_steps, diagnose_clock
-- params: window_days int >= 1; min_jobs int >= 1; min_share float > 0 <= 1
-- audits: tests/pipelines/test_fleet.py (the simulated fleet's planted slow hosts, and only them);
--   bench/bench_fleet.py (precision and recall per host on fleets of 8-1024 ranks)
--
-- straggler_verdicts holds the straggler rule's alerts (this diagnose's and those kept from earlier
-- ones): run, rank, host, slowdown. A host's jobs are the runs with rank_steps on it started within
-- window_days of the clock; it is the suspect when it straggled in at least min_jobs of them and in at
-- least min_share of them. observed: that share; expected: min_share; the baseline gives the counts and
-- its median slowdown.

with

jobs as (
    select
        s.hardware,
        s.host,
        s.run_id,
        min(s.ts) as first_ts
    from rank_steps as s
    cross join diagnose_clock as c
    where s.ts >= c.now - interval '{{ window_days }}' day
        and s.host is not null
    group by s.hardware, s.host, s.run_id
),

verdicts as (
    select
        v.hardware,
        v.host,
        v.run_id,
        max(v.observed / nullif(v.expected, 0)) as slowdown,
        min(v.start_at) as start_at,
        max(v.end_at) as end_at
    from straggler_verdicts as v
    cross join diagnose_clock as c
    where v.start_at >= c.now - interval '{{ window_days }}' day
        and v.host is not null
    group by v.hardware, v.host, v.run_id
),

per_host as (
    select
        j.hardware,
        j.host,
        count(*) as n_jobs,
        count(v.run_id) as n_straggled,
        median(v.slowdown) as slowdown,
        min(v.start_at) as start_at,
        max(v.end_at) as end_at
    from jobs as j
    left join verdicts as v
        on v.hardware = j.hardware
        and v.host = j.host
        and v.run_id = j.run_id
    group by j.hardware, j.host
),

suspects as (
    select *
    from per_host
    where n_straggled >= {{ min_jobs }}
        and n_straggled >= {{ min_share }} * n_jobs
),

final as (
    select
        cast('ALL' as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(null as varchar) as precision,
        cast(null as varchar) as run_id,
        cast(null as varchar) as suite,
        cast('straggler_share' as varchar) as metric,
        cast(null as bigint) as step_start,
        cast(null as bigint) as step_end,
        cast(start_at as timestamptz) as start_at,
        cast(end_at as timestamptz) as end_at,
        cast(n_straggled / n_jobs as double) as observed,
        cast({{ min_share }} as double) as expected,
        cast(concat('straggler in ', cast(n_straggled as varchar), ' of the ', cast(n_jobs as varchar),
            ' jobs it ran in ', cast({{ window_days }} as varchar), ' days; median slowdown ',
            cast(round(slowdown, 2) as varchar), 'x') as varchar) as baseline,
        cast(n_straggled as bigint) as n_points,
        cast(false as boolean) as escalate,
        cast(host as varchar) as host,
        cast(null as bigint) as rank
    from suspects
)

select * from final
