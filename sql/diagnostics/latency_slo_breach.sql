-- rule: latency_slo_breach
-- purpose: a model served on one hardware type in one precision whose daily p95 or p99 latency
--   breaks its SLO: the absolute SLO configured for it (latency_slos), else max_ratio_p95 (p95) or
--   max_ratio_p99 (p99) times its own trailing median.
-- grain: one row per model × hardware × precision × episode (consecutive measured days in breach);
--   metric names the worse percentile on the first day.
-- scope: fleet (recomputed for the model × hardware pairs whose latency_samples changed)
-- subject: model, hardware, precision
-- sources: latency_samples, diagnose_pairs, sketch_bounds, latency_slos
-- params: window_days int >= 1; min_history_days int >= 1; max_ratio_p95 float > 1; max_ratio_p99 float > 1;
--   min_requests int >= 1; critical_ratio float > 1
-- audits: tests/pipelines/test_diagnose_rules.py (fires when a tenth of requests get 3x slower, and
--   on an absolute SLO; quiet on the steady twin); the percentiles equal pipelines/sketch.quantile
--
-- Percentiles come from the mergeable log-bucket sketch of pipelines/sketch.py (growth 1.02, the
-- same bucketing as sql/cubes/latency_base.sql: a floor(ln(x) / ln(1.02)) guess corrected by exact
-- comparison with lo/hi from sketch_bounds), never from approximate quantile functions: p is the
-- midpoint of the first bucket whose cumulative count reaches p × the ranked requests (≤ 1 % off).
-- Constants: buckets -1100..1400, zero -5000, negatives -10000 - b, -inf -20000, +inf 20000, NaN 30000.
-- Without an absolute SLO each percentile has its own ratio, set at the same margin over its own
-- day-to-day noise: a day's p99 rests on its few slowest requests (the 2-3 slowest of 256), its p95 on
-- a dozen, so on steady series the p99's day-to-day spread is about twice the p95's (bench/RESULTS.md,
-- health diagnostics); one ratio for both would leave p95 blind to what p99 only barely shows.

with

samples as (
    select
        l.model,
        l.hardware,
        l.precision,
        l.date,
        l.ts,
        l.latency_ms
    from latency_samples as l
    inner join diagnose_pairs as p
        on p.model = l.model
        and p.hardware = l.hardware
    where l.latency_ms is not null
),

bounds as (
    select bucket, lo, hi
    from sketch_bounds
    where lo is not null
),

classified as (
    select
        *,
        cast(greatest(least(floor(ln(
            case
                when abs(latency_ms) > 0 and abs(latency_ms) < cast('Infinity' as double) then abs(latency_ms)
                else 1.0
            end) / ln(1.02)), 1400), -1100) as integer) as latency_guess
    from samples
),

bucketed as (
    select
        classified.*,
        case
            when isnan(classified.latency_ms) then 30000
            when classified.latency_ms = cast('Infinity' as double) then 20000
            when classified.latency_ms = cast('-Infinity' as double) then -20000
            when classified.latency_ms = 0 then -5000
            else (case when classified.latency_ms > 0 then 0 else -10000 end)
                + (case when classified.latency_ms > 0 then 1 else -1 end) * (
                    case
                        when abs(classified.latency_ms) < bounds.lo then classified.latency_guess - 1
                        when abs(classified.latency_ms) >= bounds.hi then classified.latency_guess + 1
                        else classified.latency_guess
                    end)
        end as bucket
    from classified
    left join bounds
        on bounds.bucket = classified.latency_guess
),

daily_buckets as (
    select
        model,
        hardware,
        precision,
        date,
        bucket,
        count(*) as n,
        min(ts) as first_ts,
        max(ts) as last_ts
    from bucketed
    group by model, hardware, precision, date, bucket
),

ranked as (
    select
        daily_buckets.*,
        sketch_bounds.mid,
        sum(daily_buckets.n) over (
            partition by daily_buckets.model, daily_buckets.hardware, daily_buckets.precision, daily_buckets.date
            order by daily_buckets.bucket
            rows between unbounded preceding and current row) as n_cumulative,
        sum(daily_buckets.n) over (
            partition by daily_buckets.model, daily_buckets.hardware, daily_buckets.precision,
                daily_buckets.date) as n_ranked
    from daily_buckets
    inner join sketch_bounds
        on sketch_bounds.bucket = daily_buckets.bucket
    where daily_buckets.bucket <> 30000  -- NaN is counted, never ranked
),

daily as (
    select
        model,
        hardware,
        precision,
        date,
        min(mid) filter (where n_cumulative >= 0.95 * n_ranked) as p95_ms,
        min(mid) filter (where n_cumulative >= 0.99 * n_ranked) as p99_ms,
        max(n_ranked) as n_requests,
        min(first_ts) as first_ts,
        max(last_ts) as last_ts
    from ranked
    group by model, hardware, precision, date
    having max(n_ranked) >= {{ min_requests }}
),

series as (
    select model, hardware, precision, date, 'p95_ms' as metric, p95_ms as value, first_ts, last_ts
    from daily
    union all
    select model, hardware, precision, date, 'p99_ms' as metric, p99_ms as value, first_ts, last_ts
    from daily
),

trailing_baseline as (
    select
        cur.model,
        cur.hardware,
        cur.precision,
        cur.metric,
        cur.date,
        median(prev.value) as baseline_value,
        count(*) as n_history
    from series as cur
    inner join series as prev
        on prev.model = cur.model
        and prev.hardware = cur.hardware
        and prev.precision is not distinct from cur.precision
        and prev.metric = cur.metric
        and date_diff('day', prev.date, cur.date) between 1 and {{ window_days }}
    group by cur.model, cur.hardware, cur.precision, cur.metric, cur.date
),

slos as (
    select
        series.model,
        series.hardware,
        series.precision,
        series.metric,
        series.date,
        min(latency_slos.slo_ms) as slo_ms
    from series
    inner join latency_slos
        on (latency_slos.model = '*' or latency_slos.model = series.model)
        and (latency_slos.hardware = '*' or latency_slos.hardware = series.hardware)
        and (latency_slos.precision = '*' or latency_slos.precision = series.precision)
        and latency_slos.metric = series.metric
    group by series.model, series.hardware, series.precision, series.metric, series.date
),

compared as (
    select
        series.*,
        coalesce(slos.slo_ms,
            case when trailing_baseline.n_history >= {{ min_history_days }} then
                (case when series.metric = 'p95_ms' then {{ max_ratio_p95 }} else {{ max_ratio_p99 }} end)
                * trailing_baseline.baseline_value end)
            as expected,
        case
            when slos.slo_ms is not null then concat('SLO for ', series.metric)
            else concat(case when series.metric = 'p95_ms' then 'max_ratio_p95' else 'max_ratio_p99' end,
                ' x median of the previous ', cast({{ window_days }} as varchar), ' days')
        end as baseline_desc,
        coalesce(slos.slo_ms, trailing_baseline.baseline_value) as reference_ms
    from series
    left join trailing_baseline
        on trailing_baseline.model = series.model
        and trailing_baseline.hardware = series.hardware
        and trailing_baseline.precision is not distinct from series.precision
        and trailing_baseline.metric = series.metric
        and trailing_baseline.date = series.date
    left join slos
        on slos.model = series.model
        and slos.hardware = series.hardware
        and slos.precision is not distinct from series.precision
        and slos.metric = series.metric
        and slos.date = series.date
),

scored as (
    select
        *,
        value / nullif(expected, 0) as ratio,
        value / nullif(reference_ms, 0) as ratio_to_reference,
        coalesce(value > expected, false) as is_breach
    from compared
),

subject_days as (
    select
        model,
        hardware,
        precision,
        date,
        max(case when is_breach then 1 else 0 end) as is_flagged,
        count(*) filter (where is_breach) as n_breached,
        max(ratio_to_reference) filter (where is_breach) as worst_ratio,
        max_by(metric, ratio) filter (where is_breach) as metric,
        max_by(value, ratio) filter (where is_breach) as observed,
        max_by(expected, ratio) filter (where is_breach) as expected,
        max_by(baseline_desc, ratio) filter (where is_breach) as baseline_desc,
        min(first_ts) as first_ts,
        max(last_ts) as last_ts
    from scored
    group by model, hardware, precision, date
),

numbered as (
    select
        *,
        row_number() over (partition by model, hardware, precision order by date) as day_number
    from subject_days
),

islands as (
    select
        *,
        day_number - row_number() over (partition by model, hardware, precision order by date) as island
    from numbered
    where is_flagged = 1
),

episodes as (
    select
        model,
        hardware,
        precision,
        island,
        min_by(metric, date) as metric,
        min(first_ts) as start_at,
        max(last_ts) as end_at,
        min_by(observed, date) as observed,
        min_by(expected, date) as expected,
        min_by(baseline_desc, date) as baseline_desc,
        sum(n_breached) as n_points,
        max(worst_ratio) as worst_ratio
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
        cast(metric as varchar) as metric,
        cast(null as bigint) as step_start,
        cast(null as bigint) as step_end,
        cast(start_at as timestamptz) as start_at,
        cast(end_at as timestamptz) as end_at,
        cast(observed as double) as observed,
        cast(expected as double) as expected,
        cast(baseline_desc as varchar) as baseline,
        cast(n_points as bigint) as n_points,
        cast(worst_ratio >= {{ critical_ratio }} as boolean) as escalate
    from episodes
)

select * from final
