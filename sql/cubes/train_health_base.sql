-- model: train_health_base
-- purpose: training health of one run on one day, split by step-time bucket: the finest grain,
--   read once from raw train_steps; every rollup and every step-time percentile is merged from it.
-- grain: model × hardware × precision × date × run_id × step_time_bucket (null when step_time_ms is
--   null). Carrying the bucket in the grain lets one scan of the raw rows feed both the measures and
--   the step-time sketch.
-- time column: date (UTC date of train_steps.ts, the lake partition)
-- partitions: model, hardware, date (one file per lake partition; rebuilt only when its raw files change)
-- sources: train_steps, sketch_bounds
-- serve: none (served rolled up, as train_health and train_step_time_sketch)
-- audits: audits/train_health_totals.sql
--
-- Losses, grad norms and timings are split into finite values (summed, min/max) and NaN/inf counts,
-- so a diverged run shows up as counts instead of turning every mean above it into NaN. First and
-- last loss keep their ts and step so rollups merge them exactly with min/max of a struct
-- (ts, step, run_id, loss); here, inside one run, arg_min/arg_max by ts (3x cheaper than a struct
-- over 10M rows) — rows of one run with the same ts are duplicates.
-- The bucket is the log-bucket of pipelines/sketch.py (growth 1.02): floor(ln(x) / ln(1.02)) is only
-- a guess (it differs between engines right at bucket edges); the exact comparison with lo/hi read
-- from sketch_bounds decides. Constants: buckets -1100..1400, zero -5000, negatives -10000 - b,
-- -inf -20000, +inf 20000, NaN 30000.

with

steps as (
    select
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(precision as varchar) as precision,
        cast(date as date) as date,
        cast(run_id as varchar) as run_id,
        cast(step as bigint) as step,
        cast(ts as timestamptz) as ts,
        cast(loss as double) as loss,
        cast(grad_norm as double) as grad_norm,
        cast(tokens_per_s as double) as tokens_per_s,
        cast(step_time_ms as double) as step_time_ms,
        cast(data_time_ms as double) as data_time_ms,
        cast(gpu_util as double) as gpu_util,
        cast(gpu_mem_gb as double) as gpu_mem_gb,
        cast(gpu_mem_total_gb as double) as gpu_mem_total_gb,
        cast(mfu as double) as mfu
    from train_steps
),

bounds as (
    select bucket, lo, hi
    from sketch_bounds
    where lo is not null
),

classified as (
    select
        *,
        -- finite values only (NaN and ±inf become null), so plain count/sum/min/max skip them
        case when abs(loss) < cast('Infinity' as double) then loss end as finite_loss,
        case when abs(grad_norm) < cast('Infinity' as double) then grad_norm end as finite_grad_norm,
        case when abs(step_time_ms) < cast('Infinity' as double) then step_time_ms end as finite_step_time_ms,
        case
            when abs(step_time_ms) < cast('Infinity' as double) and abs(data_time_ms) < cast('Infinity' as double)
                then data_time_ms
        end as finite_data_time_ms,
        case
            when abs(step_time_ms) < cast('Infinity' as double) and abs(tokens_per_s) < cast('Infinity' as double)
                then tokens_per_s * step_time_ms / 1000.0
        end as step_tokens,
        case
            when abs(step_time_ms) < cast('Infinity' as double) and abs(tokens_per_s) < cast('Infinity' as double)
                then step_time_ms / 1000.0
        end as step_tokens_seconds,
        cast(greatest(least(floor(ln(
            case
                when abs(step_time_ms) > 0 and abs(step_time_ms) < cast('Infinity' as double)
                    then abs(step_time_ms)
                else 1.0
            end) / ln(1.02)), 1400), -1100) as integer) as step_time_guess
    from steps
),

bucketed as (
    select
        classified.*,
        case
            when classified.step_time_ms > 0 and classified.step_time_ms < cast('Infinity' as double) then
                case
                    when classified.step_time_ms < bounds.lo then classified.step_time_guess - 1
                    when classified.step_time_ms >= bounds.hi then classified.step_time_guess + 1
                    else classified.step_time_guess
                end
            when classified.step_time_ms is null then null
            when isnan(classified.step_time_ms) then 30000
            when classified.step_time_ms = cast('Infinity' as double) then 20000
            when classified.step_time_ms = cast('-Infinity' as double) then -20000
            when classified.step_time_ms = 0 then -5000
            else -10000 - (
                case
                    when abs(classified.step_time_ms) < bounds.lo then classified.step_time_guess - 1
                    when abs(classified.step_time_ms) >= bounds.hi then classified.step_time_guess + 1
                    else classified.step_time_guess
                end)
        end as step_time_bucket
    from classified
    left join bounds
        on bounds.bucket = classified.step_time_guess
),

per_run_day_bucket as (
    select
        model,
        hardware,
        precision,
        date,
        run_id,
        step_time_bucket,
        count(*) as n_steps,
        sum(step) as step_sum,
        min(step) as step_min,
        max(step) as step_max,
        min(ts) as first_ts,
        max(ts) as last_ts,
        -- one run's rows: ts orders them (rows of one run with the same ts are duplicates)
        arg_min(step, ts) as first_step,
        arg_min(loss, ts) as first_loss,
        arg_max(step, ts) as last_step,
        arg_max(loss, ts) as last_loss,
        count(finite_loss) as n_loss,
        sum(finite_loss) as loss_sum,
        min(finite_loss) as loss_min,
        max(finite_loss) as loss_max,
        count(loss) - count(finite_loss) as n_loss_nonfinite,
        count(finite_grad_norm) as n_grad_norm,
        sum(finite_grad_norm) as grad_norm_sum,
        max(finite_grad_norm) as grad_norm_max,
        count(grad_norm) - count(finite_grad_norm) as n_grad_norm_nonfinite,
        count(finite_step_time_ms) as n_step_time,
        sum(finite_step_time_ms) as step_time_ms_sum,
        max(finite_step_time_ms) as step_time_ms_max,
        sum(finite_data_time_ms) as data_time_ms_sum,
        sum(step_tokens) as tokens,
        sum(step_tokens_seconds) as tokens_seconds,
        count(gpu_util) as n_gpu_util,
        sum(gpu_util) as gpu_util_sum,
        max(gpu_mem_gb) as gpu_mem_gb_max,
        max(gpu_mem_total_gb) as gpu_mem_total_gb,
        count(mfu) as n_mfu,
        sum(mfu) as mfu_sum
    from bucketed
    group by model, hardware, precision, date, run_id, step_time_bucket
),

final as (
    select
        cast(model as varchar) as model,                      -- model slug
        cast(hardware as varchar) as hardware,                -- hardware fingerprint
        cast(precision as varchar) as precision,              -- fp32 | bf16 | fp16
        cast(date as date) as date,                           -- UTC date of the steps
        cast(run_id as varchar) as run_id,                    -- training run
        cast(step_time_bucket as integer) as step_time_bucket, -- log-bucket of step_time_ms (pipelines/sketch.py)
        cast(n_steps as bigint) as n_steps,                   -- rows (optimizer steps logged)
        cast(step_sum as bigint) as step_sum,                 -- sum of step numbers (audit checksum)
        cast(step_min as bigint) as step_min,                 -- first step number
        cast(step_max as bigint) as step_max,                 -- last step number
        cast(first_ts as timestamptz) as first_ts,            -- earliest step time
        cast(last_ts as timestamptz) as last_ts,              -- latest step time
        cast(first_step as bigint) as first_step,             -- step of the earliest row
        cast(first_loss as double) as first_loss,             -- loss of the earliest row (NaN kept)
        cast(last_step as bigint) as last_step,               -- step of the latest row
        cast(last_loss as double) as last_loss,               -- loss of the latest row (NaN kept)
        cast(n_loss as bigint) as n_loss,                     -- steps with a finite loss
        cast(loss_sum as double) as loss_sum,                 -- sum of finite losses
        cast(loss_min as double) as loss_min,                 -- smallest finite loss
        cast(loss_max as double) as loss_max,                 -- largest finite loss
        cast(n_loss_nonfinite as bigint) as n_loss_nonfinite, -- steps whose loss is NaN or ±inf
        cast(n_grad_norm as bigint) as n_grad_norm,           -- steps with a finite grad norm
        cast(grad_norm_sum as double) as grad_norm_sum,       -- sum of finite grad norms
        cast(grad_norm_max as double) as grad_norm_max,       -- largest finite grad norm
        cast(n_grad_norm_nonfinite as bigint) as n_grad_norm_nonfinite, -- NaN/inf grad norms
        cast(n_step_time as bigint) as n_step_time,           -- steps with a finite step time
        cast(step_time_ms_sum as double) as step_time_ms_sum, -- total step time, ms
        cast(step_time_ms_max as double) as step_time_ms_max, -- slowest step, ms
        cast(data_time_ms_sum as double) as data_time_ms_sum, -- total time waiting for data, ms
        cast(tokens as double) as tokens,                     -- tokens processed (tokens/s × step time)
        cast(tokens_seconds as double) as tokens_seconds,     -- step time behind `tokens`, s
        cast(n_gpu_util as bigint) as n_gpu_util,             -- steps with a GPU utilization
        cast(gpu_util_sum as double) as gpu_util_sum,         -- sum of GPU utilization, percent
        cast(gpu_mem_gb_max as double) as gpu_mem_gb_max,     -- peak accelerator memory, GB
        cast(gpu_mem_total_gb as double) as gpu_mem_total_gb, -- accelerator memory capacity, GB
        cast(n_mfu as bigint) as n_mfu,                       -- steps with an MFU
        cast(mfu_sum as double) as mfu_sum                    -- sum of MFU (0..1)
    from per_run_day_bucket
)

select * from final
