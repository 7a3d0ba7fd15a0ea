-- model: eval_results_base
-- purpose: evaluation results of one run's checkpoint on one day per suite and metric: the finest
--   grain, read once from raw eval_results; the eval cube merges from it.
-- grain: model × hardware × precision × date × checkpoint_step × run_id × suite × metric, where
--   run_id is the training run the checkpoint came from (eval_results.train_run_id), else the eval
--   run (imports of a bare checkpoint name no training run)
-- time column: date (UTC date of eval_results.ts, the lake partition)
-- partitions: model, hardware, date (one file per lake partition; rebuilt only when its raw files change)
-- sources: eval_results
-- serve: none (served rolled up, as eval_health)
-- audits: audits/eval_totals.sql
--
-- Values are split into finite (summed, min/max) and NaN/inf counts; the latest measurement keeps
-- its (ts, eval run_id) so rollups merge it exactly with max of a struct. The run is in the grain
-- because runs share checkpoint steps (every run has a step 100, 200 …): without it two runs of one
-- model × hardware evaluated on one day would be averaged into one checkpoint.

with

results as (
    select
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(precision as varchar) as precision,
        cast(date as date) as date,
        cast(checkpoint_step as bigint) as checkpoint_step,
        cast(coalesce(train_run_id, run_id) as varchar) as checkpoint_run_id,
        cast(suite as varchar) as suite,
        cast(metric as varchar) as metric,
        cast(run_id as varchar) as run_id,
        cast(ts as timestamptz) as ts,
        cast(value as double) as value,
        cast(n as bigint) as n
    from eval_results
),

classified as (
    select
        *,
        abs(value) < cast('Infinity' as double) as is_value_finite,
        isnan(value) or abs(value) = cast('Infinity' as double) as is_value_nonfinite
    from results
),

per_checkpoint_metric_day as (
    select
        model,
        hardware,
        precision,
        date,
        checkpoint_step,
        checkpoint_run_id,
        suite,
        metric,
        count(*) as n_results,
        count(*) filter (where is_value_finite) as n_value,
        sum(value) filter (where is_value_finite) as value_sum,
        min(value) filter (where is_value_finite) as value_min,
        max(value) filter (where is_value_finite) as value_max,
        count(*) filter (where is_value_nonfinite) as n_value_nonfinite,
        sum(n) as n_examples,
        max(struct_pack(ts := ts, run_id := run_id, value := value)) as last_point
    from classified
    group by model, hardware, precision, date, checkpoint_step, checkpoint_run_id, suite, metric
),

final as (
    select
        cast(model as varchar) as model,                    -- model slug
        cast(hardware as varchar) as hardware,              -- hardware fingerprint
        cast(precision as varchar) as precision,            -- precision evaluated in
        cast(date as date) as date,                         -- UTC date of the measurements
        cast(checkpoint_step as bigint) as checkpoint_step, -- training step of the checkpoint
        cast(checkpoint_run_id as varchar) as run_id,       -- training run of the checkpoint, else the eval run
        cast(suite as varchar) as suite,                    -- quality | robustness | latency | …
        cast(metric as varchar) as metric,                  -- loss, accuracy, f1, …
        cast(n_results as bigint) as n_results,             -- measurements
        cast(n_value as bigint) as n_value,                 -- measurements with a finite value
        cast(value_sum as double) as value_sum,             -- sum of finite values
        cast(value_min as double) as value_min,             -- smallest finite value
        cast(value_max as double) as value_max,             -- largest finite value
        cast(n_value_nonfinite as bigint) as n_value_nonfinite, -- NaN or ±inf values
        cast(n_examples as bigint) as n_examples,           -- examples behind the values
        cast(last_point.ts as timestamptz) as last_ts,      -- time of the latest measurement
        cast(last_point.run_id as varchar) as last_run_id,  -- eval run of the latest measurement
        cast(last_point.value as double) as last_value      -- latest value (NaN kept)
    from per_checkpoint_metric_day
)

select * from final
