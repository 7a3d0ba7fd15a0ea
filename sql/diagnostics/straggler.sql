-- rule: straggler
-- purpose: a rank of a distributed job persistently slower than its peers: a failing or throttled
--   device, a slow link, a noisy neighbour on its host. Every synchronous step waits for the slowest
--   rank, so one straggler slows the whole job; step times alone hide it (every rank waits as long).
-- grain: one row per straggling rank of a run (run × rank); the range runs from its first slow window
--   to its last.
-- scope: run (recomputed for the runs whose rank_steps changed)
-- subject: run_id, rank
-- sources: rank_steps, diagnose_runs
-- params: window_logs int >= 2; warmup_windows int >= 0; min_ranks int >= 2; min_slowdown float > 0;
--   min_excess_ms float >= 0; min_windows int >= 1; min_share float > 0 <= 1; critical_slowdown float > 0
-- audits: tests/pipelines/test_fleet.py (a real torchrun job with one rank throttled from outside names
--   that rank and its host; quiet on its healthy twin); bench/bench_fleet.py (precision and recall on a
--   matrix of real jobs, the simulated fleets of 8-1024 ranks)
--
-- A rank's work per step is its step time less its wait on the all-reduce (compute and data: the part
-- that is its own); without a measured wait, its step time. Logged steps are cut in windows of
-- window_logs (times the run's logging interval; the first warmup_windows of a run, its warm-up, are
-- not judged: the first iterations build buckets, caches and compiled graphs unevenly across ranks); in
-- each, the rank's mean work per step is compared with the median of the OTHER ranks' means
-- (leave-one-out: with two ranks, the other one). The mean, not the median: a synchronous job pays the
-- sum of a rank's excess, and an intermittent slowdown (a duty-cycle throttle, a neighbour's bursts) is
-- a few long steps in each window that a median never sees. A window is slow when the rank's work
-- exceeds its peers' by more than min_slowdown (a share) and min_excess_ms. Persistence, not one slow
-- step: at least min_windows slow windows, and, over the rank's windows from its first slow one to its
-- last (an episode: a rank that recovers keeps its alert for the steps it straggled, and straggler_host
-- counts the job), at least min_share of them slow or its mean work over them all min_slowdown above
-- its peers' (a noisy neighbour comes and goes: slow in half the windows, slower overall).
-- observed / expected: the rank's and its peers' median work over its slow windows; the baseline says
-- what the job pays: the excess as a share of its step time.

with

logged as (
    select
        s.model,
        s.hardware,
        s.precision,
        s.run_id,
        s.step,
        s.ts,
        s.rank,
        s.host,
        s.step_time_ms,
        s.step_time_ms - coalesce(s.comm_wait_ms, 0) as work_ms
    from rank_steps as s
    inner join diagnose_runs as r
        on r.run_id = s.run_id
    where s.step_time_ms > 0
        and s.step_time_ms < cast('Infinity' as double)
        and coalesce(s.comm_wait_ms, 0) >= 0
),

first_steps as (
    select
        run_id,
        min(step) as first_step
    from logged
    group by run_id
),

logging_intervals as (
    -- logged steps per rank: the run's interval is its rank 0's (every rank logs the same steps)
    select
        run_id,
        greatest(1, round((max(step) - min(step)) / greatest(count(*) - 1, 1))) as step_interval
    from logged
    where rank = 0
    group by run_id
),

windowed as (
    select
        logged.*,
        cast(floor((logged.step - first_steps.first_step) / ({{ window_logs }} * logging_intervals.step_interval))
            as bigint) as win
    from logged
    inner join logging_intervals
        on logging_intervals.run_id = logged.run_id
    inner join first_steps
        on first_steps.run_id = logged.run_id
),

judged_windows as (
    select *
    from windowed
    where win >= {{ warmup_windows }}
),

rank_windows as (
    select
        model,
        hardware,
        run_id,
        win,
        rank,
        max(precision) as precision,
        max(host) as host,
        avg(work_ms) as work_ms,
        avg(step_time_ms) as step_ms,
        min(step) as first_step,
        max(step) as last_step,
        min(ts) as first_ts,
        max(ts) as last_ts
    from judged_windows
    group by model, hardware, run_id, win, rank
),

ordered as (
    select
        *,
        row_number() over (partition by run_id, win order by work_ms, rank) - 1 as pos,
        count(*) over (partition by run_id, win) as n_ranks
    from rank_windows
),

order_stats as (
    -- the median of the other n - 1 ranks sits at positions lo and hi (0-based) of their sorted list
    select
        run_id,
        win,
        n_ranks,
        cast(floor((n_ranks - 2) / 2.0) as bigint) as lo,
        cast(ceil((n_ranks - 2) / 2.0) as bigint) as hi,
        max(case when pos = cast(floor((n_ranks - 2) / 2.0) as bigint) then work_ms end) as v_lo,
        max(case when pos = cast(floor((n_ranks - 2) / 2.0) as bigint) + 1 then work_ms end) as v_lo_next,
        max(case when pos = cast(ceil((n_ranks - 2) / 2.0) as bigint) then work_ms end) as v_hi,
        max(case when pos = cast(ceil((n_ranks - 2) / 2.0) as bigint) + 1 then work_ms end) as v_hi_next
    from ordered
    where n_ranks >= {{ min_ranks }}
    group by run_id, win, n_ranks
),

compared as (
    -- the others' sorted list is this one without position pos: its element j is pos's list element
    -- j below pos, j + 1 from pos on
    select
        o.*,
        (case when s.lo < o.pos then s.v_lo else s.v_lo_next end
            + case when s.hi < o.pos then s.v_hi else s.v_hi_next end) / 2 as peer_ms
    from ordered as o
    inner join order_stats as s
        on s.run_id = o.run_id
        and s.win = o.win
),

judged as (
    select
        *,
        work_ms > (1 + {{ min_slowdown }}) * peer_ms and work_ms - peer_ms > {{ min_excess_ms }} as is_slow
    from compared
),

per_rank as (
    select
        model,
        hardware,
        run_id,
        rank,
        min(win) filter (where is_slow) as first_slow,
        max(win) filter (where is_slow) as last_slow
    from judged
    group by model, hardware, run_id, rank
),

persistent as (
    select
        j.model,
        j.hardware,
        j.run_id,
        j.rank,
        max(j.precision) as precision,
        max_by(j.host, j.work_ms) filter (where j.is_slow) as host,
        count(*) filter (where j.is_slow) as n_slow,
        count(*) as n_since,
        min(j.first_step) filter (where j.is_slow) as step_start,
        max(j.last_step) filter (where j.is_slow) as step_end,
        min(j.first_ts) filter (where j.is_slow) as start_at,
        max(j.last_ts) filter (where j.is_slow) as end_at,
        median(j.work_ms) filter (where j.is_slow) as work_ms,
        median(j.peer_ms) filter (where j.is_slow) as peer_ms,
        median(j.step_ms) filter (where j.is_slow) as step_ms,
        max(j.n_ranks) as n_ranks
    from judged as j
    inner join per_rank as p
        on p.run_id = j.run_id
        and p.rank = j.rank
    where j.win between p.first_slow and p.last_slow
    group by j.model, j.hardware, j.run_id, j.rank
    having count(*) filter (where j.is_slow) >= {{ min_windows }}
        and (count(*) filter (where j.is_slow) >= {{ min_share }} * count(*)
            or avg(j.work_ms) > (1 + {{ min_slowdown }}) * avg(j.peer_ms))
),

final as (
    select
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(precision as varchar) as precision,
        cast(run_id as varchar) as run_id,
        cast(null as varchar) as suite,
        cast('work_ms' as varchar) as metric,
        cast(step_start as bigint) as step_start,
        cast(step_end as bigint) as step_end,
        cast(start_at as timestamptz) as start_at,
        cast(end_at as timestamptz) as end_at,
        cast(work_ms as double) as observed,
        cast(peer_ms as double) as expected,
        cast(concat('median work per step of the other ', cast(n_ranks - 1 as varchar), ' ranks; the job waits ',
            cast(cast(round(100 * (work_ms - peer_ms) / nullif(step_ms, 0)) as bigint) as varchar),
            ' % of its step time on this rank (', cast(n_slow as varchar), ' of ', cast(n_since as varchar),
            ' windows slow)') as varchar) as baseline,
        cast(n_slow as bigint) as n_points,
        cast(work_ms >= (1 + {{ critical_slowdown }}) * peer_ms as boolean) as escalate,
        cast(host as varchar) as host,
        cast(rank as bigint) as rank
    from persistent
)

select * from final
