-- rule: run_hung
-- purpose: a training run whose processes are alive but log no step: stuck in a collective waiting for
--   a peer, a data loader, a deadlock, or stopped (SIGSTOP, a debugger, a frozen node). The job holds
--   its accelerators and produces nothing, and nothing else in the lake says so.
-- grain: one row per hung run; the rank and host named: a stopped process, else the one stuck longest.
-- scope: live (recomputed at every diagnose, by its clock, for the runs with recent heartbeats)
-- subject: run_id
-- sources: live_processes
-- params: step_factor float >= 1; min_wait_s float > 0; startup_s float > 0; max_silent_beats float > 0
-- audits: tests/pipelines/test_fleet.py (a SIGSTOPped trainer under mhw watch, a stuck loop on its own;
--   quiet on a healthy twin and on runs that ended)
--
-- A process is hung when its latest heartbeat is recent (within max_silent_beats of its interval: a
-- silent one is run_lost's) and says it has logged no step for longer than its bound: step_factor times
-- its own median step interval, at least min_wait_s (validation and checkpoints pause the steps); before
-- its first step, startup_s. A process its watchdog killed for hanging (state killed) is hung too.
-- step_start is the last checkpoint (where a restart resumes), step_end the last step logged.

with

procs as (
    select
        *,
        case
            when last_step is null then greatest({{ min_wait_s }}, {{ startup_s }})
            else greatest({{ min_wait_s }}, {{ step_factor }} * coalesce(step_interval_s, 0))
        end as bound_s
    from live_processes
    where is_open
),

hung as (
    select
        *,
        -- the rank named: a stopped one first (the others wait on it), else the one stuck longest
        no_step_s + case when state = 'stopped' then 1e12 else 0 end as blame
    from procs
    where state = 'killed'
        or (state in ('running', 'stopped')
            and silent_s <= {{ max_silent_beats }} * interval_s
            and no_step_s > bound_s)
),

ranked as (
    select
        *,
        row_number() over (partition by run_id order by blame desc, rank) as place,
        count(*) over (partition by run_id) as n_points,
        max(checkpoint_step) over (partition by run_id) as run_checkpoint,
        max(last_step) over (partition by run_id) as run_last_step,
        min(last_step_at) over (partition by run_id) as start_at,
        max(ts) over (partition by run_id) as end_at
    from hung
),

per_run as (
    -- the process named (a stopped one first, else the one stuck longest; ties: the lowest rank)
    select
        model,
        hardware,
        run_id,
        precision,
        rank,
        host,
        state,
        no_step_s,
        bound_s,
        run_checkpoint as checkpoint_step,
        run_last_step as last_step,
        start_at,
        end_at,
        n_points,
        n_procs
    from ranked
    where place = 1
),

final as (
    select
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(precision as varchar) as precision,
        cast(run_id as varchar) as run_id,
        cast(null as varchar) as suite,
        cast('seconds_without_step' as varchar) as metric,
        cast(checkpoint_step as bigint) as step_start,
        cast(last_step as bigint) as step_end,
        cast(start_at as timestamptz) as start_at,
        cast(end_at as timestamptz) as end_at,
        cast(no_step_s as double) as observed,
        cast(bound_s as double) as expected,
        cast(concat(
            case
                when state = 'killed' then 'killed by its watchdog'
                when state = 'stopped' then 'stopped (state T)'
                else 'running'
            end,
            '; ', cast(n_points as varchar), ' of ', cast(n_procs as varchar), ' processes without a step; bound: ',
            case when bound_s > {{ min_wait_s }} and bound_s <> {{ startup_s }}
                then concat(cast({{ step_factor }} as varchar), ' x the median step interval')
                else 'the floor' end
        ) as varchar) as baseline,
        cast(n_points as bigint) as n_points,
        cast(state in ('stopped', 'killed') as boolean) as escalate,
        cast(host as varchar) as host,
        cast(rank as bigint) as rank
    from per_run
)

select * from final
