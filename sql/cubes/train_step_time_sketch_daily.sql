-- model: train_step_time_sketch_daily
-- purpose: step-time histogram (log buckets, growth 1.02) of every daily rollup of training, merged
--   by SUM from the base; percentiles are read from it by cumulative counts (train_health_daily).
-- grain: one row per daily aggregation level × its dimension values × bucket. Levels (the questions
--   asked per day): run; model × hardware × precision; model × hardware; model; hardware × precision;
--   hardware; precision; whole fleet. Rolled-up string dimensions read 'ALL', grouping_id is the
--   bitmask grouping(model) * 16 + grouping(hardware) * 8 + grouping(precision) * 4 + grouping(date)
--   * 2 + grouping(run_id) (set = rolled up), spelled out because Spark's grouping_id() must name
--   every grouping column (bucket included).
-- time column: date
-- partitions: date (rebuilt for the dates whose base partitions changed)
-- sources: train_health_base
-- serve: train_step_time_sketch
-- audits: audits/train_health_totals.sql (sum of n per partition = steps with a step time)

with

base as (
    select
        model,
        hardware,
        precision,
        date,
        run_id,
        step_time_bucket,
        n_steps
    from train_health_base
    where step_time_bucket is not null
),

rolled_up as (
    select
        case when grouping(model) = 1 then 'ALL' else model end as model,
        case when grouping(hardware) = 1 then 'ALL' else hardware end as hardware,
        case when grouping(precision) = 1 then 'ALL' else precision end as precision,
        date,
        case when grouping(run_id) = 1 then 'ALL' else run_id end as run_id,
        grouping(model) * 16 + grouping(hardware) * 8 + grouping(precision) * 4 + grouping(date) * 2
            + grouping(run_id) as grouping_id,
        concat_ws(',',
            case when grouping(model) = 0 then 'model' end,
            case when grouping(hardware) = 0 then 'hardware' end,
            case when grouping(precision) = 0 then 'precision' end,
            'date',
            case when grouping(run_id) = 0 then 'run_id' end) as agg_level,
        step_time_bucket as bucket,
        sum(n_steps) as n
    from base
    group by grouping sets (
        (model, hardware, precision, date, run_id, step_time_bucket),
        (model, hardware, precision, date, step_time_bucket),
        (model, hardware, date, step_time_bucket),
        (model, date, step_time_bucket),
        (hardware, precision, date, step_time_bucket),
        (hardware, date, step_time_bucket),
        (precision, date, step_time_bucket),
        (date, step_time_bucket)
    )
),

final as (
    select
        cast(model as varchar) as model,          -- model slug or 'ALL'
        cast(hardware as varchar) as hardware,    -- hardware fingerprint or 'ALL'
        cast(precision as varchar) as precision,  -- precision or 'ALL'
        cast(date as date) as date,               -- UTC date
        cast(run_id as varchar) as run_id,        -- run or 'ALL'
        cast(grouping_id as integer) as grouping_id, -- rolled-up dimensions, bitmask (model = 16 … run_id = 1)
        cast(agg_level as varchar) as agg_level,  -- the dimensions kept, e.g. 'model,date'
        cast(bucket as integer) as bucket,        -- log-bucket id (sketch_bounds)
        cast(n as bigint) as n                    -- steps whose step time falls in the bucket
    from rolled_up
)

select * from final
