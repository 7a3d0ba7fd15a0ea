-- rule: error_rate_breach
-- purpose: a model served on one hardware type in one precision whose share of failed requests
--   (exceptions, NaN/inf outputs, timeouts) exceeds the allowed error rate.
-- grain: one row per model × hardware × precision × episode (consecutive measured days in breach).
-- scope: fleet (recomputed for the model × hardware pairs whose latency_samples changed)
-- subject: model, hardware, precision
-- sources: latency_samples, diagnose_pairs
-- params: max_error_rate float > 0 < 1; min_requests int >= 1; min_errors int >= 1; critical_error_rate float > 0 <= 1
-- audits: tests/pipelines/test_diagnose_rules.py (fires at 5 % failures, quiet at 0.1 %)
--
-- Per day: failed = requests with ok = false (ok null is not counted either way). A day breaches when
-- it has at least min_requests requests, at least min_errors failures (a couple of failures on a
-- quiet day are not a trend) and a failure share above max_error_rate.

with

samples as (
    select
        l.model,
        l.hardware,
        l.precision,
        l.date,
        l.ts,
        l.ok
    from latency_samples as l
    inner join diagnose_pairs as p
        on p.model = l.model
        and p.hardware = l.hardware
    where l.ok is not null
),

daily as (
    select
        model,
        hardware,
        precision,
        date,
        count(*) as n_requests,
        count(*) filter (where not ok) as n_failed,
        min(ts) filter (where not ok) as first_ts,
        max(ts) filter (where not ok) as last_ts
    from samples
    group by model, hardware, precision, date
),

scored as (
    select
        *,
        n_failed / cast(n_requests as double) as error_rate,
        n_requests >= {{ min_requests }}
            and n_failed >= {{ min_errors }}
            and n_failed > {{ max_error_rate }} * n_requests as is_breach
    from daily
),

numbered as (
    select
        *,
        row_number() over (partition by model, hardware, precision order by date) as day_number
    from scored
),

islands as (
    select
        *,
        day_number - row_number() over (partition by model, hardware, precision order by date) as island
    from numbered
    where is_breach
),

episodes as (
    select
        model,
        hardware,
        precision,
        island,
        min(first_ts) as start_at,
        max(last_ts) as end_at,
        min_by(error_rate, date) as observed,
        max(error_rate) as worst_rate,
        count(*) as n_points
    from islands
    group by model, hardware, precision, island
),

final as (
    select
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(precision as varchar) as precision,
        cast(null as varchar) as run_id,
        cast(null as varchar) as suite,
        cast('error_rate' as varchar) as metric,
        cast(null as bigint) as step_start,
        cast(null as bigint) as step_end,
        cast(start_at as timestamptz) as start_at,
        cast(end_at as timestamptz) as end_at,
        cast(observed as double) as observed,
        cast({{ max_error_rate }} as double) as expected,
        cast('largest acceptable share of failed requests' as varchar) as baseline,
        cast(n_points as bigint) as n_points,
        cast(worst_rate >= {{ critical_error_rate }} as boolean) as escalate
    from episodes
)

select * from final
