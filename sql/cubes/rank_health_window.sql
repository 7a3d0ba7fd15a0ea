-- model: rank_health_window
-- purpose: the step-time spread across the ranks of each distributed job: each rank's mean work per step
--   against its job's median rank (its slowdown), its wait on the all-reduce, its host; and per job the
--   spread (slowest rank / median rank) and the slowest rank. What the straggler rule judges, to look at.
-- grain: one row per run × rank (agg_level 'run,rank') and one per run (agg_level 'run': rank and host
--   name its slowest rank); rolled up over the run's days. date is the run's first day.
-- time column: date (UTC date of the run's first step)
-- partitions: none (recomputed whole from the daily run × rank rows, which are small)
-- sources: rank_base
-- serve: rank_health
-- audits: tests/pipelines/test_fleet_cubes.py (n_steps equal the raw rows'; the slowest rank of a job
--   with a planted straggler is that rank)

with

per_rank as (
    select
        model,
        hardware,
        run_id,
        rank,
        max(host) as host,
        max(world_size) as world_size,
        min(date) as date,
        sum(n_steps) as n_steps,
        sum(step_ms_sum) / sum(n_steps) as step_ms_mean,
        sum(work_ms_sum) / sum(n_steps) as work_ms_mean,
        max(work_ms_max) as work_ms_max,
        sum(comm_wait_ms_sum) / nullif(sum(n_comm), 0) as comm_wait_ms_mean,
        sum(comm_wait_ms_sum) / nullif(sum(step_ms_sum), 0) as comm_wait_share,
        min(first_ts) as first_ts,
        max(last_ts) as last_ts
    from rank_base
    group by model, hardware, run_id, rank
),

per_run as (
    select
        model,
        hardware,
        run_id,
        min(date) as date,
        count(*) as n_ranks,
        count(distinct host) as n_hosts,
        max(world_size) as world_size,
        sum(n_steps) as n_steps,
        median(work_ms_mean) as work_ms_median,
        max(work_ms_mean) as work_ms_slowest,
        min(work_ms_mean) as work_ms_fastest,
        -- the slowest rank (ties: the lowest rank): rank and host of the same row
        max_by(rank, work_ms_mean * 1e6 - rank) as slowest_rank,
        max_by(host, work_ms_mean * 1e6 - rank) as slowest_host,
        avg(step_ms_mean) as step_ms_mean,
        sum(comm_wait_ms_mean * n_steps) / nullif(sum(case when comm_wait_ms_mean is not null then n_steps end), 0)
            as comm_wait_ms_mean,
        min(first_ts) as first_ts,
        max(last_ts) as last_ts
    from per_rank
    group by model, hardware, run_id
),

rank_rows as (
    select
        r.model,
        r.hardware,
        r.date,
        r.run_id,
        'run,rank' as agg_level,
        r.rank,
        r.host,
        r.world_size,
        cast(1 as bigint) as n_ranks,
        cast(1 as bigint) as n_hosts,
        r.n_steps,
        r.step_ms_mean,
        r.work_ms_mean,
        r.work_ms_max,
        j.work_ms_median,
        r.work_ms_mean / nullif(j.work_ms_median, 0) as slowdown,
        r.comm_wait_ms_mean,
        r.comm_wait_share,
        r.first_ts,
        r.last_ts
    from per_rank as r
    inner join per_run as j
        on j.run_id = r.run_id
        and j.model = r.model
        and j.hardware = r.hardware
),

run_rows as (
    select
        model,
        hardware,
        date,
        run_id,
        'run' as agg_level,
        slowest_rank as rank,
        slowest_host as host,
        world_size,
        n_ranks,
        n_hosts,
        n_steps,
        step_ms_mean,
        work_ms_slowest as work_ms_mean,
        work_ms_slowest as work_ms_max,
        work_ms_median,
        work_ms_slowest / nullif(work_ms_median, 0) as slowdown,
        comm_wait_ms_mean,
        comm_wait_ms_mean / nullif(step_ms_mean, 0) as comm_wait_share,
        first_ts,
        last_ts
    from per_run
),

final as (
    select
        cast(model as varchar) as model,                        -- model slug
        cast(hardware as varchar) as hardware,                  -- hardware fingerprint
        cast(date as date) as date,                             -- UTC date of the run's first step
        cast(run_id as varchar) as run_id,                      -- training run
        cast(agg_level as varchar) as agg_level,                -- run,rank (one rank) | run (the job)
        cast(rank as integer) as rank,                          -- the rank (run level: the slowest)
        cast(host as varchar) as host,                          -- its host (run level: the slowest rank's)
        cast(world_size as integer) as world_size,              -- ranks in the job
        cast(n_ranks as bigint) as n_ranks,                     -- ranks behind the row
        cast(n_hosts as bigint) as n_hosts,                     -- hosts behind the row
        cast(n_steps as bigint) as n_steps,                     -- rank-steps behind the row
        cast(step_ms_mean as double) as step_ms_mean,           -- mean step time, ms
        cast(work_ms_mean as double) as work_ms_mean,           -- mean own work per step, ms (run: slowest rank's)
        cast(work_ms_max as double) as work_ms_max,             -- slowest single step's work, ms
        cast(work_ms_median as double) as work_ms_median,       -- the job's median rank's mean work, ms
        cast(slowdown as double) as slowdown,                   -- work / the job's median rank (run: the spread)
        cast(comm_wait_ms_mean as double) as comm_wait_ms_mean, -- mean all-reduce wait per step, ms
        cast(comm_wait_share as double) as comm_wait_share,     -- share of step time waiting on the all-reduce
        cast(first_ts as timestamptz) as first_ts,              -- earliest step
        cast(last_ts as timestamptz) as last_ts                 -- latest step
    from (
        select * from rank_rows
        union all
        select * from run_rows
    ) as rows_out
)

select * from final
