-- model: serving_request_base
-- purpose: per-request serving logs per hour: requests by status class and tokens (metric
--   'requests'), and the log-bucket histograms (growth 1.02) of e2e, TTFT and ITL of the requests
--   that succeeded (metrics 'e2e_ms', 'ttft_ms', 'itl_ms'); read once from raw serving_requests.
-- grain: model × hardware × precision × date × hour × metric × bucket (bucket null on 'requests' rows)
-- time column: hour (UTC hour of serving_requests.ts, the request's arrival; date is its lake partition)
-- partitions: model, hardware, date (one file per lake partition; rebuilt only when its raw files change)
-- sources: serving_requests, sketch_bounds
-- serve: none (served rolled up, as serving_health)
-- audits: tests/pipelines/test_serving_cube.py (percentiles within 1 % of the exact ones of a real
--   load, counts exact)
--
-- The bucket is the log-bucket of pipelines/sketch.py, exactly as in latency_base: a guess
-- floor(ln(x) / ln(1.02)) corrected by exact comparison with lo/hi from sketch_bounds. Constants:
-- buckets -1100..1400, zero -5000, negatives -10000 - b, -inf -20000, +inf 20000, NaN 30000.
-- Latency percentiles are of successful requests (status_class 'ok'); a failure's latency says how
-- fast it failed, not how fast the model serves. start_s / end_s are seconds since the date's
-- midnight of the first arrival and the last completion (arrival + e2e): the span the requests cover.

with

requests as (
    select
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(precision as varchar) as precision,
        cast(date as date) as date,
        cast(ts as timestamptz) as ts,
        cast(status_class as varchar) as status_class,
        cast(e2e_ms as double) as e2e_ms,
        cast(ttft_ms as double) as ttft_ms,
        cast(itl_ms as double) as itl_ms,
        cast(prompt_tokens as bigint) as prompt_tokens,
        cast(output_tokens as bigint) as output_tokens,
        date_diff('microsecond', cast(date as timestamptz), cast(ts as timestamptz)) / 1e6 as start_s
    from serving_requests
),

counted as (
    select
        model,
        hardware,
        precision,
        date,
        date_trunc('hour', ts) as hour,
        'requests' as metric,
        cast(null as integer) as bucket,
        count(*) as n,
        count(*) filter (where status_class = 'ok') as n_ok,
        count(*) filter (where status_class = 'client_error') as n_client_error,
        count(*) filter (where status_class = 'server_error') as n_server_error,
        count(*) filter (where status_class is null or status_class not in ('ok', 'client_error', 'server_error'))
            as n_other_error,
        sum(prompt_tokens) as prompt_tokens,
        sum(output_tokens) as output_tokens,
        sum(e2e_ms) filter (where status_class = 'ok' and abs(e2e_ms) < cast('Infinity' as double)) as e2e_ms_sum,
        min(start_s) as start_s,
        max(start_s + coalesce(case when abs(e2e_ms) < cast('Infinity' as double) then e2e_ms end, 0.0) / 1e3)
            as end_s,
        min(ts) as first_ts,
        max(ts) as last_ts
    from requests
    group by model, hardware, precision, date, date_trunc('hour', ts)
),

latencies as (
    select model, hardware, precision, date, ts, 'e2e_ms' as metric, e2e_ms as x
    from requests
    where status_class = 'ok' and e2e_ms is not null
    union all
    select model, hardware, precision, date, ts, 'ttft_ms' as metric, ttft_ms as x
    from requests
    where status_class = 'ok' and ttft_ms is not null
    union all
    select model, hardware, precision, date, ts, 'itl_ms' as metric, itl_ms as x
    from requests
    where status_class = 'ok' and itl_ms is not null
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
                when abs(x) > 0 and abs(x) < cast('Infinity' as double) then abs(x)
                else 1.0
            end) / ln(1.02)), 1400), -1100) as integer) as guess
    from latencies
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

sketched as (
    select
        model,
        hardware,
        precision,
        date,
        date_trunc('hour', ts) as hour,
        metric,
        bucket,
        count(*) as n,
        cast(null as bigint) as n_ok,
        cast(null as bigint) as n_client_error,
        cast(null as bigint) as n_server_error,
        cast(null as bigint) as n_other_error,
        cast(null as bigint) as prompt_tokens,
        cast(null as bigint) as output_tokens,
        cast(null as double) as e2e_ms_sum,
        cast(null as double) as start_s,
        cast(null as double) as end_s,
        cast(null as timestamptz) as first_ts,
        cast(null as timestamptz) as last_ts
    from bucketed
    group by model, hardware, precision, date, date_trunc('hour', ts), metric, bucket
),

unioned as (
    select * from counted
    union all
    select * from sketched
),

final as (
    select
        cast(model as varchar) as model,                    -- model slug
        cast(hardware as varchar) as hardware,              -- hardware fingerprint
        cast(precision as varchar) as precision,            -- precision served in
        cast(date as date) as date,                         -- UTC date of the arrivals
        cast(hour as timestamptz) as hour,                  -- UTC hour of the arrivals
        cast(metric as varchar) as metric,                  -- requests | e2e_ms | ttft_ms | itl_ms
        cast(bucket as integer) as bucket,                  -- log-bucket (sketch_bounds); null on 'requests'
        cast(n as bigint) as n,                             -- requests (in the bucket)
        cast(n_ok as bigint) as n_ok,                       -- requests: status class ok
        cast(n_client_error as bigint) as n_client_error,   -- requests: 4xx, validation
        cast(n_server_error as bigint) as n_server_error,   -- requests: 5xx
        cast(n_other_error as bigint) as n_other_error,     -- requests: aborts, timeouts, unknown status
        cast(prompt_tokens as bigint) as prompt_tokens,     -- requests: prompt tokens
        cast(output_tokens as bigint) as output_tokens,     -- requests: generated tokens
        cast(e2e_ms_sum as double) as e2e_ms_sum,           -- requests: sum of finite e2e of successes, ms
        cast(start_s as double) as start_s,                 -- requests: first arrival, s after midnight
        cast(end_s as double) as end_s,                     -- requests: last completion, s after midnight
        cast(first_ts as timestamptz) as first_ts,          -- requests: first arrival
        cast(last_ts as timestamptz) as last_ts             -- requests: last arrival
    from unioned
)

select * from final
