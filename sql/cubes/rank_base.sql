-- model: rank_base
-- purpose: every rank's step timing of one model on one hardware on one day, per run and rank: the
--   finest grain, read once from raw rank_steps; the rank and host cubes merge from it.
-- grain: model × hardware × date × run × rank
-- time column: date (UTC date of rank_steps.ts, the lake partition)
-- partitions: model, hardware, date (one file per lake partition; rebuilt only when its raw files change)
-- sources: rank_steps
-- serve: none (served rolled up, as rank_health and straggler_hosts)
-- audits: tests/pipelines/test_fleet_cubes.py (sums equal the raw rows', on both engines)
--
-- A rank's work per step is its step time less its wait on the all-reduce (rank_steps.comm_wait_ms;
-- without it, the step time): the part of the step that is the rank's own, what a straggler has more of.

with

steps as (
    select
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(date as date) as date,
        cast(run_id as varchar) as run_id,
        cast(rank as integer) as rank,
        cast(host as varchar) as host,
        cast(world_size as integer) as world_size,
        cast(step as bigint) as step,
        cast(ts as timestamptz) as ts,
        cast(step_time_ms as double) as step_time_ms,
        cast(data_time_ms as double) as data_time_ms,
        cast(comm_wait_ms as double) as comm_wait_ms,
        cast(step_time_ms - coalesce(comm_wait_ms, 0) as double) as work_ms
    from rank_steps
    where step_time_ms > 0
        and step_time_ms < cast('Infinity' as double)
),

per_rank_day as (
    select
        model,
        hardware,
        date,
        run_id,
        rank,
        max(host) as host,
        max(world_size) as world_size,
        count(*) as n_steps,
        sum(step_time_ms) as step_ms_sum,
        sum(work_ms) as work_ms_sum,
        max(work_ms) as work_ms_max,
        count(comm_wait_ms) as n_comm,
        sum(comm_wait_ms) as comm_wait_ms_sum,
        count(data_time_ms) as n_data,
        sum(data_time_ms) as data_ms_sum,
        min(step) as first_step,
        max(step) as last_step,
        min(ts) as first_ts,
        max(ts) as last_ts
    from steps
    group by model, hardware, date, run_id, rank
),

final as (
    select
        cast(model as varchar) as model,                          -- model slug
        cast(hardware as varchar) as hardware,                    -- hardware fingerprint
        cast(date as date) as date,                               -- UTC date of the steps
        cast(run_id as varchar) as run_id,                        -- training run
        cast(rank as integer) as rank,                            -- global rank
        cast(host as varchar) as host,                            -- host the rank ran on
        cast(world_size as integer) as world_size,                -- ranks in the job
        cast(n_steps as bigint) as n_steps,                       -- logged steps of the rank that day
        cast(step_ms_sum as double) as step_ms_sum,               -- sum of step times, ms
        cast(work_ms_sum as double) as work_ms_sum,               -- sum of its own work (step less comm wait), ms
        cast(work_ms_max as double) as work_ms_max,               -- its slowest step's work, ms
        cast(n_comm as bigint) as n_comm,                         -- steps with a measured comm wait
        cast(comm_wait_ms_sum as double) as comm_wait_ms_sum,     -- sum of all-reduce waits, ms
        cast(n_data as bigint) as n_data,                         -- steps with a data time
        cast(data_ms_sum as double) as data_ms_sum,               -- sum of data waits, ms
        cast(first_step as bigint) as first_step,                 -- first logged step that day
        cast(last_step as bigint) as last_step,                   -- last logged step that day
        cast(first_ts as timestamptz) as first_ts,                -- earliest step
        cast(last_ts as timestamptz) as last_ts                   -- latest step
    from per_rank_day
)

select * from final
