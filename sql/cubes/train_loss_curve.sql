-- model: train_loss_curve
-- purpose: the loss curve of every training run at step resolution, for dashboards (loss per run
--   against the step): finite loss mean/min/max, the last loss, and NaN/inf counts per step bucket,
--   read from raw train_steps (the daily cubes have no step grain).
-- grain: model × hardware × precision × date × run_id × step_start (one step bucket of the run on one
--   day; a bucket that spans midnight has a row per day, merged with sums/min/max or arg_max by last_ts).
--   Bucket width depends on the step alone, so any partition computes it without seeing the rest of
--   the run: 64 steps below step 1024, then 2^(k-3) in the octave [2^k, 2^(k+1)): 8 buckets per
--   octave, at most ~100 per run up to 2^20 steps. k is floor(log2(step)) guessed by log2 and
--   corrected by exact comparison with powers of two (the engines' log2 differ in the last bit).
--   Rows with a null step are left out.
-- time column: date (UTC date of train_steps.ts, the lake partition)
-- partitions: model, hardware, date (one file per lake partition; rebuilt only when its raw files change)
-- sources: train_steps
-- serve: loss_curve (x = step_start, one series per run_id)
-- audits: tests/dashboards/test_superset.py (the Loss per run chart equals this table)

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
        cast(loss as double) as loss
    from train_steps
    where step is not null
),

guessed as (
    select
        *,
        case when abs(loss) < cast('Infinity' as double) then loss end as finite_loss,
        cast(floor(log2(cast(greatest(step, 1) as double))) as integer) as octave_guess
    from steps
),

octaves as (
    select
        *,
        octave_guess
            - (case when power(2.0, octave_guess) > greatest(step, 1) then 1 else 0 end)
            + (case when power(2.0, octave_guess + 1) <= greatest(step, 1) then 1 else 0 end) as octave
    from guessed
),

bucketed as (
    select
        *,
        cast(power(2.0, greatest(octave, 9) - 3) as bigint) as step_width
    from octaves
),

per_bucket as (
    select
        model,
        hardware,
        precision,
        date,
        run_id,
        (step - (step % step_width + step_width) % step_width) as step_start,
        step_width,
        count(*) as n_steps,
        min(step) as step_min,
        max(step) as step_max,
        min(ts) as first_ts,
        max(ts) as last_ts,
        -- the latest row: by ts, then step (a run may log several steps with one ts)
        max(struct_pack(ts := ts, step := step, loss := loss)) as last_row,
        count(finite_loss) as n_loss,
        sum(finite_loss) as loss_sum,
        min(finite_loss) as loss_min,
        max(finite_loss) as loss_max,
        count(loss) - count(finite_loss) as n_loss_nonfinite
    from bucketed
    group by model, hardware, precision, date, run_id, step - (step % step_width + step_width) % step_width,
        step_width
),

final as (
    select
        cast(model as varchar) as model,                      -- model slug
        cast(hardware as varchar) as hardware,                -- hardware fingerprint
        cast(precision as varchar) as precision,              -- fp32 | bf16 | fp16
        cast(date as date) as date,                           -- UTC date of the steps
        cast(run_id as varchar) as run_id,                    -- training run
        cast(step_start as bigint) as step_start,             -- first step of the bucket
        cast(step_width as bigint) as step_width,             -- steps per bucket (64, then 8 per octave)
        cast(n_steps as bigint) as n_steps,                   -- rows (optimizer steps logged)
        cast(step_min as bigint) as step_min,                 -- first step logged in the bucket
        cast(step_max as bigint) as step_max,                 -- last step logged in the bucket
        cast(first_ts as timestamptz) as first_ts,            -- earliest step time
        cast(last_ts as timestamptz) as last_ts,              -- latest step time
        cast(last_row.step as bigint) as last_step,           -- step of the latest row (ts, then step)
        cast(last_row.loss as double) as last_loss,           -- loss of the latest row (NaN kept)
        cast(n_loss as bigint) as n_loss,                     -- steps with a finite loss
        cast(loss_sum as double) as loss_sum,                 -- sum of finite losses
        cast(loss_min as double) as loss_min,                 -- smallest finite loss
        cast(loss_max as double) as loss_max,                 -- largest finite loss
        cast(n_loss_nonfinite as bigint) as n_loss_nonfinite  -- steps whose loss is NaN or ±inf
    from per_bucket
)

select * from final
