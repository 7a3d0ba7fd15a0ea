-- audit: system_totals
-- purpose: the served system cube holds exactly the raw lake's system_samples: per lake partition
--   the device-level rows of system_health add up to the raw samples and utilization sum; every
--   aggregation level sums to the raw total.
-- grain: one row per (partition or level, measure) that differs; no rows = the audit passes.
-- sources: system_samples (lake), system_health (serving)
-- tolerance: counts exact; float sums 1e-9 relative; a value on one side only is a difference

with

lake as (
    select
        model,
        hardware,
        date,
        cast(count(*) as double) as n_samples,
        sum(util) as util_sum,
        sum(power_w) as power_w_sum
    from system_samples
    group by model, hardware, date
),

cube as (
    select
        model,
        hardware,
        date,
        cast(sum(n_samples) as double) as n_samples,
        sum(util_sum) as util_sum,
        sum(power_w_sum) as power_w_sum
    from system_health
    where grouping_id = 0  -- device × day
    group by model, hardware, date
),

partitions as (
    select
        'model=' || coalesce(lake.model, cube.model) || '/hardware=' || coalesce(lake.hardware, cube.hardware)
            || '/date=' || cast(coalesce(lake.date, cube.date) as varchar) as partition,
        lake.n_samples as lake_n_samples, cube.n_samples as cube_n_samples,
        lake.util_sum as lake_util_sum, cube.util_sum as cube_util_sum,
        lake.power_w_sum as lake_power_w_sum, cube.power_w_sum as cube_power_w_sum
    from lake
    full outer join cube
        on cube.model = lake.model and cube.hardware = lake.hardware and cube.date = lake.date
),

compared as (
    select partition, 'n_samples' as measure, lake_n_samples as lake_value, cube_n_samples as cube_value from partitions
    union all
    select partition, 'util_sum', lake_util_sum, cube_util_sum from partitions
    union all
    select partition, 'power_w_sum', lake_power_w_sum, cube_power_w_sum from partitions
),

levels as (
    select
        'level=' || agg_level as partition,
        'n_samples' as measure,
        (select cast(count(*) as double) from system_samples) as lake_value,
        cast(sum(n_samples) as double) as cube_value
    from system_health
    group by agg_level
),

final as (
    select
        cast('system_totals' as varchar) as audit,
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
