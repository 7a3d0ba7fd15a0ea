-- rule: overfitting
-- purpose: validation loss rising while training loss still falls: the run has started to memorize
--   its training data; the best checkpoint is behind it.
-- grain: one row per training run with at least one overfit checkpoint; the range runs from the first
--   overfit checkpoint to the last.
-- scope: run (recomputed for the runs whose train_steps or eval_results changed)
-- subject: run_id
-- sources: eval_results, train_steps, diagnose_runs
-- params: suites strings; metric string; block_steps int >= 1; min_rise float > 0
-- audits: tests/pipelines/test_diagnose_rules.py (fires on a rising validation loss, quiet on the twin
--   where it keeps falling)
--
-- Validation evals are eval_results rows of the run's checkpoints (train_run_id) in the given suites
-- and metric (a loss: lower is better). Training loss at a checkpoint is the median training loss of
-- the block of block_steps logged steps (block_steps times the run's logging interval) holding the
-- checkpoint's step. A checkpoint overfits when its validation
-- loss is min_rise above the best earlier checkpoint's while its training loss is below that
-- checkpoint's: the gap grows. expected is the best validation loss, baseline names its checkpoint
-- (the one to roll back to).

with

evals as (
    select
        e.model,
        e.hardware,
        e.precision,
        e.train_run_id as run_id,
        e.checkpoint,
        e.checkpoint_step,
        e.ts,
        e.value
    from eval_results as e
    inner join diagnose_runs as r
        on r.run_id = e.train_run_id
    where e.suite in ({{ suites }})
        and e.metric = {{ metric }}
        and e.checkpoint_step is not null
        and abs(e.value) < cast('Infinity' as double)
),

checkpoints as (
    select
        model,
        hardware,
        run_id,
        checkpoint_step,
        max(precision) as precision,
        max(coalesce(checkpoint, concat('step ', cast(checkpoint_step as varchar)))) as checkpoint,
        max(ts) as ts,
        median(value) as val_loss
    from evals
    group by model, hardware, run_id, checkpoint_step
),

logged as (
    select
        s.run_id,
        s.step,
        s.loss
    from train_steps as s
    inner join diagnose_runs as r
        on r.run_id = s.run_id
    where abs(s.loss) < cast('Infinity' as double)
),

logging_intervals as (
    select
        run_id,
        greatest(1, round((max(step) - min(step)) / greatest(count(*) - 1, 1))) as step_interval
    from logged
    group by run_id
),

train_blocks as (
    select
        logged.run_id,
        cast(floor(logged.step / ({{ block_steps }} * logging_intervals.step_interval)) as bigint) as block,
        median(logged.loss) as train_loss
    from logged
    inner join logging_intervals
        on logging_intervals.run_id = logged.run_id
    group by logged.run_id, cast(floor(logged.step / ({{ block_steps }} * logging_intervals.step_interval)) as bigint)
),

with_train as (
    select
        checkpoints.*,
        train_blocks.train_loss
    from checkpoints
    left join logging_intervals
        on logging_intervals.run_id = checkpoints.run_id
    left join train_blocks
        on train_blocks.run_id = checkpoints.run_id
        and train_blocks.block = cast(floor(checkpoints.checkpoint_step
            / ({{ block_steps }} * logging_intervals.step_interval)) as bigint)
),

compared as (
    select
        cur.model,
        cur.hardware,
        cur.precision,
        cur.run_id,
        cur.checkpoint_step,
        cur.ts,
        cur.val_loss,
        cur.train_loss,
        min(prev.val_loss) as best_val,
        min_by(prev.train_loss, prev.val_loss) as best_train,
        min_by(prev.checkpoint, prev.val_loss) as best_checkpoint
    from with_train as cur
    inner join with_train as prev
        on prev.run_id = cur.run_id
        and prev.checkpoint_step < cur.checkpoint_step
    group by cur.model, cur.hardware, cur.precision, cur.run_id, cur.checkpoint_step, cur.ts, cur.val_loss,
        cur.train_loss
),

overfit as (
    select *
    from compared
    where val_loss > best_val + {{ min_rise }} * abs(best_val)
        and train_loss < best_train
),

per_run as (
    select
        model,
        hardware,
        run_id,
        max(precision) as precision,
        min(checkpoint_step) as step_start,
        max(checkpoint_step) as step_end,
        min(ts) as start_at,
        max(ts) as end_at,
        min_by(val_loss, checkpoint_step) as observed,
        min_by(best_val, checkpoint_step) as expected,
        min_by(best_checkpoint, checkpoint_step) as best_checkpoint,
        count(*) as n_points
    from overfit
    group by model, hardware, run_id
),

final as (
    select
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(precision as varchar) as precision,
        cast(run_id as varchar) as run_id,
        cast(null as varchar) as suite,
        cast({{ metric }} as varchar) as metric,
        cast(step_start as bigint) as step_start,
        cast(step_end as bigint) as step_end,
        cast(start_at as timestamptz) as start_at,
        cast(end_at as timestamptz) as end_at,
        cast(observed as double) as observed,
        cast(expected as double) as expected,
        cast(best_checkpoint as varchar) as baseline,
        cast(n_points as bigint) as n_points,
        cast(false as boolean) as escalate
    from per_run
)

select * from final
