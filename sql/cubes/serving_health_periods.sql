-- model: serving_health_periods
-- purpose: online serving health of deployed models: QPS, errors by status class, e2e / TTFT / ITL
--   p50/p95/p99, output tokens/s, queue depth and cache saturation, per model × hardware ×
--   precision × hour and × day, from the servers' own /metrics (source 'scrape') and from
--   per-request logs (source 'request_log'), side by side and never added together.
-- grain: one row per model × hardware × precision × period ('hour' | 'day') × period_start × source
-- time column: period_start (UTC start of the hour or day; date is its UTC date)
-- partitions: date (rebuilt for the dates whose base partitions changed)
-- sources: serving_scrape_base, serving_request_base, sketch_bounds
-- serve: serving_health
-- audits: tests/pipelines/test_serving_cube.py (a real mhw serve under load: counts equal the load
--   generator's, percentiles within the stated bucket bounds / 1 %)
--
-- Scraped percentiles are interpolated within the server's own histogram buckets, as Prometheus'
-- histogram_quantile does: the bucket (lo, hi] whose cumulative count first reaches p × total,
-- linearly between its bounds (lo of the first bucket is 0; in the +Inf bucket the value is lo).
-- *_lo_ms and *_hi_ms state that bucket: the true percentile lies in (lo, hi]. Replicas of one model
-- (several targets) are summed bucket by bucket, so they must share bucket bounds (replicas of one
-- server do). Per-request-log percentiles come from the log-bucket sketch (growth 1.02): the
-- geometric midpoint of the first bucket whose cumulative count reaches p × total, ≤ 1 % off; its
-- bucket's bounds are stated the same way.
-- QPS = requests / observed_s. Scrapes: observed_s is the seconds the period's scrape intervals
-- cover (the largest over the model's targets, whose requests are summed). Logs: from the period's
-- first arrival to its last completion. Queue depth: mean over scrapes, summed over targets; cache
-- usage: mean and max over scrapes and targets (0..1).

with

scrape_base as (
    select *
    from serving_scrape_base
),

scrape_periods as (
    select scrape_base.*, 'hour' as period, hour as period_start
    from scrape_base
    union all
    select scrape_base.*, 'day' as period, cast(date as timestamptz) as period_start
    from scrape_base
),

per_target as (
    select
        model,
        hardware,
        precision,
        date,
        period,
        period_start,
        target,
        sum(observed_s) filter (where metric = 'up') as observed_s,
        sum(n_scrapes) filter (where metric = 'up') as n_scrapes,
        sum(n_failed_scrapes) filter (where metric = 'up') as n_failed_scrapes,
        sum(n_restarts) filter (where metric = 'up') as n_restarts,
        sum(delta) filter (where metric = 'requests') as n_requests,
        sum(delta) filter (where metric = 'requests' and status_class = 'ok') as n_ok,
        sum(delta) filter (where metric = 'requests' and status_class = 'client_error') as n_client_error,
        sum(delta) filter (where metric = 'requests' and status_class = 'server_error') as n_server_error,
        sum(delta) filter (where metric = 'requests'
            and (status_class is null or status_class not in ('ok', 'client_error', 'server_error'))) as n_other_error,
        sum(delta) filter (where metric = 'prompt_tokens') as prompt_tokens,
        sum(delta) filter (where metric = 'output_tokens') as output_tokens,
        sum(delta) filter (where metric = 'e2e_seconds_sum') as e2e_seconds_sum,
        sum(delta) filter (where metric = 'e2e_seconds_count') as e2e_seconds_count,
        sum(gauge_sum) filter (where metric = 'queue_depth')
            / nullif(sum(gauge_n) filter (where metric = 'queue_depth'), 0) as queue_depth_mean,
        max(gauge_max) filter (where metric = 'queue_depth') as queue_depth_max,
        sum(gauge_sum) filter (where metric = 'running')
            / nullif(sum(gauge_n) filter (where metric = 'running'), 0) as running_mean,
        sum(gauge_sum) filter (where metric = 'cache_usage')
            / nullif(sum(gauge_n) filter (where metric = 'cache_usage'), 0) as cache_usage_mean,
        max(gauge_max) filter (where metric = 'cache_usage') as cache_usage_max,
        min(first_ts) as first_ts,
        max(last_ts) as last_ts
    from scrape_periods
    group by model, hardware, precision, date, period, period_start, target
),

scrape_cells as (
    select
        model,
        hardware,
        precision,
        date,
        period,
        period_start,
        'scrape' as source,
        count(*) as n_targets,
        max(observed_s) as observed_s,
        sum(n_scrapes) as n_scrapes,
        sum(n_failed_scrapes) as n_failed_scrapes,
        sum(n_restarts) as n_restarts,
        sum(n_requests) as n_requests,
        sum(n_ok) as n_ok,
        sum(n_client_error) as n_client_error,
        sum(n_server_error) as n_server_error,
        sum(n_other_error) as n_other_error,
        sum(prompt_tokens) as prompt_tokens,
        sum(output_tokens) as output_tokens,
        1e3 * sum(e2e_seconds_sum) / nullif(coalesce(sum(e2e_seconds_count), sum(n_requests)), 0) as e2e_mean_ms,
        sum(queue_depth_mean) as queue_depth_mean,
        max(queue_depth_max) as queue_depth_max,
        sum(running_mean) as running_mean,
        avg(cache_usage_mean) as cache_usage_mean,
        max(cache_usage_max) as cache_usage_max,
        min(first_ts) as first_ts,
        max(last_ts) as last_ts
    from per_target
    group by model, hardware, precision, date, period, period_start
),

scrape_buckets as (
    select
        model,
        hardware,
        precision,
        period,
        period_start,
        case metric
            when 'e2e_seconds_bucket' then 'e2e'
            when 'ttft_seconds_bucket' then 'ttft'
            else 'itl'
        end as quantity,
        le,
        sum(delta) as n_cumulative
    from scrape_periods
    where metric in ('e2e_seconds_bucket', 'ttft_seconds_bucket', 'itl_seconds_bucket')
    group by model, hardware, precision, period, period_start, metric, le
),

scrape_ranked as (
    select
        scrape_buckets.*,
        max(n_cumulative) over (
            partition by model, hardware, precision, period, period_start, quantity) as n_total,
        coalesce(lag(le) over (
            partition by model, hardware, precision, period, period_start, quantity
            order by le), 0.0) as lo,
        coalesce(lag(n_cumulative) over (
            partition by model, hardware, precision, period, period_start, quantity
            order by le), 0.0) as n_below
    from scrape_buckets
),

scrape_interpolated as (
    select
        *,
        case when le = cast('Infinity' as double) then lo
            else lo + (le - lo) * (0.50 * n_total - n_below) / nullif(n_cumulative - n_below, 0) end as v50,
        case when le = cast('Infinity' as double) then lo
            else lo + (le - lo) * (0.95 * n_total - n_below) / nullif(n_cumulative - n_below, 0) end as v95,
        case when le = cast('Infinity' as double) then lo
            else lo + (le - lo) * (0.99 * n_total - n_below) / nullif(n_cumulative - n_below, 0) end as v99
    from scrape_ranked
    where n_total > 0
),

scrape_quantiles as (
    select
        model,
        hardware,
        precision,
        period,
        period_start,
        'scrape' as source,
        quantity,
        1e3 * min_by(v50, le) filter (where n_cumulative >= 0.50 * n_total) as p50,
        1e3 * min_by(lo, le) filter (where n_cumulative >= 0.50 * n_total) as p50_lo,
        1e3 * min(le) filter (where n_cumulative >= 0.50 * n_total) as p50_hi,
        1e3 * min_by(v95, le) filter (where n_cumulative >= 0.95 * n_total) as p95,
        1e3 * min_by(lo, le) filter (where n_cumulative >= 0.95 * n_total) as p95_lo,
        1e3 * min(le) filter (where n_cumulative >= 0.95 * n_total) as p95_hi,
        1e3 * min_by(v99, le) filter (where n_cumulative >= 0.99 * n_total) as p99,
        1e3 * min_by(lo, le) filter (where n_cumulative >= 0.99 * n_total) as p99_lo,
        1e3 * min(le) filter (where n_cumulative >= 0.99 * n_total) as p99_hi
    from scrape_interpolated
    group by model, hardware, precision, period, period_start, quantity
),

log_base as (
    select *
    from serving_request_base
),

log_periods as (
    select log_base.*, 'hour' as period, hour as period_start
    from log_base
    union all
    select log_base.*, 'day' as period, cast(date as timestamptz) as period_start
    from log_base
),

log_cells as (
    select
        model,
        hardware,
        precision,
        date,
        period,
        period_start,
        'request_log' as source,
        cast(null as bigint) as n_targets,
        max(end_s) - min(start_s) as observed_s,
        cast(null as bigint) as n_scrapes,
        cast(null as bigint) as n_failed_scrapes,
        cast(null as bigint) as n_restarts,
        sum(n) as n_requests,
        sum(n_ok) as n_ok,
        sum(n_client_error) as n_client_error,
        sum(n_server_error) as n_server_error,
        sum(n_other_error) as n_other_error,
        sum(prompt_tokens) as prompt_tokens,
        sum(output_tokens) as output_tokens,
        sum(e2e_ms_sum) / nullif(sum(n_ok), 0) as e2e_mean_ms,
        cast(null as double) as queue_depth_mean,
        cast(null as double) as queue_depth_max,
        cast(null as double) as running_mean,
        cast(null as double) as cache_usage_mean,
        cast(null as double) as cache_usage_max,
        min(first_ts) as first_ts,
        max(last_ts) as last_ts
    from log_periods
    where metric = 'requests'
    group by model, hardware, precision, date, period, period_start
),

log_buckets as (
    select
        log_periods.model,
        log_periods.hardware,
        log_periods.precision,
        log_periods.period,
        log_periods.period_start,
        case log_periods.metric when 'e2e_ms' then 'e2e' when 'ttft_ms' then 'ttft' else 'itl' end as quantity,
        log_periods.bucket,
        sum(log_periods.n) as n
    from log_periods
    where log_periods.metric <> 'requests'
        and log_periods.bucket <> 30000  -- NaN is counted, never ranked
    group by log_periods.model, log_periods.hardware, log_periods.precision, log_periods.period,
        log_periods.period_start, log_periods.metric, log_periods.bucket
),

log_ranked as (
    select
        log_buckets.*,
        sketch_bounds.mid,
        sketch_bounds.lo,
        sketch_bounds.hi,
        sum(log_buckets.n) over (
            partition by log_buckets.model, log_buckets.hardware, log_buckets.precision, log_buckets.period,
                log_buckets.period_start, log_buckets.quantity
            order by log_buckets.bucket
            rows between unbounded preceding and current row) as n_cumulative,
        sum(log_buckets.n) over (
            partition by log_buckets.model, log_buckets.hardware, log_buckets.precision, log_buckets.period,
                log_buckets.period_start, log_buckets.quantity) as n_ranked
    from log_buckets
    inner join sketch_bounds
        on sketch_bounds.bucket = log_buckets.bucket
),

log_quantiles as (
    select
        model,
        hardware,
        precision,
        period,
        period_start,
        'request_log' as source,
        quantity,
        min(mid) filter (where n_cumulative >= 0.50 * n_ranked) as p50,
        min_by(lo, bucket) filter (where n_cumulative >= 0.50 * n_ranked) as p50_lo,
        min_by(hi, bucket) filter (where n_cumulative >= 0.50 * n_ranked) as p50_hi,
        min(mid) filter (where n_cumulative >= 0.95 * n_ranked) as p95,
        min_by(lo, bucket) filter (where n_cumulative >= 0.95 * n_ranked) as p95_lo,
        min_by(hi, bucket) filter (where n_cumulative >= 0.95 * n_ranked) as p95_hi,
        min(mid) filter (where n_cumulative >= 0.99 * n_ranked) as p99,
        min_by(lo, bucket) filter (where n_cumulative >= 0.99 * n_ranked) as p99_lo,
        min_by(hi, bucket) filter (where n_cumulative >= 0.99 * n_ranked) as p99_hi
    from log_ranked
    group by model, hardware, precision, period, period_start, quantity
),

quantiles as (
    select * from scrape_quantiles
    union all
    select * from log_quantiles
),

pivoted as (
    select
        model,
        hardware,
        precision,
        period,
        period_start,
        source,
        max(case when quantity = 'e2e' then p50 end) as e2e_p50_ms,
        max(case when quantity = 'e2e' then p50_lo end) as e2e_p50_lo_ms,
        max(case when quantity = 'e2e' then p50_hi end) as e2e_p50_hi_ms,
        max(case when quantity = 'e2e' then p95 end) as e2e_p95_ms,
        max(case when quantity = 'e2e' then p95_lo end) as e2e_p95_lo_ms,
        max(case when quantity = 'e2e' then p95_hi end) as e2e_p95_hi_ms,
        max(case when quantity = 'e2e' then p99 end) as e2e_p99_ms,
        max(case when quantity = 'e2e' then p99_lo end) as e2e_p99_lo_ms,
        max(case when quantity = 'e2e' then p99_hi end) as e2e_p99_hi_ms,
        max(case when quantity = 'ttft' then p50 end) as ttft_p50_ms,
        max(case when quantity = 'ttft' then p50_lo end) as ttft_p50_lo_ms,
        max(case when quantity = 'ttft' then p50_hi end) as ttft_p50_hi_ms,
        max(case when quantity = 'ttft' then p95 end) as ttft_p95_ms,
        max(case when quantity = 'ttft' then p95_lo end) as ttft_p95_lo_ms,
        max(case when quantity = 'ttft' then p95_hi end) as ttft_p95_hi_ms,
        max(case when quantity = 'ttft' then p99 end) as ttft_p99_ms,
        max(case when quantity = 'ttft' then p99_lo end) as ttft_p99_lo_ms,
        max(case when quantity = 'ttft' then p99_hi end) as ttft_p99_hi_ms,
        max(case when quantity = 'itl' then p50 end) as itl_p50_ms,
        max(case when quantity = 'itl' then p50_lo end) as itl_p50_lo_ms,
        max(case when quantity = 'itl' then p50_hi end) as itl_p50_hi_ms,
        max(case when quantity = 'itl' then p95 end) as itl_p95_ms,
        max(case when quantity = 'itl' then p95_lo end) as itl_p95_lo_ms,
        max(case when quantity = 'itl' then p95_hi end) as itl_p95_hi_ms,
        max(case when quantity = 'itl' then p99 end) as itl_p99_ms,
        max(case when quantity = 'itl' then p99_lo end) as itl_p99_lo_ms,
        max(case when quantity = 'itl' then p99_hi end) as itl_p99_hi_ms
    from quantiles
    group by model, hardware, precision, period, period_start, source
),

cells as (
    select * from scrape_cells
    union all
    select * from log_cells
),

joined as (
    select
        cells.*,
        pivoted.e2e_p50_ms, pivoted.e2e_p50_lo_ms, pivoted.e2e_p50_hi_ms,
        pivoted.e2e_p95_ms, pivoted.e2e_p95_lo_ms, pivoted.e2e_p95_hi_ms,
        pivoted.e2e_p99_ms, pivoted.e2e_p99_lo_ms, pivoted.e2e_p99_hi_ms,
        pivoted.ttft_p50_ms, pivoted.ttft_p50_lo_ms, pivoted.ttft_p50_hi_ms,
        pivoted.ttft_p95_ms, pivoted.ttft_p95_lo_ms, pivoted.ttft_p95_hi_ms,
        pivoted.ttft_p99_ms, pivoted.ttft_p99_lo_ms, pivoted.ttft_p99_hi_ms,
        pivoted.itl_p50_ms, pivoted.itl_p50_lo_ms, pivoted.itl_p50_hi_ms,
        pivoted.itl_p95_ms, pivoted.itl_p95_lo_ms, pivoted.itl_p95_hi_ms,
        pivoted.itl_p99_ms, pivoted.itl_p99_lo_ms, pivoted.itl_p99_hi_ms
    from cells
    left join pivoted
        on pivoted.model = cells.model
        and pivoted.hardware = cells.hardware
        and pivoted.precision is not distinct from cells.precision
        and pivoted.period = cells.period
        and pivoted.period_start = cells.period_start
        and pivoted.source = cells.source
),

final as (
    select
        cast(model as varchar) as model,                        -- model slug
        cast(hardware as varchar) as hardware,                  -- hardware fingerprint
        cast(precision as varchar) as precision,                -- precision served in
        cast(date as date) as date,                             -- UTC date of the period
        cast(period as varchar) as period,                      -- hour | day
        cast(period_start as timestamptz) as period_start,      -- UTC start of the hour or day
        cast(source as varchar) as source,                      -- scrape | request_log
        cast(n_targets as bigint) as n_targets,                 -- scrape: /metrics targets serving the model
        cast(observed_s as double) as observed_s,               -- seconds the requests are counted over
        cast(n_scrapes as bigint) as n_scrapes,                 -- scrape: successful scrapes
        cast(n_failed_scrapes as bigint) as n_failed_scrapes,   -- scrape: failed scrapes (their counts are in the next)
        cast(n_restarts as bigint) as n_restarts,               -- scrape: server restarts seen
        cast(round(n_requests) as bigint) as n_requests,        -- requests finished
        -- succeeded (0, not null, when the server counts requests)
        cast(round(coalesce(n_ok, case when n_requests is not null then 0 end)) as bigint) as n_ok,
        -- 4xx, validation errors (0, not null, when the server counts requests)
        cast(round(coalesce(n_client_error, case when n_requests is not null then 0 end)) as bigint) as n_client_error,
        -- 5xx (0, not null, when the server counts requests)
        cast(round(coalesce(n_server_error, case when n_requests is not null then 0 end)) as bigint) as n_server_error,
        -- aborts, timeouts, other failures (0, not null, when the server counts requests)
        cast(round(coalesce(n_other_error, case when n_requests is not null then 0 end)) as bigint) as n_other_error,
        cast((n_requests - coalesce(n_ok, 0)) / nullif(n_requests, 0) as double) as error_rate, -- failed share
        cast(n_requests / nullif(observed_s, 0) as double) as qps, -- requests per second
        cast(round(prompt_tokens) as bigint) as prompt_tokens,  -- prompt tokens
        cast(round(output_tokens) as bigint) as output_tokens,  -- generated tokens
        cast(output_tokens / nullif(observed_s, 0) as double) as output_tokens_per_s, -- generated tokens per second
        cast(e2e_mean_ms as double) as e2e_mean_ms,             -- mean e2e latency, ms
        cast(e2e_p50_ms as double) as e2e_p50_ms,               -- e2e latency p50, ms
        cast(e2e_p50_lo_ms as double) as e2e_p50_lo_ms,         -- ... its bucket's lower bound (exclusive for scrapes)
        cast(e2e_p50_hi_ms as double) as e2e_p50_hi_ms,         -- ... its bucket's upper bound
        cast(e2e_p95_ms as double) as e2e_p95_ms,               -- e2e latency p95, ms
        cast(e2e_p95_lo_ms as double) as e2e_p95_lo_ms,
        cast(e2e_p95_hi_ms as double) as e2e_p95_hi_ms,
        cast(e2e_p99_ms as double) as e2e_p99_ms,               -- e2e latency p99, ms
        cast(e2e_p99_lo_ms as double) as e2e_p99_lo_ms,
        cast(e2e_p99_hi_ms as double) as e2e_p99_hi_ms,
        cast(ttft_p50_ms as double) as ttft_p50_ms,             -- time to first token p50, ms
        cast(ttft_p50_lo_ms as double) as ttft_p50_lo_ms,
        cast(ttft_p50_hi_ms as double) as ttft_p50_hi_ms,
        cast(ttft_p95_ms as double) as ttft_p95_ms,             -- time to first token p95, ms
        cast(ttft_p95_lo_ms as double) as ttft_p95_lo_ms,
        cast(ttft_p95_hi_ms as double) as ttft_p95_hi_ms,
        cast(ttft_p99_ms as double) as ttft_p99_ms,             -- time to first token p99, ms
        cast(ttft_p99_lo_ms as double) as ttft_p99_lo_ms,
        cast(ttft_p99_hi_ms as double) as ttft_p99_hi_ms,
        cast(itl_p50_ms as double) as itl_p50_ms,               -- inter-token latency p50, ms
        cast(itl_p50_lo_ms as double) as itl_p50_lo_ms,
        cast(itl_p50_hi_ms as double) as itl_p50_hi_ms,
        cast(itl_p95_ms as double) as itl_p95_ms,               -- inter-token latency p95, ms
        cast(itl_p95_lo_ms as double) as itl_p95_lo_ms,
        cast(itl_p95_hi_ms as double) as itl_p95_hi_ms,
        cast(itl_p99_ms as double) as itl_p99_ms,               -- inter-token latency p99, ms
        cast(itl_p99_lo_ms as double) as itl_p99_lo_ms,
        cast(itl_p99_hi_ms as double) as itl_p99_hi_ms,
        cast(queue_depth_mean as double) as queue_depth_mean,   -- scrape: requests waiting, mean (summed over targets)
        cast(queue_depth_max as double) as queue_depth_max,     -- scrape: requests waiting, largest sample
        cast(running_mean as double) as running_mean,           -- scrape: requests running, mean (summed over targets)
        cast(cache_usage_mean as double) as cache_usage_mean,   -- scrape: KV-cache usage 0..1, mean
        cast(cache_usage_max as double) as cache_usage_max,     -- scrape: KV-cache usage 0..1, largest sample
        cast(first_ts as timestamptz) as first_ts,              -- earliest scrape, or request arrival
        cast(last_ts as timestamptz) as last_ts                 -- latest scrape, or request arrival
    from joined
)

select * from final
