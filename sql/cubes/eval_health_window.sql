-- model: eval_health_window
-- purpose: the eval cube over the whole window (no date): every suite × metric per run's
--   checkpoint, model and hardware, beside latency_health_window, merged from the daily run-level
--   rows, never from raw rows.
-- grain: one row per suite × metric × window aggregation level × its dimension values. Levels: run ×
--   checkpoint (model × hardware × precision × checkpoint_step × run_id: one run's values, no
--   latency); then those of latency_health_window, where runs are merged: checkpoint (model ×
--   hardware × precision × checkpoint_step); model × hardware × checkpoint_step; model ×
--   checkpoint_step; model × hardware × precision; model × hardware; model; hardware × precision;
--   hardware; total. date is null on every row; grouping_id as in eval_health_daily (date bit set).
-- time column: none (all dates in the lake)
-- partitions: none (recomputed whole from the daily checkpoint-level rows, which are small)
-- sources: eval_health_daily, latency_health_window
-- serve: eval_health
-- audits: audits/eval_totals.sql

with

base as (
    select *
    from eval_health_daily
    where grouping_id = 0  -- run × checkpoint × day: every measurement once
),

latency as (
    select *
    from latency_health_window
),

rolled_up as (
    select
        suite,
        metric,
        case when grouping(model) = 1 then 'ALL' else model end as model,
        case when grouping(hardware) = 1 then 'ALL' else hardware end as hardware,
        case when grouping(precision) = 1 then 'ALL' else precision end as precision,
        checkpoint_step,
        cast(null as date) as date,
        case when grouping(run_id) = 1 then 'ALL' else run_id end as run_id,
        grouping(model) * 32 + grouping(hardware) * 16 + grouping(precision) * 8
            + grouping(checkpoint_step) * 4 + 2 + grouping(run_id) as grouping_id,
        coalesce(nullif(concat_ws(',',
            case when grouping(model) = 0 then 'model' end,
            case when grouping(hardware) = 0 then 'hardware' end,
            case when grouping(precision) = 0 then 'precision' end,
            case when grouping(checkpoint_step) = 0 then 'checkpoint_step' end,
            case when grouping(run_id) = 0 then 'run_id' end), ''), 'total') as agg_level,
        sum(n_results) as n_results,
        sum(n_value) as n_value,
        sum(value_sum) as value_sum,
        min(value_min) as value_min,
        max(value_max) as value_max,
        sum(n_value_nonfinite) as n_value_nonfinite,
        sum(n_examples) as n_examples,
        max(struct_pack(ts := last_ts, run_id := last_run_id, value := last_value)) as last_point
    from base
    group by grouping sets (
        (suite, metric, model, hardware, precision, checkpoint_step, run_id),
        (suite, metric, model, hardware, precision, checkpoint_step),
        (suite, metric, model, hardware, checkpoint_step),
        (suite, metric, model, checkpoint_step),
        (suite, metric, model, hardware, precision),
        (suite, metric, model, hardware),
        (suite, metric, model),
        (suite, metric, hardware, precision),
        (suite, metric, hardware),
        (suite, metric)
    )
),

with_latency as (
    select
        rolled_up.*,
        latency.n_requests,
        latency.error_rate,
        latency.latency_p50_ms,
        latency.latency_p95_ms,
        latency.latency_p99_ms
    from rolled_up
    left join latency  -- latency's levels are those with the run rolled up (the last grouping bit)
        on latency.grouping_id * 2 + 1 = rolled_up.grouping_id
        and latency.model is not distinct from rolled_up.model
        and latency.hardware is not distinct from rolled_up.hardware
        and latency.precision is not distinct from rolled_up.precision
        and latency.checkpoint_step is not distinct from rolled_up.checkpoint_step
        and latency.date is not distinct from rolled_up.date
),

final as (
    select
        cast(suite as varchar) as suite,                    -- eval suite
        cast(metric as varchar) as metric,                  -- metric name
        cast(model as varchar) as model,                    -- model slug or 'ALL'
        cast(hardware as varchar) as hardware,              -- hardware fingerprint or 'ALL'
        cast(precision as varchar) as precision,            -- precision or 'ALL'
        cast(checkpoint_step as bigint) as checkpoint_step, -- checkpoint (null when rolled up)
        cast(date as date) as date,                         -- UTC date
        cast(run_id as varchar) as run_id,                  -- training run of the checkpoint (else the eval run) or 'ALL'
        cast(grouping_id as integer) as grouping_id,        -- rolled-up dimensions, bitmask (model = 32 … run_id = 1)
        cast(agg_level as varchar) as agg_level,            -- the dimensions kept (suite, metric always)
        cast(n_results as bigint) as n_results,             -- measurements
        cast(n_value as bigint) as n_value,                 -- measurements with a finite value
        cast(value_sum as double) as value_sum,             -- sum of finite values
        cast(value_sum / nullif(n_value, 0) as double) as value_mean, -- mean finite value
        cast(value_min as double) as value_min,             -- smallest finite value
        cast(value_max as double) as value_max,             -- largest finite value
        cast(n_value_nonfinite as bigint) as n_value_nonfinite, -- NaN or ±inf values
        cast(n_examples as bigint) as n_examples,           -- examples behind the values
        cast(last_point.ts as timestamptz) as last_ts,      -- time of the latest measurement
        cast(last_point.run_id as varchar) as last_run_id,  -- eval run of the latest measurement
        cast(last_point.value as double) as last_value,     -- latest value (NaN kept)
        cast(n_requests as bigint) as n_requests,           -- latency requests timed (same level; null on the run level)
        cast(error_rate as double) as error_rate,           -- failed share of those requests
        cast(latency_p50_ms as double) as latency_p50_ms,   -- median latency, ms
        cast(latency_p95_ms as double) as latency_p95_ms,   -- 95th percentile latency, ms
        cast(latency_p99_ms as double) as latency_p99_ms    -- 99th percentile latency, ms
    from with_latency
)

select * from final
