-- rule: serving_slo_breach
-- purpose: a deployed model (model × hardware × precision) whose live end-to-end latency p95 or p99
--   over a window of window_minutes breaks its SLO: the absolute SLO configured for it (latency_slos,
--   p95_ms / p99_ms: the same SLO its eval latency is held to), else max_ratio_eval times the model's
--   own eval latency at that percentile (latency_samples of mhw eval), else default_p95_ms /
--   default_p99_ms. The eval latency is stated as the reference in every alert.
-- grain: one row per model × hardware × precision × source × episode (consecutive judged windows in breach);
--   metric names the worse percentile (e2e_p95_ms or e2e_p99_ms) of the first window.
-- scope: fleet (recomputed for the model × hardware pairs whose serving_scrapes or serving_requests changed)
-- subject: model, hardware, precision, suite
-- sources: serving_scrapes, serving_requests, latency_samples, diagnose_pairs, latency_slos, sketch_bounds
-- params: window_minutes int >= 1; min_requests int >= 1; max_ratio_eval float > 1; default_p95_ms float > 0;
--   default_p99_ms float > 0; critical_ratio float > 1
-- audits: tests/pipelines/test_serving_cube.py (an injected slowdown of a real mhw serve fires it; its
--   healthy twin under the same load stays quiet)
--
-- suite names the source: 'scrape' (percentiles interpolated within the server's own histogram
-- buckets from per-window bucket deltas, as in sql/cubes/serving_health_periods.sql) or 'request_log'
-- (the log-bucket sketch of successful requests' finite e2e_ms, ≤ 1 % off: a NaN or inf in a log is a
-- broken value, not a slow request; the cube counts it, the rule does not). Eval percentiles come from the
-- same sketch (growth 1.02: buckets -1100..1400, corrected by exact comparison with sketch_bounds).

with

scrape_buckets as (
    select
        s.model,
        s.hardware,
        s.precision,
        s.scraped_at as ts,
        s.le,
        case
            when s.prev_scraped_at is null then case when s.created_at is not null then s.value else 0.0 end
            when s.prev_value is null then s.value
            when s.value < s.prev_value or coalesce(s.created_at > s.prev_scraped_at, false) then s.value
            else s.value - s.prev_value
        end as n
    from serving_scrapes as s
    inner join diagnose_pairs as p
        on p.model = s.model
        and p.hardware = s.hardware
    where s.metric = 'e2e_seconds_bucket'
),

scrape_windows as (
    select
        model,
        hardware,
        precision,
        cast(floor(date_diff('microsecond', cast('2000-01-01 00:00:00+00' as timestamptz), ts)
            / (60e6 * {{ window_minutes }})) as bigint) as window_id,
        le,
        sum(n) as n_cumulative,
        min(ts) as first_ts,
        max(ts) as last_ts
    from scrape_buckets
    group by model, hardware, precision,
        cast(floor(date_diff('microsecond', cast('2000-01-01 00:00:00+00' as timestamptz), ts)
            / (60e6 * {{ window_minutes }})) as bigint), le
),

scrape_ranked as (
    select
        *,
        max(n_cumulative) over (partition by model, hardware, precision, window_id) as n_total,
        coalesce(lag(le) over (partition by model, hardware, precision, window_id order by le), 0.0) as lo,
        coalesce(lag(n_cumulative) over (partition by model, hardware, precision, window_id order by le), 0.0)
            as n_below
    from scrape_windows
),

scrape_percentiles as (
    select
        model,
        hardware,
        precision,
        'scrape' as source,
        window_id,
        1e3 * min_by(case when le = cast('Infinity' as double) then lo
            else lo + (le - lo) * (0.95 * n_total - n_below) / nullif(n_cumulative - n_below, 0) end, le)
            filter (where n_cumulative >= 0.95 * n_total) as p95_ms,
        1e3 * min_by(case when le = cast('Infinity' as double) then lo
            else lo + (le - lo) * (0.99 * n_total - n_below) / nullif(n_cumulative - n_below, 0) end, le)
            filter (where n_cumulative >= 0.99 * n_total) as p99_ms,
        max(n_total) as n_requests,
        min(first_ts) as first_ts,
        max(last_ts) as last_ts
    from scrape_ranked
    where n_total > 0
    group by model, hardware, precision, window_id
),

bounds as (
    select bucket, lo, hi
    from sketch_bounds
    where lo is not null
),

timed as (
    select
        r.model,
        r.hardware,
        r.precision,
        'request_log' as source,
        cast(floor(date_diff('microsecond', cast('2000-01-01 00:00:00+00' as timestamptz), r.ts)
            / (60e6 * {{ window_minutes }})) as bigint) as window_id,
        r.ts,
        r.e2e_ms as x
    from serving_requests as r
    inner join diagnose_pairs as p
        on p.model = r.model
        and p.hardware = r.hardware
    where r.status_class = 'ok' and abs(r.e2e_ms) < cast('Infinity' as double)  -- NaN/inf: a broken value, not a slow request
    union all
    select
        l.model,
        l.hardware,
        l.precision,
        'eval' as source,
        cast(0 as bigint) as window_id,
        l.ts,
        l.latency_ms as x
    from latency_samples as l
    inner join diagnose_pairs as p
        on p.model = l.model
        and p.hardware = l.hardware
    where l.latency_ms is not null
),

classified as (
    select
        *,
        cast(greatest(least(floor(ln(
            case
                when abs(x) > 0 and abs(x) < cast('Infinity' as double) then abs(x)
                else 1.0
            end) / ln(1.02)), 1400), -1100) as integer) as guess
    from timed
),

bucketed as (
    select
        classified.*,
        case
            when isnan(classified.x) then 30000
            when classified.x = cast('Infinity' as double) then 20000
            when classified.x = cast('-Infinity' as double) then -20000
            when classified.x = 0 then -5000
            else (case when classified.x > 0 then 0 else -10000 end)
                + (case when classified.x > 0 then 1 else -1 end) * (
                    case
                        when abs(classified.x) < bounds.lo then classified.guess - 1
                        when abs(classified.x) >= bounds.hi then classified.guess + 1
                        else classified.guess
                    end)
        end as bucket
    from classified
    left join bounds
        on bounds.bucket = classified.guess
),

sketch as (
    select
        model,
        hardware,
        precision,
        source,
        window_id,
        bucket,
        count(*) as n,
        min(ts) as first_ts,
        max(ts) as last_ts
    from bucketed
    where bucket <> 30000  -- NaN is counted, never ranked
    group by model, hardware, precision, source, window_id, bucket
),

sketch_ranked as (
    select
        sketch.*,
        sketch_bounds.mid,
        sum(sketch.n) over (
            partition by sketch.model, sketch.hardware, sketch.precision, sketch.source, sketch.window_id
            order by sketch.bucket
            rows between unbounded preceding and current row) as n_cumulative,
        sum(sketch.n) over (
            partition by sketch.model, sketch.hardware, sketch.precision, sketch.source, sketch.window_id)
            as n_ranked
    from sketch
    inner join sketch_bounds
        on sketch_bounds.bucket = sketch.bucket
),

sketch_percentiles as (
    select
        model,
        hardware,
        precision,
        source,
        window_id,
        min(mid) filter (where n_cumulative >= 0.95 * n_ranked) as p95_ms,
        min(mid) filter (where n_cumulative >= 0.99 * n_ranked) as p99_ms,
        max(n_ranked) as n_requests,
        min(first_ts) as first_ts,
        max(last_ts) as last_ts
    from sketch_ranked
    group by model, hardware, precision, source, window_id
),

live as (
    select * from scrape_percentiles
    union all
    select * from sketch_percentiles
    where source = 'request_log'
),

eval_reference as (
    select model, hardware, precision, p95_ms, p99_ms
    from sketch_percentiles
    where source = 'eval'
),

series as (
    select model, hardware, precision, source, window_id, 'e2e_p95_ms' as metric, 'p95_ms' as slo_metric,
        p95_ms as value, n_requests, first_ts, last_ts
    from live
    where n_requests >= {{ min_requests }}
    union all
    select model, hardware, precision, source, window_id, 'e2e_p99_ms' as metric, 'p99_ms' as slo_metric,
        p99_ms as value, n_requests, first_ts, last_ts
    from live
    where n_requests >= {{ min_requests }}
),

slos as (
    select
        series.model,
        series.hardware,
        series.precision,
        series.slo_metric,
        min(latency_slos.slo_ms) as slo_ms
    from (select distinct model, hardware, precision, slo_metric from series) as series
    inner join latency_slos
        on (latency_slos.model = '*' or latency_slos.model = series.model)
        and (latency_slos.hardware = '*' or latency_slos.hardware = series.hardware)
        and (latency_slos.precision = '*' or latency_slos.precision = series.precision)
        and latency_slos.metric = series.slo_metric
    group by series.model, series.hardware, series.precision, series.slo_metric
),

compared as (
    select
        series.*,
        case when series.metric = 'e2e_p95_ms' then eval_reference.p95_ms else eval_reference.p99_ms end
            as eval_ms,
        coalesce(slos.slo_ms,
            {{ max_ratio_eval }} * case when series.metric = 'e2e_p95_ms' then eval_reference.p95_ms
                else eval_reference.p99_ms end,
            case when series.metric = 'e2e_p95_ms' then {{ default_p95_ms }} else {{ default_p99_ms }} end)
            as expected,
        case
            when slos.slo_ms is not null then concat('SLO for ', series.slo_metric)
            when eval_reference.p95_ms is not null then concat('max_ratio_eval x eval ', series.slo_metric)
            else concat('default_', series.slo_metric)
        end as baseline_desc
    from series
    left join slos
        on slos.model = series.model
        and slos.hardware = series.hardware
        and slos.precision is not distinct from series.precision
        and slos.slo_metric = series.slo_metric
    left join eval_reference
        on eval_reference.model = series.model
        and eval_reference.hardware = series.hardware
        and eval_reference.precision is not distinct from series.precision
),

scored as (
    select
        *,
        value / nullif(expected, 0) as ratio,
        coalesce(value > expected, false) as is_breach
    from compared
),

windows as (
    select
        model,
        hardware,
        precision,
        source,
        window_id,
        max(ratio) filter (where is_breach) as worst_ratio,
        count(*) filter (where is_breach) as n_breached,
        max_by(metric, ratio) filter (where is_breach) as metric,
        max_by(value, ratio) filter (where is_breach) as observed,
        max_by(expected, ratio) filter (where is_breach) as expected,
        max_by(baseline_desc, ratio) filter (where is_breach) as baseline_desc,
        max_by(eval_ms, ratio) filter (where is_breach) as eval_ms,
        min(first_ts) as first_ts,
        max(last_ts) as last_ts
    from scored
    group by model, hardware, precision, source, window_id
),

numbered as (
    select
        *,
        row_number() over (partition by model, hardware, precision, source order by window_id) as window_number
    from windows  -- judged windows only (min_requests): a quiet one neither breaks nor extends an episode
),

islands as (
    select
        *,
        window_number - row_number() over (partition by model, hardware, precision, source order by window_id) as island
    from numbered
    where n_breached > 0
),

episodes as (
    select
        model,
        hardware,
        precision,
        source,
        island,
        min_by(metric, window_id) as metric,
        min(first_ts) as start_at,
        max(last_ts) as end_at,
        min_by(observed, window_id) as observed,
        min_by(expected, window_id) as expected,
        min_by(baseline_desc, window_id) as baseline_desc,
        min_by(eval_ms, window_id) as eval_ms,
        sum(n_breached) as n_points,
        max(worst_ratio) as worst_ratio
    from islands
    group by model, hardware, precision, source, island
),

final as (
    select
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(precision as varchar) as precision,
        cast(null as varchar) as run_id,
        cast(source as varchar) as suite,
        cast(metric as varchar) as metric,
        cast(null as bigint) as step_start,
        cast(null as bigint) as step_end,
        cast(start_at as timestamptz) as start_at,
        cast(end_at as timestamptz) as end_at,
        cast(observed as double) as observed,
        cast(expected as double) as expected,
        cast(concat(baseline_desc, ' over ', cast({{ window_minutes }} as varchar), ' min; eval latency ',
            coalesce(concat(cast(cast(round(eval_ms * 1000) as bigint) as varchar), ' us at that percentile'),
                'not measured')) as varchar) as baseline,
        cast(n_points as bigint) as n_points,
        cast(worst_ratio >= {{ critical_ratio }} as boolean) as escalate
    from episodes
)

select * from final
