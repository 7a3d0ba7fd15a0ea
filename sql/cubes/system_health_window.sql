-- model: system_health_window
-- purpose: the system cube over the whole window (no date), merged from the daily device-level rows,
--   never from raw rows.
-- grain: one row per window aggregation level × its dimension values. Levels: model × hardware ×
--   device; model × hardware; model; hardware; total. date is null on every row (grouping_id + 1).
-- time column: none (all dates in the lake)
-- partitions: none (recomputed whole from the daily device-level rows, which are small)
-- sources: system_health_daily
-- serve: system_health
-- audits: audits/system_totals.sql

with

base as (
    select *
    from system_health_daily
    where grouping_id = 0  -- device × day: every sample once
),

rolled_up as (
    select
        case when grouping(model) = 1 then 'ALL' else model end as model,
        case when grouping(hardware) = 1 then 'ALL' else hardware end as hardware,
        case when grouping(device) = 1 then 'ALL' else device end as device,
        cast(null as date) as date,
        grouping(model) * 8 + grouping(hardware) * 4 + grouping(device) * 2 + 1 as grouping_id,
        coalesce(nullif(concat_ws(',',
            case when grouping(model) = 0 then 'model' end,
            case when grouping(hardware) = 0 then 'hardware' end,
            case when grouping(device) = 0 then 'device' end), ''), 'total') as agg_level,
        sum(n_samples) as n_samples,
        sum(n_util) as n_util,
        sum(util_sum) as util_sum,
        max(util_max) as util_max,
        sum(n_util_zero) as n_util_zero,
        max(mem_used_gb_max) as mem_used_gb_max,
        max(mem_total_gb) as mem_total_gb,
        sum(n_power) as n_power,
        sum(power_w_sum) as power_w_sum,
        max(power_w_max) as power_w_max,
        max(temperature_c_max) as temperature_c_max,
        min(first_ts) as first_ts,
        max(last_ts) as last_ts
    from base
    group by grouping sets (
        (model, hardware, device),
        (model, hardware),
        (model),
        (hardware),
        ()
    )
    having count(*) > 0  -- no grand-total row over an empty lake
),

final as (
    select
        cast(model as varchar) as model,                    -- model slug or 'ALL'
        cast(hardware as varchar) as hardware,              -- hardware fingerprint or 'ALL'
        cast(device as varchar) as device,                  -- device or 'ALL'
        cast(date as date) as date,                         -- UTC date
        cast(grouping_id as integer) as grouping_id,        -- rolled-up dimensions, bitmask
        cast(agg_level as varchar) as agg_level,            -- the dimensions kept
        cast(n_samples as bigint) as n_samples,             -- samples taken
        cast(n_util as bigint) as n_util,                   -- samples with a utilization
        cast(util_sum as double) as util_sum,               -- sum of utilization, percent
        cast(util_sum / nullif(n_util, 0) as double) as util_mean, -- mean utilization, percent
        cast(util_max as double) as util_max,               -- highest utilization, percent
        cast(n_util_zero as bigint) as n_util_zero,         -- samples at 0 %
        cast(n_util_zero / nullif(n_util, 0) as double) as idle_share, -- share of samples at 0 %
        cast(mem_used_gb_max as double) as mem_used_gb_max, -- peak memory in use, GB
        cast(mem_total_gb as double) as mem_total_gb,       -- memory capacity, GB
        cast(mem_used_gb_max / nullif(mem_total_gb, 0) as double) as mem_peak_share, -- peak / capacity
        cast(n_power as bigint) as n_power,                 -- samples with a power reading
        cast(power_w_sum as double) as power_w_sum,         -- sum of power draw, W
        cast(power_w_sum / nullif(n_power, 0) as double) as power_w_mean, -- mean power draw, W
        cast(power_w_max as double) as power_w_max,         -- highest power draw, W
        cast(temperature_c_max as double) as temperature_c_max, -- hottest reading, Celsius
        cast(first_ts as timestamptz) as first_ts,          -- earliest sample
        cast(last_ts as timestamptz) as last_ts             -- latest sample
    from rolled_up
)

select * from final
