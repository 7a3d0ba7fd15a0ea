-- model: latency_base
-- purpose: inference latency of one checkpoint on one day, split by latency bucket: the finest
--   grain, read once from raw latency_samples; every latency rollup and percentile merges from it.
-- grain: model × hardware × precision × date × checkpoint_step × latency_bucket (null when
--   latency_ms is null)
-- time column: date (UTC date of latency_samples.ts, the lake partition)
-- partitions: model, hardware, date (one file per lake partition; rebuilt only when its raw files change)
-- sources: latency_samples, sketch_bounds
-- serve: none (served rolled up, as latency_health, latency_sketch and eval_health)
-- audits: audits/latency_totals.sql
--
-- The bucket is the log-bucket of pipelines/sketch.py, exactly as in train_health_base: a guess
-- floor(ln(x) / ln(1.02)) corrected by exact comparison with lo/hi from sketch_bounds. Constants:
-- buckets -1100..1400, zero -5000, negatives -10000 - b, -inf -20000, +inf 20000, NaN 30000.

with

samples as (
    select
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(precision as varchar) as precision,
        cast(date as date) as date,
        cast(checkpoint_step as bigint) as checkpoint_step,
        cast(ts as timestamptz) as ts,
        cast(batch_size as integer) as batch_size,
        cast(seq_len as integer) as seq_len,
        cast(latency_ms as double) as latency_ms,
        cast(ok as boolean) as ok
    from latency_samples
),

bounds as (
    select bucket, lo, hi
    from sketch_bounds
    where lo is not null
),

classified as (
    select
        *,
        abs(latency_ms) < cast('Infinity' as double) as is_latency_finite,
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
            when classified.latency_ms > 0 and classified.latency_ms < cast('Infinity' as double) then
                case
                    when classified.latency_ms < bounds.lo then classified.latency_guess - 1
                    when classified.latency_ms >= bounds.hi then classified.latency_guess + 1
                    else classified.latency_guess
                end
            when classified.latency_ms is null then null
            when isnan(classified.latency_ms) then 30000
            when classified.latency_ms = cast('Infinity' as double) then 20000
            when classified.latency_ms = cast('-Infinity' as double) then -20000
            when classified.latency_ms = 0 then -5000
            else -10000 - (
                case
                    when abs(classified.latency_ms) < bounds.lo then classified.latency_guess - 1
                    when abs(classified.latency_ms) >= bounds.hi then classified.latency_guess + 1
                    else classified.latency_guess
                end)
        end as latency_bucket
    from classified
    left join bounds
        on bounds.bucket = classified.latency_guess
),

per_checkpoint_day_bucket as (
    select
        model,
        hardware,
        precision,
        date,
        checkpoint_step,
        latency_bucket,
        count(*) as n_requests,
        count(*) filter (where ok) as n_ok,
        count(*) filter (where not ok) as n_failed,
        count(*) filter (where is_latency_finite) as n_latency,
        sum(latency_ms) filter (where is_latency_finite) as latency_ms_sum,
        max(latency_ms) filter (where is_latency_finite) as latency_ms_max,
        sum(cast(batch_size as bigint) * seq_len) as tokens,
        min(ts) as first_ts,
        max(ts) as last_ts
    from bucketed
    group by model, hardware, precision, date, checkpoint_step, latency_bucket
),

final as (
    select
        cast(model as varchar) as model,                    -- model slug
        cast(hardware as varchar) as hardware,              -- hardware fingerprint
        cast(precision as varchar) as precision,            -- precision served in
        cast(date as date) as date,                         -- UTC date of the requests
        cast(checkpoint_step as bigint) as checkpoint_step, -- training step of the checkpoint
        cast(latency_bucket as integer) as latency_bucket,  -- log-bucket of latency_ms (pipelines/sketch.py)
        cast(n_requests as bigint) as n_requests,           -- requests timed
        cast(n_ok as bigint) as n_ok,                       -- requests that succeeded
        cast(n_failed as bigint) as n_failed,               -- exceptions, NaN/inf outputs, timeouts
        cast(n_latency as bigint) as n_latency,             -- requests with a finite latency
        cast(latency_ms_sum as double) as latency_ms_sum,   -- sum of finite latencies, ms
        cast(latency_ms_max as double) as latency_ms_max,   -- slowest request, ms
        cast(tokens as bigint) as tokens,                   -- batch_size × seq_len summed
        cast(first_ts as timestamptz) as first_ts,          -- earliest request
        cast(last_ts as timestamptz) as last_ts             -- latest request
    from per_checkpoint_day_bucket
)

select * from final
