-- rule: divergence
-- purpose: a training run whose loss became NaN or ±inf: the optimizer diverged (or an fp overflow
--   poisoned the weights). Everything the run does after that step is wasted compute.
-- grain: one row per training run with at least min_nonfinite_steps non-finite losses; the range
--   runs from the first to the last non-finite step seen.
-- scope: run (recomputed for the runs whose train_steps changed)
-- subject: run_id
-- sources: run_steps
-- params: min_nonfinite_steps int >= 1
-- audits: tests/pipelines/test_diagnose_rules.py (fires on a NaN loss, quiet on its finite twin)
--
-- observed is the first non-finite loss (NaN or inf, kept as data); expected the last finite loss
-- before it. A non-finite grad norm alone (fp16 loss scaling skips such steps by design) is not a
-- divergence.

with

steps as (
    select
        s.model,
        s.hardware,
        s.precision,
        s.run_id,
        s.step,
        s.ts,
        s.loss,
        not (abs(s.loss) < cast('Infinity' as double)) as is_nonfinite
    from run_steps as s
    where s.loss is not null
),

per_run as (
    select
        model,
        hardware,
        run_id,
        max(precision) as precision,
        min(step) as step_start,
        max(step) as step_end,
        min(ts) as start_at,
        max(ts) as end_at,
        min_by(loss, step) as observed,
        count(*) as n_points
    from steps
    where is_nonfinite
    group by model, hardware, run_id
    having count(*) >= {{ min_nonfinite_steps }}
),

last_finite as (
    select
        steps.run_id,
        max(steps.step) as last_good_step,
        max_by(steps.loss, steps.step) as expected
    from steps
    inner join per_run
        on per_run.run_id = steps.run_id
    where not steps.is_nonfinite
        and steps.step < per_run.step_start
    group by steps.run_id
),

final as (
    select
        cast(per_run.model as varchar) as model,
        cast(per_run.hardware as varchar) as hardware,
        cast(per_run.precision as varchar) as precision,
        cast(per_run.run_id as varchar) as run_id,
        cast(null as varchar) as suite,
        cast('loss' as varchar) as metric,
        cast(per_run.step_start as bigint) as step_start,
        cast(per_run.step_end as bigint) as step_end,
        cast(per_run.start_at as timestamptz) as start_at,
        cast(per_run.end_at as timestamptz) as end_at,
        cast(per_run.observed as double) as observed,
        cast(last_finite.expected as double) as expected,
        cast(case
            when last_finite.last_good_step is null then 'no finite loss before it'
            else concat('last finite loss, step ', cast(last_finite.last_good_step as varchar))
        end as varchar) as baseline,
        cast(per_run.n_points as bigint) as n_points,
        cast(false as boolean) as escalate
    from per_run
    left join last_finite
        on last_finite.run_id = per_run.run_id
)

select * from final
