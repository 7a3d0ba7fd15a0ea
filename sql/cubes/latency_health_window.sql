-- model: latency_health_window
-- purpose: the inference-latency cube over the whole window (no date): the same measures as
--   latency_health_daily per checkpoint, model and hardware, merged from the daily checkpoint-level
--   rows, never from raw rows.
-- grain: one row per window aggregation level × its dimension values. Levels: checkpoint (model ×
--   hardware × precision × checkpoint_step); model × hardware × checkpoint_step; model ×
--   checkpoint_step; model × hardware × precision; model × hardware; model; hardware × precision;
--   hardware; total. date is null on every row (grouping_id + 1).
-- time column: none (all dates in the lake)
-- partitions: none (recomputed whole from the daily checkpoint-level rows, which are small)
-- sources: latency_health_daily, latency_sketch_window, sketch_bounds
-- serve: latency_health
-- audits: audits/latency_totals.sql
--
-- Percentiles: as in latency_health_daily, from latency_sketch_window.

with

base as (
    select *
    from latency_health_daily
    where grouping_id = 0  -- checkpoint × day: every request once
),

sketch as (
    select *
    from latency_sketch_window
),

bounds as (
    select bucket, mid
    from sketch_bounds
),

rolled_up as (
    select
        case when grouping(model) = 1 then 'ALL' else model end as model,
        case when grouping(hardware) = 1 then 'ALL' else hardware end as hardware,
        case when grouping(precision) = 1 then 'ALL' else precision end as precision,
        checkpoint_step,
        cast(null as date) as date,
        grouping(model) * 16 + grouping(hardware) * 8 + grouping(precision) * 4
            + grouping(checkpoint_step) * 2 + 1 as grouping_id,
        coalesce(nullif(concat_ws(',',
            case when grouping(model) = 0 then 'model' end,
            case when grouping(hardware) = 0 then 'hardware' end,
            case when grouping(precision) = 0 then 'precision' end,
            case when grouping(checkpoint_step) = 0 then 'checkpoint_step' end), ''), 'total') as agg_level,
        sum(n_requests) as n_requests,
        sum(n_ok) as n_ok,
        sum(n_failed) as n_failed,
        sum(n_latency) as n_latency,
        sum(latency_ms_sum) as latency_ms_sum,
        max(latency_ms_max) as latency_ms_max,
        sum(tokens) as tokens,
        min(first_ts) as first_ts,
        max(last_ts) as last_ts
    from base
    group by grouping sets (
        (model, hardware, precision, checkpoint_step),
        (model, hardware, checkpoint_step),
        (model, checkpoint_step),
        (model, hardware, precision),
        (model, hardware),
        (model),
        (hardware, precision),
        (hardware),
        ()
    )
    having count(*) > 0  -- no grand-total row over an empty lake
),

ranked_buckets as (
    select
        sketch.grouping_id,
        sketch.model,
        sketch.hardware,
        sketch.precision,
        sketch.checkpoint_step,
        sketch.date,
        bounds.mid,
        sum(sketch.n) over (
            partition by sketch.grouping_id, sketch.model, sketch.hardware, sketch.precision,
                sketch.checkpoint_step, sketch.date
            order by sketch.bucket
            rows between unbounded preceding and current row) as n_cumulative,
        sum(sketch.n) over (
            partition by sketch.grouping_id, sketch.model, sketch.hardware, sketch.precision,
                sketch.checkpoint_step, sketch.date) as n_ranked
    from sketch
    inner join bounds
        on bounds.bucket = sketch.bucket
    where sketch.bucket <> 30000  -- NaN is counted, never ranked
),

quantiles as (
    select
        grouping_id,
        model,
        hardware,
        precision,
        checkpoint_step,
        date,
        min(mid) filter (where n_cumulative >= 0.50 * n_ranked) as p50,
        min(mid) filter (where n_cumulative >= 0.95 * n_ranked) as p95,
        min(mid) filter (where n_cumulative >= 0.99 * n_ranked) as p99
    from ranked_buckets
    group by grouping_id, model, hardware, precision, checkpoint_step, date
),

joined as (
    select
        rolled_up.*,
        quantiles.p50,
        quantiles.p95,
        quantiles.p99
    from rolled_up
    left join quantiles
        on quantiles.grouping_id = rolled_up.grouping_id
        and quantiles.model is not distinct from rolled_up.model
        and quantiles.hardware is not distinct from rolled_up.hardware
        and quantiles.precision is not distinct from rolled_up.precision
        and quantiles.checkpoint_step is not distinct from rolled_up.checkpoint_step
        and quantiles.date is not distinct from rolled_up.date
),

final as (
    select
        cast(model as varchar) as model,                    -- model slug or 'ALL'
        cast(hardware as varchar) as hardware,              -- hardware fingerprint or 'ALL'
        cast(precision as varchar) as precision,            -- precision or 'ALL'
        cast(checkpoint_step as bigint) as checkpoint_step, -- checkpoint (null when rolled up)
        cast(date as date) as date,                         -- UTC date
        cast(grouping_id as integer) as grouping_id,        -- rolled-up dimensions, bitmask
        cast(agg_level as varchar) as agg_level,            -- the dimensions kept
        cast(n_requests as bigint) as n_requests,           -- requests timed
        cast(n_ok as bigint) as n_ok,                       -- requests that succeeded
        cast(n_failed as bigint) as n_failed,               -- requests that failed
        cast(n_failed / nullif(n_requests, 0) as double) as error_rate, -- failed share of requests
        cast(n_latency as bigint) as n_latency,             -- requests with a finite latency
        cast(latency_ms_sum as double) as latency_ms_sum,   -- sum of finite latencies, ms
        cast(latency_ms_sum / nullif(n_latency, 0) as double) as latency_ms_mean, -- mean latency, ms
        cast(latency_ms_max as double) as latency_ms_max,   -- slowest request, ms
        cast(p50 as double) as latency_p50_ms,              -- median latency, ms (≤ 1 % off)
        cast(p95 as double) as latency_p95_ms,              -- 95th percentile latency, ms
        cast(p99 as double) as latency_p99_ms,              -- 99th percentile latency, ms
        cast(tokens as bigint) as tokens,                   -- batch_size × seq_len served
        cast(first_ts as timestamptz) as first_ts,          -- earliest request
        cast(last_ts as timestamptz) as last_ts             -- latest request
    from joined
)

select * from final
