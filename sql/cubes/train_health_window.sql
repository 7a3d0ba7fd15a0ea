-- model: train_health_window
-- purpose: the training-health cube over the whole window (no date): the same measures as
--   train_health_daily for the configuration-level questions (how does llama-7b on h100 in bf16 do
--   overall, which hardware is slowest), merged from the daily run-level rows, never from raw rows.
-- grain: one row per window aggregation level × its dimension values. Levels: model × hardware ×
--   precision; model × hardware; model; hardware × precision; hardware; precision; total. date is
--   null and run_id 'ALL' on every row; grouping_id uses the daily 5-bit mask (+ 2 + 1).
-- time column: none (all dates in the lake)
-- partitions: none (recomputed whole from the daily run-level rows, which are small)
-- sources: train_health_daily, train_step_time_sketch_window, sketch_bounds
-- serve: train_health
-- audits: audits/train_health_totals.sql
--
-- Percentiles: as in train_health_daily, from train_step_time_sketch_window.

with

base as (
    select *
    from train_health_daily
    where grouping_id = 0  -- run × day: every run's steps, once
),

sketch as (
    select *
    from train_step_time_sketch_window
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
        cast(null as date) as date,
        'ALL' as run_id,
        grouping(model) * 16 + grouping(hardware) * 8 + grouping(precision) * 4 + 3 as grouping_id,
        coalesce(nullif(concat_ws(',',
            case when grouping(model) = 0 then 'model' end,
            case when grouping(hardware) = 0 then 'hardware' end,
            case when grouping(precision) = 0 then 'precision' end), ''), 'total') as agg_level,
        count(distinct run_id) as n_runs,
        sum(n_steps) as n_steps,
        sum(step_sum) as step_sum,
        min(step_min) as step_min,
        max(step_max) as step_max,
        min(first_ts) as first_ts,
        max(last_ts) as last_ts,
        min(struct_pack(ts := first_ts, step := first_step, run_id := first_run_id, loss := first_loss)) as first_point,
        max(struct_pack(ts := last_ts, step := last_step, run_id := last_run_id, loss := last_loss)) as last_point,
        sum(n_loss) as n_loss,
        sum(loss_sum) as loss_sum,
        min(loss_min) as loss_min,
        max(loss_max) as loss_max,
        sum(n_loss_nonfinite) as n_loss_nonfinite,
        sum(n_grad_norm) as n_grad_norm,
        sum(grad_norm_sum) as grad_norm_sum,
        max(grad_norm_max) as grad_norm_max,
        sum(n_grad_norm_nonfinite) as n_grad_norm_nonfinite,
        sum(n_step_time) as n_step_time,
        sum(step_time_ms_sum) as step_time_ms_sum,
        max(step_time_ms_max) as step_time_ms_max,
        sum(data_time_ms_sum) as data_time_ms_sum,
        sum(tokens) as tokens,
        sum(tokens_seconds) as tokens_seconds,
        sum(n_gpu_util) as n_gpu_util,
        sum(gpu_util_sum) as gpu_util_sum,
        max(gpu_mem_gb_peak) as gpu_mem_gb_max,
        max(gpu_mem_total_gb) as gpu_mem_total_gb,
        sum(n_mfu) as n_mfu,
        sum(mfu_sum) as mfu_sum
    from base
    group by grouping sets (
        (model, hardware, precision),
        (model, hardware),
        (model),
        (hardware, precision),
        (hardware),
        (precision),
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
        sketch.date,
        sketch.run_id,
        bounds.mid,
        sum(sketch.n) over (
            partition by sketch.grouping_id, sketch.model, sketch.hardware, sketch.precision,
                sketch.date, sketch.run_id
            order by sketch.bucket
            rows between unbounded preceding and current row) as n_cumulative,
        sum(sketch.n) over (
            partition by sketch.grouping_id, sketch.model, sketch.hardware, sketch.precision,
                sketch.date, sketch.run_id) as n_ranked
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
        date,
        run_id,
        min(mid) filter (where n_cumulative >= 0.50 * n_ranked) as p50,
        min(mid) filter (where n_cumulative >= 0.95 * n_ranked) as p95,
        min(mid) filter (where n_cumulative >= 0.99 * n_ranked) as p99
    from ranked_buckets
    group by grouping_id, model, hardware, precision, date, run_id
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
        and quantiles.date is not distinct from rolled_up.date
        and quantiles.run_id is not distinct from rolled_up.run_id
),

final as (
    select
        cast(model as varchar) as model,                          -- model slug or 'ALL'
        cast(hardware as varchar) as hardware,                    -- hardware fingerprint or 'ALL'
        cast(precision as varchar) as precision,                  -- precision or 'ALL'
        cast(date as date) as date,                               -- UTC date
        cast(run_id as varchar) as run_id,                        -- run or 'ALL'
        cast(grouping_id as integer) as grouping_id,              -- rolled-up dimensions, bitmask
        cast(agg_level as varchar) as agg_level,                  -- the dimensions kept
        cast(n_runs as bigint) as n_runs,                         -- runs with steps in the window
        cast(n_steps as bigint) as n_steps,                       -- optimizer steps logged
        cast(step_sum as bigint) as step_sum,                     -- sum of step numbers (audit checksum)
        cast(step_min as bigint) as step_min,                     -- smallest step number
        cast(step_max as bigint) as step_max,                     -- largest step number
        cast(first_ts as timestamptz) as first_ts,                -- earliest step time
        cast(last_ts as timestamptz) as last_ts,                  -- latest step time
        cast(first_point.run_id as varchar) as first_run_id,      -- run of the earliest step
        cast(first_point.step as bigint) as first_step,           -- step number of the earliest step
        cast(first_point.loss as double) as first_loss,           -- loss of the earliest step
        cast(last_point.run_id as varchar) as last_run_id,        -- run of the latest step
        cast(last_point.step as bigint) as last_step,             -- step number of the latest step
        cast(last_point.loss as double) as last_loss,             -- loss of the latest step (NaN kept)
        cast(n_loss as bigint) as n_loss,                         -- steps with a finite loss
        cast(loss_sum as double) as loss_sum,                     -- sum of finite losses
        cast(loss_sum / nullif(n_loss, 0) as double) as loss_mean, -- mean finite loss
        cast(loss_min as double) as loss_min,                     -- smallest finite loss
        cast(loss_max as double) as loss_max,                     -- largest finite loss
        cast(n_loss_nonfinite as bigint) as n_loss_nonfinite,     -- steps whose loss is NaN or ±inf
        cast(n_grad_norm as bigint) as n_grad_norm,               -- steps with a finite grad norm
        cast(grad_norm_sum as double) as grad_norm_sum,           -- sum of finite grad norms
        cast(grad_norm_sum / nullif(n_grad_norm, 0) as double) as grad_norm_mean, -- mean grad norm
        cast(grad_norm_max as double) as grad_norm_max,           -- largest finite grad norm
        cast(n_grad_norm_nonfinite as bigint) as n_grad_norm_nonfinite, -- NaN/inf grad norms
        cast(n_step_time as bigint) as n_step_time,               -- steps with a finite step time
        cast(step_time_ms_sum as double) as step_time_ms_sum,     -- total step time, ms
        cast(step_time_ms_sum / nullif(n_step_time, 0) as double) as step_time_ms_mean, -- mean, ms
        cast(step_time_ms_max as double) as step_time_ms_max,     -- slowest step, ms
        cast(p50 as double) as step_time_p50_ms,                  -- median step time, ms (≤ 1 % off)
        cast(p95 as double) as step_time_p95_ms,                  -- 95th percentile step time, ms
        cast(p99 as double) as step_time_p99_ms,                  -- 99th percentile step time, ms
        cast(data_time_ms_sum as double) as data_time_ms_sum,     -- time waiting for data, ms
        cast(data_time_ms_sum / nullif(step_time_ms_sum, 0) as double) as data_wait_share, -- of step time
        cast(tokens as double) as tokens,                         -- tokens processed
        cast(tokens_seconds as double) as tokens_seconds,         -- step time behind `tokens`, s
        cast(tokens / nullif(tokens_seconds, 0) as double) as tokens_per_s, -- throughput, tokens/s
        cast(n_gpu_util as bigint) as n_gpu_util,                 -- steps with a GPU utilization
        cast(gpu_util_sum as double) as gpu_util_sum,             -- sum of GPU utilization, percent
        cast(gpu_util_sum / nullif(n_gpu_util, 0) as double) as gpu_util_mean, -- mean GPU util, percent
        cast(gpu_mem_gb_max as double) as gpu_mem_gb_peak,        -- peak accelerator memory, GB
        cast(gpu_mem_total_gb as double) as gpu_mem_total_gb,     -- accelerator memory capacity, GB
        cast(n_mfu as bigint) as n_mfu,                           -- steps with an MFU
        cast(mfu_sum as double) as mfu_sum,                       -- sum of MFU
        cast(mfu_sum / nullif(n_mfu, 0) as double) as mfu_mean    -- mean MFU (0..1)
    from joined
)

select * from final
