-- rule: lr_schedule_anomaly
-- purpose: a learning rate that is not a number, negative, jumps up after the schedule has started to
--   decay, or climbs well past its warmup: a resume that restored the wrong scheduler state, a unit
--   mistake (a peak LR set below the schedule's floor, min_lr, makes the cosine climb), a schedule bug.
-- grain: one row per training run with at least one anomalous step; the range runs from the first
--   to the last.
-- scope: run (recomputed for the runs whose train_steps changed)
-- subject: run_id
-- sources: train_steps, diagnose_runs
-- params: jump_ratio float > 1; warmup_frac float > 0 < 1
-- audits: tests/pipelines/test_diagnose_rules.py (fires on a 10x jump after decay and on a NaN LR,
--   quiet on warmup + cosine); tests/pipelines/test_diagnose_real.py (real CPU trainings whose LR was
--   set below min_lr: the schedule climbs 3x and 3000x)
--
-- Warmup ramps up, so an increase is only suspect once the LR has decreased at least once; then an
-- increase by more than jump_ratio between two logged steps is an anomaly (cyclic schedules with warm
-- restarts should raise jump_ratio or disable the rule). And past the first warmup_frac of the run's
-- logged steps (longer than any warmup worth the name), the LR may not rise above jump_ratio times the
-- lowest LR logged since then: a schedule that climbs step by step never jumps, but ends far above
-- where it started.

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
        lag(lr) over (partition by run_id order by step) as prev_lr,
        row_number() over (partition by run_id order by step) - 1 as log_no,
        count(*) over (partition by run_id) as n_logs
    from steps
),

with_decay as (
    select
        *,
        max(case when lr < prev_lr then 1 else 0 end) over (
            partition by run_id order by step
            rows between unbounded preceding and 1 preceding) as has_decayed,
        min(case when log_no >= {{ warmup_frac }} * n_logs and lr >= 0 and lr < cast('Infinity' as double)
            then lr end) over (
            partition by run_id order by step
            rows between unbounded preceding and 1 preceding) as low_since_warmup
    from with_previous
),

anomalies as (
    select *
    from with_decay
    where not (lr >= 0 and lr < cast('Infinity' as double))
        or (has_decayed = 1 and lr > {{ jump_ratio }} * prev_lr)
        or (log_no >= {{ warmup_frac }} * n_logs and lr > {{ jump_ratio }} * low_since_warmup)
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
        min_by(case when has_decayed = 1 and lr > {{ jump_ratio }} * prev_lr then prev_lr
            else low_since_warmup end, step) as expected,
        min_by(case when has_decayed = 1 and lr > {{ jump_ratio }} * prev_lr then 'jump' else 'climb' end, step)
            as kind,
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
        cast(case when kind = 'jump' then 'lr of the previous logged step'
            else 'lowest lr logged since the warmup' end as varchar) as baseline,
        cast(n_points as bigint) as n_points,
        cast(false as boolean) as escalate
    from per_run
)

select * from final
