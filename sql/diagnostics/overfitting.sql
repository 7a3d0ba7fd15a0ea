-- rule: overfitting
-- purpose: validation loss risen above its best checkpoint and staying there while training loss still
--   falls: the run has started to memorize its training data; the best checkpoint is behind it.
-- grain: one row per training run and eval suite that is overfitting as of its latest checkpoint; the
--   range runs from the first checkpoint after the best to the latest.
-- scope: run (recomputed for the runs whose train_steps or eval_results changed)
-- subject: run_id, suite
-- sources: eval_results, run_steps, diagnose_runs
-- params: suites strings; metric string; min_rise float > 0; noise_z float >= 0; min_after int >= 1;
--   single_rise float > 0; train_points int >= 1
-- audits: tests/pipelines/test_diagnose_rules.py (fires on a rising validation loss, quiet on the twin
--   where it keeps falling); tests/pipelines/test_diagnose_real.py (real HF logs: fires on overfitting
--   runs logged once per epoch or every 500 steps, quiet on converged runs whose eval loss only jitters)
--
-- Validation evals are eval_results rows of the run's checkpoints (train_run_id) with the given metric
-- (a loss: lower is better) in one of the given suites, or in a suite named after one of them plus
-- '-<set>' (a Trainer evaluating several sets logs eval_<set>_loss: hf-eval-<set>). Each suite is
-- judged on its own, as of its latest checkpoint L, against the best checkpoint B before it:
--   - at least min_after checkpoints came after B (one bad eval is not a trend; unless it is worse by
--     single_rise of B's value: a short run evaluated every third of the way), and both their median
--     and L's value are above B's value by min_rise of it (relative: scale-free) and by noise_z times
--     the suite's own checkpoint-to-checkpoint noise. The noise sigma is the median absolute third
--     difference of the suite's values / (0.6745 * sqrt 20): third differences cancel a trend and its
--     bend, so a curve that falls smoothly and turns (8 evals of a power law that starts to overfit)
--     has a small noise and a jittering plateau a large one (its lowest point is a low draw, and what
--     follows sits only a sigma or two above it); with fewer than 6 checkpoints only min_rise applies;
--   - the training loss near L is below the training loss near B: the gap grows. "Near a step" is the
--     median of the training losses logged in the window before it: train_points logging intervals
--     of the run, or one eval interval of the suite if that is longer, so one log per epoch and one
--     per step are judged alike.
-- A run that reaches a new best has B move up to it: its alert goes away when that checkpoint is
-- diagnosed. expected is B's loss, baseline names B (the checkpoint to roll back to), observed L's.

with

evals as (
    select
        e.model,
        e.hardware,
        e.precision,
        e.train_run_id as run_id,
        e.suite,
        e.checkpoint,
        e.checkpoint_step,
        e.ts,
        e.value
    from eval_results as e
    inner join diagnose_runs as r
        on r.run_id = e.train_run_id
    where (e.suite in ({{ suites }}) or regexp_replace(e.suite, '-[^-]+$', '') in ({{ suites }}))
        and e.metric = {{ metric }}
        and e.checkpoint_step is not null
        and abs(e.value) < cast('Infinity' as double)
),

checkpoints as (
    select
        model,
        hardware,
        run_id,
        suite,
        checkpoint_step,
        max(precision) as precision,
        max(coalesce(checkpoint, concat('step ', cast(checkpoint_step as varchar)))) as checkpoint,
        max(ts) as ts,
        median(value) as val_loss
    from evals
    group by model, hardware, run_id, suite, checkpoint_step
),

ordered as (
    select
        *,
        row_number() over (partition by run_id, suite order by checkpoint_step) as k
    from checkpoints
),

third_differences as (
    select
        cur.run_id,
        cur.suite,
        abs(cur.val_loss - 3 * m1.val_loss + 3 * m2.val_loss - m3.val_loss) as d3
    from ordered as cur
    inner join ordered as m1
        on m1.run_id = cur.run_id and m1.suite = cur.suite and m1.k = cur.k - 1
    inner join ordered as m2
        on m2.run_id = cur.run_id and m2.suite = cur.suite and m2.k = cur.k - 2
    inner join ordered as m3
        on m3.run_id = cur.run_id and m3.suite = cur.suite and m3.k = cur.k - 3
),

noise as (
    select
        run_id,
        suite,
        median(d3) / (0.6745 * sqrt(20.0)) as sigma
    from third_differences
    group by run_id, suite
    having count(*) >= 3
),

latest as (
    select
        run_id,
        suite,
        max(checkpoint_step) as last_step,
        max_by(val_loss, checkpoint_step) as last_loss,
        max(ts) as last_ts,
        max(precision) as precision,
        (max(checkpoint_step) - min(checkpoint_step)) / greatest(count(*) - 1, 1) as eval_interval
    from ordered
    group by run_id, suite
),

best as (
    select
        ordered.model,
        ordered.hardware,
        ordered.run_id,
        ordered.suite,
        min(ordered.val_loss) as best_loss,
        min_by(ordered.checkpoint_step, ordered.val_loss) as best_step,
        min_by(ordered.checkpoint, ordered.val_loss) as best_checkpoint
    from ordered
    inner join latest
        on latest.run_id = ordered.run_id and latest.suite = ordered.suite
    where ordered.checkpoint_step < latest.last_step
    group by ordered.model, ordered.hardware, ordered.run_id, ordered.suite
),

after_best as (
    select
        best.run_id,
        best.suite,
        count(*) as n_after,
        median(ordered.val_loss) as after_loss,
        min(ordered.checkpoint_step) as onset_step,
        min(ordered.ts) as onset_ts
    from best
    inner join ordered
        on ordered.run_id = best.run_id
        and ordered.suite = best.suite
        and ordered.checkpoint_step > best.best_step
    group by best.run_id, best.suite
),

logged as (
    select
        s.run_id,
        s.step,
        s.loss
    from run_steps as s
    where s.loss_log_no is not null
),

logging_intervals as (
    select
        run_id,
        greatest(1, (max(step) - min(step)) / greatest(count(*) - 1, 1)) as step_interval
    from logged
    group by run_id
),

anchors as (
    select
        best.run_id,
        best.suite,
        best.best_step,
        latest.last_step,
        greatest({{ train_points }} * logging_intervals.step_interval, latest.eval_interval) as train_window
    from best
    inner join latest
        on latest.run_id = best.run_id and latest.suite = best.suite
    inner join logging_intervals
        on logging_intervals.run_id = best.run_id
),

train_near as (
    select
        anchors.run_id,
        anchors.suite,
        median(logged.loss) filter (where logged.step <= anchors.best_step
            and logged.step > anchors.best_step - anchors.train_window) as train_at_best,
        median(logged.loss) filter (where logged.step <= anchors.last_step
            and logged.step > anchors.last_step - anchors.train_window) as train_at_last
    from anchors
    inner join logged
        on logged.run_id = anchors.run_id
        and logged.step <= anchors.last_step
        and logged.step > anchors.best_step - anchors.train_window
    group by anchors.run_id, anchors.suite
),

overfit as (
    select
        best.*,
        latest.precision,
        latest.last_step,
        latest.last_loss,
        latest.last_ts,
        after_best.n_after,
        after_best.onset_step,
        after_best.onset_ts
    from best
    inner join latest
        on latest.run_id = best.run_id and latest.suite = best.suite
    inner join after_best
        on after_best.run_id = best.run_id and after_best.suite = best.suite
    inner join train_near
        on train_near.run_id = best.run_id and train_near.suite = best.suite
    left join noise
        on noise.run_id = best.run_id and noise.suite = best.suite
    where (after_best.n_after >= {{ min_after }}
            or latest.last_loss - best.best_loss > {{ single_rise }} * abs(best.best_loss))
        and after_best.after_loss - best.best_loss > {{ min_rise }} * abs(best.best_loss)
        and latest.last_loss - best.best_loss > {{ min_rise }} * abs(best.best_loss)
        and after_best.after_loss - best.best_loss > {{ noise_z }} * coalesce(noise.sigma, 0)
        and latest.last_loss - best.best_loss > {{ noise_z }} * coalesce(noise.sigma, 0)
        and train_near.train_at_last < train_near.train_at_best
),

final as (
    select
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(precision as varchar) as precision,
        cast(run_id as varchar) as run_id,
        cast(suite as varchar) as suite,
        cast({{ metric }} as varchar) as metric,
        cast(onset_step as bigint) as step_start,
        cast(last_step as bigint) as step_end,
        cast(onset_ts as timestamptz) as start_at,
        cast(last_ts as timestamptz) as end_at,
        cast(last_loss as double) as observed,
        cast(best_loss as double) as expected,
        cast(best_checkpoint as varchar) as baseline,
        cast(n_after as bigint) as n_points,
        cast(false as boolean) as escalate
    from overfit
)

select * from final
