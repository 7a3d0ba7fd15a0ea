-- rule: run_lost
-- purpose: a training run whose processes are gone without ending it: killed (SIGKILL, the OOM killer),
--   a crash past the trainer's handlers, a host or its network down. Its runs row would say running
--   forever; the diagnose marks it lost (pipelines/fleet.py) and the work since its last checkpoint is
--   lost with it.
-- grain: one row per lost run; the rank and host named are the first seen gone.
-- scope: live (recomputed at every diagnose, by its clock, for the runs with recent heartbeats)
-- subject: run_id
-- sources: live_processes
-- params: overdue_beats float > 0; max_silent_beats float > 0
-- audits: tests/pipelines/test_fleet.py (a SIGKILLed rank under torchrun and mhw watch, a killed trainer
--   without a watchdog; quiet on a healthy twin, on runs that ended and on a resumed run)
--
-- A process is lost when its heartbeat says exited (its watchdog saw it gone without an ending), or
-- when its heartbeats stopped: none for more than max_silent_beats of its interval (a watchdog that died
-- with its host, or a process beating for itself). Without a watchdog a process stopped by SIGSTOP
-- stops beating too, and reads as lost. Two stages, as a node controller has (unknown, then evicted):
-- heartbeats overdue by more than overdue_beats intervals is the rule's severity (a warning: the
-- earliest sign, within two intervals of the death; a beat late by a slow write clears it at the next
-- diagnose); exited, or silent past max_silent_beats, is escalated (critical: the run is marked lost in
-- runs and its DAG task fails). Beats leave on a fixed cadence (warehouse/liveness.py), so a healthy
-- process is overdue only when one write takes more than (overdue_beats - 1) intervals.
-- step_start is the last checkpoint, step_end the last step logged.

with

lost as (
    select
        *,
        ts as gone_at,  -- seen gone by its watchdog, or last seen alive
        state = 'exited' as is_exited,
        state = 'exited' or silent_s > {{ max_silent_beats }} * interval_s as is_proven
    from live_processes
    where is_open
        and (state = 'exited'
            or (state in ('running', 'stopped') and silent_s > {{ overdue_beats }} * interval_s))
),

ranked as (
    select
        *,
        row_number() over (partition by run_id order by gone_at, rank) as place,
        count(*) over (partition by run_id) as n_points,
        max(checkpoint_step) over (partition by run_id) as run_checkpoint,
        min(gone_at) over (partition by run_id) as start_at,
        max(ts) over (partition by run_id) as end_at,
        max(silent_s) over (partition by run_id) as run_silent_s,
        bool_or(is_proven) over (partition by run_id) as run_proven
    from lost
),

per_run as (
    -- the process named: the first seen gone (ties: the lowest rank)
    select
        model,
        hardware,
        run_id,
        precision,
        rank,
        host,
        is_exited,
        run_proven as is_proven,
        exit_code,
        run_checkpoint as checkpoint_step,
        last_step,
        start_at,
        end_at,
        run_silent_s as silent_s,
        interval_s,
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
        cast('seconds_since_heartbeat' as varchar) as metric,
        cast(checkpoint_step as bigint) as step_start,
        cast(last_step as bigint) as step_end,
        cast(start_at as timestamptz) as start_at,
        cast(end_at as timestamptz) as end_at,
        cast(silent_s as double) as observed,
        cast((case when is_proven then {{ max_silent_beats }} else {{ overdue_beats }} end) * interval_s
            as double) as expected,
        cast(concat(
            case
                when is_exited then concat('gone: exited without an ending',
                    case when exit_code < 0 then concat(' (signal ', cast(-exit_code as varchar), ')')
                         when exit_code is not null then concat(' (exit status ', cast(exit_code as varchar), ')')
                         else '' end)
                when is_proven then 'gone: heartbeats stopped'
                else concat('heartbeats overdue (lost after ',
                    cast(round({{ max_silent_beats }} * interval_s, 1) as varchar), ' s without one)')
            end,
            '; ', cast(n_points as varchar), ' of ', cast(n_procs as varchar),
            case when is_proven then ' processes gone' else ' processes overdue' end
        ) as varchar) as baseline,
        cast(n_points as bigint) as n_points,
        cast(is_proven as boolean) as escalate,
        cast(host as varchar) as host,
        cast(rank as bigint) as rank
    from per_run
)

select * from final
