-- model: system_base
-- purpose: device telemetry of one model on one hardware on one day per device: the finest grain,
--   read once from raw system_samples; the system cube merges from it.
-- grain: model × hardware × date × device
-- time column: date (UTC date of system_samples.ts, the lake partition)
-- partitions: model, hardware, date (one file per lake partition; rebuilt only when its raw files change)
-- sources: system_samples
-- serve: none (served rolled up, as system_health)
-- audits: audits/system_totals.sql

with

samples as (
    select
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(date as date) as date,
        cast(device as varchar) as device,
        cast(ts as timestamptz) as ts,
        cast(util as double) as util,
        cast(mem_used_gb as double) as mem_used_gb,
        cast(mem_total_gb as double) as mem_total_gb,
        cast(power_w as double) as power_w,
        cast(temperature_c as double) as temperature_c
    from system_samples
),

per_device_day as (
    select
        model,
        hardware,
        date,
        device,
        count(*) as n_samples,
        count(util) as n_util,
        sum(util) as util_sum,
        max(util) as util_max,
        count(*) filter (where util = 0) as n_util_zero,
        max(mem_used_gb) as mem_used_gb_max,
        max(mem_total_gb) as mem_total_gb,
        count(power_w) as n_power,
        sum(power_w) as power_w_sum,
        max(power_w) as power_w_max,
        max(temperature_c) as temperature_c_max,
        min(ts) as first_ts,
        max(ts) as last_ts
    from samples
    group by model, hardware, date, device
),

final as (
    select
        cast(model as varchar) as model,                    -- model slug
        cast(hardware as varchar) as hardware,              -- hardware fingerprint
        cast(date as date) as date,                         -- UTC date of the samples
        cast(device as varchar) as device,                  -- cpu | cuda:0 | …
        cast(n_samples as bigint) as n_samples,             -- samples taken
        cast(n_util as bigint) as n_util,                   -- samples with a utilization
        cast(util_sum as double) as util_sum,               -- sum of utilization, percent
        cast(util_max as double) as util_max,               -- highest utilization, percent
        cast(n_util_zero as bigint) as n_util_zero,         -- samples at 0 % (idle device)
        cast(mem_used_gb_max as double) as mem_used_gb_max, -- peak memory in use, GB
        cast(mem_total_gb as double) as mem_total_gb,       -- memory capacity, GB
        cast(n_power as bigint) as n_power,                 -- samples with a power reading
        cast(power_w_sum as double) as power_w_sum,         -- sum of power draw, W
        cast(power_w_max as double) as power_w_max,         -- highest power draw, W
        cast(temperature_c_max as double) as temperature_c_max, -- hottest reading, Celsius
        cast(first_ts as timestamptz) as first_ts,          -- earliest sample
        cast(last_ts as timestamptz) as last_ts             -- latest sample
    from per_device_day
)

select * from final
