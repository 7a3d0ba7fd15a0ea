-- rule: throughput_regression
-- purpose: a model's training throughput on one hardware type falling below its trailing median:
--   a driver, firmware or library update, or nodes going bad on that hardware.
-- grain: one row per model × hardware × episode (consecutive days with runs that regressed);
--   precision names the worst series on the first day.
-- scope: fleet by model (recomputed for every model × hardware pair of a model with a changed pair: a
--   run with no history is compared with the same model on the other hardware types)
-- subject: model, hardware
-- sources: run_throughput, diagnose_pairs
-- params: window_days int >= 1; min_history_runs int >= 1; max_drop float > 0 < 1; min_run_steps int >= 1;
--   critical_drop float > 0 < 1; max_peer_drop float > 0 < 1; min_peer_hardware int >= 1
-- audits: tests/pipelines/test_diagnose_rules.py (fires when runs from one day on are 2x slower, quiet
--   on the steady twin)
--
-- A run's throughput is its median tokens/s (so a straggler or a data stall inside one run does not
-- move it), dated by the run's first step. Each run is compared with the median of the runs of the
-- same model × hardware × precision started in the previous window_days days (at least
-- min_history_runs of them: the history is counted in runs, so a sparse series still has one). A
-- series regresses on a day when the median drop of its runs started that day exceeds max_drop.
-- A run with no such history (a hardware type new to the fleet, or slow since the lake began) is
-- compared with its peers instead: normalized by the hardware's peak (MFU, which the job computes
-- from the device's peak FLOP/s), the same model and precision on other hardware types started within
-- window_days (at least min_peer_hardware of them) sets the MFU it should reach; it regresses when it
-- falls short by more than max_peer_drop (wider than max_drop: MFU differs somewhat across device
-- generations even on a healthy fleet).

with

per_run as (
    -- each run of the pairs' models, summarized once (sql/diagnostics/shared/run_throughput.sql)
    select
        r.model,
        r.hardware,
        r.run_id,
        r.precision,
        r.date,
        r.first_ts,
        r.last_ts,
        r.tps,
        r.run_mfu
    from run_throughput as r
    inner join diagnose_pairs as p
        on p.model = r.model
        and p.hardware = r.hardware
    where r.n_steps >= {{ min_run_steps }}
),

run_baselines as (
    select
        cur.model,
        cur.hardware,
        cur.precision,
        cur.run_id,
        median(prev.tps) as baseline_tps,
        count(*) as n_history
    from per_run as cur
    inner join per_run as prev
        on prev.model = cur.model
        and prev.hardware = cur.hardware
        and prev.precision is not distinct from cur.precision
        and date_diff('day', prev.date, cur.date) between 1 and {{ window_days }}
    group by cur.model, cur.hardware, cur.precision, cur.run_id
),

history_runs as (
    select
        per_run.*,
        run_baselines.baseline_tps,
        'history' as basis
    from per_run
    inner join run_baselines
        on run_baselines.run_id = per_run.run_id
        and run_baselines.model = per_run.model
        and run_baselines.hardware = per_run.hardware
    where run_baselines.n_history >= {{ min_history_runs }}
),

peer_baselines as (
    -- runs with no history of their own on this hardware: the MFU of the same model and precision on
    -- the other hardware types, started within window_days of it, is what it should reach
    select
        cur.run_id,
        cur.hardware,
        median(prev.run_mfu) as peer_mfu,
        count(distinct prev.hardware) as n_peer_hardware
    from per_run as cur
    inner join per_run as prev
        on prev.model = cur.model
        and prev.hardware <> cur.hardware
        and prev.precision is not distinct from cur.precision
        and abs(date_diff('day', prev.date, cur.date)) <= {{ window_days }}
    where cur.run_mfu > 0
        and prev.run_mfu > 0
        and cur.run_id not in (select run_id from history_runs)
    group by cur.run_id, cur.hardware
),

peer_runs as (
    select
        per_run.*,
        per_run.tps * peer_baselines.peer_mfu / per_run.run_mfu as baseline_tps,
        'peers' as basis
    from per_run
    inner join peer_baselines
        on peer_baselines.run_id = per_run.run_id
        and peer_baselines.hardware = per_run.hardware
    where peer_baselines.n_peer_hardware >= {{ min_peer_hardware }}
),

compared_runs as (
    select
        *,
        1 - tps / nullif(baseline_tps, 0) as drop_share,
        case when basis = 'peers' then {{ max_peer_drop }} else {{ max_drop }} end as allowed_drop
    from (
        select * from history_runs
        union all
        select * from peer_runs
    ) as judged
),

scored as (
    select
        model,
        hardware,
        precision,
        date,
        median(tps) as observed,
        median(baseline_tps) as expected,
        median(drop_share) as drop_share,
        count(*) as n_runs,
        min(first_ts) as first_ts,
        max(last_ts) as last_ts,
        max(basis) as basis,
        coalesce(median(drop_share) > max(allowed_drop), false) as is_regressed
    from compared_runs
    group by model, hardware, precision, date, basis
),

subject_days as (
    select
        model,
        hardware,
        date,
        max(case when is_regressed then 1 else 0 end) as is_flagged,
        sum(n_runs) filter (where is_regressed) as n_runs,
        max(drop_share) filter (where is_regressed) as worst_drop,
        max_by(precision, drop_share) filter (where is_regressed) as precision,
        max_by(observed, drop_share) filter (where is_regressed) as observed,
        max_by(expected, drop_share) filter (where is_regressed) as expected,
        max_by(basis, drop_share) filter (where is_regressed) as basis,
        min(first_ts) filter (where is_regressed) as first_ts,
        max(last_ts) filter (where is_regressed) as last_ts
    from scored
    group by model, hardware, date
),

numbered as (
    select
        *,
        row_number() over (partition by model, hardware order by date) as day_number
    from subject_days
),

islands as (
    select
        *,
        day_number - row_number() over (partition by model, hardware order by date) as island
    from numbered
    where is_flagged = 1
),

episodes as (
    select
        model,
        hardware,
        island,
        min_by(precision, date) as precision,
        min(first_ts) as start_at,
        max(last_ts) as end_at,
        min_by(observed, date) as observed,
        min_by(expected, date) as expected,
        min_by(basis, date) as basis,
        sum(n_runs) as n_points,
        max(worst_drop) as worst_drop
    from islands
    group by model, hardware, island
),

final as (
    select
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(precision as varchar) as precision,
        cast(null as varchar) as run_id,
        cast(null as varchar) as suite,
        cast('tokens_per_s' as varchar) as metric,
        cast(null as bigint) as step_start,
        cast(null as bigint) as step_end,
        cast(start_at as timestamptz) as start_at,
        cast(end_at as timestamptz) as end_at,
        cast(observed as double) as observed,
        cast(expected as double) as expected,
        cast(case
            when basis = 'peers' then concat('its tokens/s at the median MFU of the same model on other hardware within ',
                cast({{ window_days }} as varchar), ' days (no history of its own)')
            else concat('median tokens/s of the runs of the previous ', cast({{ window_days }} as varchar), ' days')
        end as varchar) as baseline,
        cast(n_points as bigint) as n_points,
        cast(worst_drop >= {{ critical_drop }} as boolean) as escalate
    from episodes
)

select * from final
