-- model: latency_sketch_window
-- purpose: latency histogram of the rollups over the whole window (no date), merged by SUM from the
--   daily checkpoint-level histograms (the parent cuboid), never from raw rows.
-- grain: one row per window aggregation level × its dimension values × bucket. Levels: checkpoint
--   (model × hardware × precision × checkpoint_step); model × hardware × checkpoint_step; model ×
--   checkpoint_step; model × hardware × precision; model × hardware; model; hardware × precision;
--   hardware; total. date is null on every row (grouping_id + 1).
-- time column: none (all dates in the lake)
-- partitions: none (recomputed whole from the daily model, which is small)
-- sources: latency_sketch_daily
-- serve: latency_sketch
-- audits: audits/latency_totals.sql (every level sums to the raw request count)

with

daily as (
    select
        model,
        hardware,
        precision,
        checkpoint_step,
        bucket,
        n
    from latency_sketch_daily
    where grouping_id = 0  -- checkpoint × day
),

rolled_up as (
    select
        case when grouping(model) = 1 then 'ALL' else model end as model,
        case when grouping(hardware) = 1 then 'ALL' else hardware end as hardware,
        case when grouping(precision) = 1 then 'ALL' else precision end as precision,
        checkpoint_step,
        grouping(model) * 16 + grouping(hardware) * 8 + grouping(precision) * 4
            + grouping(checkpoint_step) * 2 + 1 as grouping_id,
        coalesce(nullif(concat_ws(',',
            case when grouping(model) = 0 then 'model' end,
            case when grouping(hardware) = 0 then 'hardware' end,
            case when grouping(precision) = 0 then 'precision' end,
            case when grouping(checkpoint_step) = 0 then 'checkpoint_step' end), ''), 'total') as agg_level,
        bucket,
        sum(n) as n
    from daily
    group by grouping sets (
        (model, hardware, precision, checkpoint_step, bucket),
        (model, hardware, checkpoint_step, bucket),
        (model, checkpoint_step, bucket),
        (model, hardware, precision, bucket),
        (model, hardware, bucket),
        (model, bucket),
        (hardware, precision, bucket),
        (hardware, bucket),
        (bucket)
    )
),

final as (
    select
        cast(model as varchar) as model,                    -- model slug or 'ALL'
        cast(hardware as varchar) as hardware,              -- hardware fingerprint or 'ALL'
        cast(precision as varchar) as precision,            -- precision or 'ALL'
        cast(checkpoint_step as bigint) as checkpoint_step, -- checkpoint (null when rolled up)
        cast(null as date) as date,                         -- all dates
        cast(grouping_id as integer) as grouping_id,        -- rolled-up dimensions, bitmask
        cast(agg_level as varchar) as agg_level,            -- the dimensions kept
        cast(bucket as integer) as bucket,                  -- log-bucket id (sketch_bounds)
        cast(n as bigint) as n                              -- requests whose latency falls in the bucket
    from rolled_up
)

select * from final
