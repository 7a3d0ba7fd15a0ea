-- rule: lr_schedule_anomaly
-- purpose: a learning rate that is not a number, negative, or jumps up after the schedule has started
--   to decay: a resume that restored the wrong scheduler state, a unit mistake, a schedule bug.
-- grain: one row per training run with at least one anomalous step; the range runs from the first
--   to the last.
-- scope: run (recomputed for the runs whose train_steps changed)
-- subject: run_id
-- sources: train_steps, diagnose_runs
-- params: jump_ratio float > 1
-- audits: tests/pipelines/test_diagnose_rules.py (fires on a 10x jump after decay and on a NaN LR,
--   quiet on warmup + cosine)
--
-- Warmup ramps up, so an increase is only suspect once the LR has decreased at least once; then an
-- increase by more than jump_ratio between two logged steps is an anomaly (cyclic schedules with warm
-- restarts should raise jump_ratio or disable the rule).

with

steps as (
    select
        s.model,
        s.hardware,
        s.precision,
        s.run_id,
        s.step,
        s.ts,
        s.lr
    from train_steps as s
    inner join diagnose_runs as r
        on r.run_id = s.run_id
    where s.lr is not null
),

with_previous as (
    select
        *,
        lag(lr) over (partition by run_id order by step) as prev_lr
    from steps
),

with_decay as (
    select
        *,
        max(case when lr < prev_lr then 1 else 0 end) over (
            partition by run_id order by step
            rows between unbounded preceding and 1 preceding) as has_decayed
    from with_previous
),

anomalies as (
    select *
    from with_decay
    where not (lr >= 0 and lr < cast('Infinity' as double))
        or (has_decayed = 1 and lr > {{ jump_ratio }} * prev_lr)
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
        min_by(lr, step) as observed,
        min_by(prev_lr, step) as expected,
        count(*) as n_points
    from anomalies
    group by model, hardware, run_id
),

final as (
    select
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(precision as varchar) as precision,
        cast(run_id as varchar) as run_id,
        cast(null as varchar) as suite,
        cast('lr' as varchar) as metric,
        cast(step_start as bigint) as step_start,
        cast(step_end as bigint) as step_end,
        cast(start_at as timestamptz) as start_at,
        cast(end_at as timestamptz) as end_at,
        cast(observed as double) as observed,
        cast(expected as double) as expected,
        cast('lr of the previous logged step' as varchar) as baseline,
        cast(n_points as bigint) as n_points,
        cast(false as boolean) as escalate
    from per_run
)

select * from final
