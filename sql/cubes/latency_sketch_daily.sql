-- model: latency_sketch_daily
-- purpose: latency histogram (log buckets, growth 1.02) of every daily rollup of inference latency,
--   merged by SUM from the base; latency_health_daily reads percentiles from it.
-- grain: one row per daily aggregation level × its dimension values × bucket. Levels: checkpoint ×
--   day (model × hardware × precision × checkpoint_step); model × hardware × precision; model ×
--   hardware; model; hardware × precision; hardware; whole fleet. Rolled-up string dimensions read
--   'ALL', checkpoint_step is null when rolled up; grouping_id = grouping(model) * 16 +
--   grouping(hardware) * 8 + grouping(precision) * 4 + grouping(checkpoint_step) * 2 + grouping(date).
-- time column: date
-- partitions: date (rebuilt for the dates whose base partitions changed)
-- sources: latency_base
-- serve: latency_sketch
-- audits: audits/latency_totals.sql (sum of n per partition = requests with a latency)

with

base as (
    select
        model,
        hardware,
        precision,
        checkpoint_step,
        date,
        latency_bucket,
        n_requests
    from latency_base
    where latency_bucket is not null
),

rolled_up as (
    select
        case when grouping(model) = 1 then 'ALL' else model end as model,
        case when grouping(hardware) = 1 then 'ALL' else hardware end as hardware,
        case when grouping(precision) = 1 then 'ALL' else precision end as precision,
        checkpoint_step,
        date,
        grouping(model) * 16 + grouping(hardware) * 8 + grouping(precision) * 4
            + grouping(checkpoint_step) * 2 + grouping(date) as grouping_id,
        concat_ws(',',
            case when grouping(model) = 0 then 'model' end,
            case when grouping(hardware) = 0 then 'hardware' end,
            case when grouping(precision) = 0 then 'precision' end,
            case when grouping(checkpoint_step) = 0 then 'checkpoint_step' end,
            'date') as agg_level,
        latency_bucket as bucket,
        sum(n_requests) as n
    from base
    group by grouping sets (
        (model, hardware, precision, checkpoint_step, date, latency_bucket),
        (model, hardware, precision, date, latency_bucket),
        (model, hardware, date, latency_bucket),
        (model, date, latency_bucket),
        (hardware, precision, date, latency_bucket),
        (hardware, date, latency_bucket),
        (date, latency_bucket)
    )
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
        cast(bucket as integer) as bucket,                  -- log-bucket id (sketch_bounds)
        cast(n as bigint) as n                              -- requests whose latency falls in the bucket
    from rolled_up
)

select * from final
