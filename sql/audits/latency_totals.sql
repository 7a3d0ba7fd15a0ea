-- audit: latency_totals
-- purpose: the served latency cube holds exactly the raw lake's latency_samples: per lake partition
--   the checkpoint-level rows of latency_health and the latency sketch add up to the raw requests,
--   successes, finite-latency count and sum; every aggregation level sums to the raw total.
-- grain: one row per (partition or level, measure) that differs; no rows = the audit passes.
-- sources: latency_samples (lake), latency_health and latency_sketch (serving)
-- tolerance: counts exact; float sums 1e-9 relative; a value on one side only is a difference, except
--   that no sketch rows means zero sketched requests

with

lake as (
    select
        model,
        hardware,
        date,
        cast(count(*) as double) as n_requests,
        cast(count(*) filter (where ok) as double) as n_ok,
        cast(count(*) filter (where abs(latency_ms) < cast('Infinity' as double)) as double) as n_latency,
        sum(latency_ms) filter (where abs(latency_ms) < cast('Infinity' as double)) as latency_ms_sum,
        cast(count(latency_ms) as double) as n_sketched
    from latency_samples
    group by model, hardware, date
),

cube as (
    select
        model,
        hardware,
        date,
        cast(sum(n_requests) as double) as n_requests,
        cast(sum(n_ok) as double) as n_ok,
        cast(sum(n_latency) as double) as n_latency,
        sum(latency_ms_sum) as latency_ms_sum
    from latency_health
    where grouping_id = 0  -- checkpoint × day
    group by model, hardware, date
),

sketch as (
    select
        model,
        hardware,
        date,
        cast(sum(n) as double) as n_sketched
    from latency_sketch
    where grouping_id = 0
    group by model, hardware, date
),

partitions as (
    select
        'model=' || coalesce(lake.model, cube.model, sketch.model)
            || '/hardware=' || coalesce(lake.hardware, cube.hardware, sketch.hardware)
            || '/date=' || cast(coalesce(lake.date, cube.date, sketch.date) as varchar) as partition,
        lake.n_requests as lake_n_requests, cube.n_requests as cube_n_requests,
        lake.n_ok as lake_n_ok, cube.n_ok as cube_n_ok,
        lake.n_latency as lake_n_latency, cube.n_latency as cube_n_latency,
        lake.latency_ms_sum as lake_latency_ms_sum, cube.latency_ms_sum as cube_latency_ms_sum,
        lake.n_sketched as lake_n_sketched, sketch.n_sketched as cube_n_sketched
    from lake
    full outer join cube
        on cube.model = lake.model and cube.hardware = lake.hardware and cube.date = lake.date
    full outer join sketch
        on sketch.model = coalesce(lake.model, cube.model)
        and sketch.hardware = coalesce(lake.hardware, cube.hardware)
        and sketch.date = coalesce(lake.date, cube.date)
),

compared as (
    select partition, 'n_requests' as measure, lake_n_requests as lake_value, cube_n_requests as cube_value from partitions
    union all
    select partition, 'n_ok', lake_n_ok, cube_n_ok from partitions
    union all
    select partition, 'n_latency', lake_n_latency, cube_n_latency from partitions
    union all
    select partition, 'latency_ms_sum', lake_latency_ms_sum, cube_latency_ms_sum from partitions
    union all
    -- a sketch of zero values has no rows: no latencies on either side reads 0 = 0, as in
    -- train_health_totals
    select partition, 'latency_sketch_n', coalesce(lake_n_sketched, 0.0), coalesce(cube_n_sketched, 0.0)
    from partitions
),

levels as (
    select
        'level=' || agg_level as partition,
        'n_requests' as measure,
        (select cast(count(*) as double) from latency_samples) as lake_value,
        cast(sum(n_requests) as double) as cube_value
    from latency_health
    group by agg_level
    union all
    select
        'level=' || agg_level,
        'latency_sketch_n',
        (select cast(count(latency_ms) as double) from latency_samples),
        cast(sum(n) as double)
    from latency_sketch
    group by agg_level
),

final as (
    select
        cast('latency_totals' as varchar) as audit,
        cast(partition as varchar) as partition,
        cast(measure as varchar) as measure,
        cast(lake_value as double) as lake_value,
        cast(cube_value as double) as cube_value
    from (select * from compared union all select * from levels) as checked
    where not (
        lake_value is not distinct from cube_value
        or coalesce(abs(lake_value - cube_value) <= 1e-9 * greatest(abs(lake_value), abs(cube_value), 1.0), false))
)

select * from final
