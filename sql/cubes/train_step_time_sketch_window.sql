-- model: train_step_time_sketch_window
-- purpose: step-time histogram of the rollups over the whole window (no date), merged by SUM from
--   the daily model × hardware × precision histograms (the parent cuboid), never from raw rows.
-- grain: one row per window aggregation level × its dimension values × bucket. Levels: model ×
--   hardware × precision; model × hardware; model; hardware × precision; hardware; precision; total.
--   date is null and run_id 'ALL' on every row; grouping_id uses the same 5-bit mask as the daily
--   levels (date and run_id always rolled up: + 2 + 1).
-- time column: none (all dates in the lake)
-- partitions: none (recomputed whole from the daily model, which is small)
-- sources: train_step_time_sketch_daily
-- serve: train_step_time_sketch
-- audits: audits/train_health_totals.sql (every level sums to the raw step count)

with

daily as (
    select
        model,
        hardware,
        precision,
        bucket,
        n
    from train_step_time_sketch_daily
    where grouping_id = 1  -- model × hardware × precision × date
),

rolled_up as (
    select
        case when grouping(model) = 1 then 'ALL' else model end as model,
        case when grouping(hardware) = 1 then 'ALL' else hardware end as hardware,
        case when grouping(precision) = 1 then 'ALL' else precision end as precision,
        grouping(model) * 16 + grouping(hardware) * 8 + grouping(precision) * 4 + 3 as grouping_id,
        coalesce(nullif(concat_ws(',',
            case when grouping(model) = 0 then 'model' end,
            case when grouping(hardware) = 0 then 'hardware' end,
            case when grouping(precision) = 0 then 'precision' end), ''), 'total') as agg_level,
        bucket,
        sum(n) as n
    from daily
    group by grouping sets (
        (model, hardware, precision, bucket),
        (model, hardware, bucket),
        (model, bucket),
        (hardware, precision, bucket),
        (hardware, bucket),
        (precision, bucket),
        (bucket)
    )
),

final as (
    select
        cast(model as varchar) as model,          -- model slug or 'ALL'
        cast(hardware as varchar) as hardware,    -- hardware fingerprint or 'ALL'
        cast(precision as varchar) as precision,  -- precision or 'ALL'
        cast(null as date) as date,               -- all dates
        cast('ALL' as varchar) as run_id,         -- all runs
        cast(grouping_id as integer) as grouping_id, -- rolled-up dimensions, bitmask (model = 16 … run_id = 1)
        cast(agg_level as varchar) as agg_level,  -- the dimensions kept, e.g. 'model,hardware'
        cast(bucket as integer) as bucket,        -- log-bucket id (sketch_bounds)
        cast(n as bigint) as n                    -- steps whose step time falls in the bucket
    from rolled_up
)

select * from final
