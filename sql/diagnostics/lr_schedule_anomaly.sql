-- rule: lr_schedule_anomaly
-- purpose: a learning rate that is not a number, negative, jumps up after the schedule has started to
--   decay, or climbs well past its warmup: a resume that restored the wrong scheduler state, a unit
--   mistake (a peak LR set below the schedule's floor, min_lr, makes the cosine climb), a schedule bug.
-- grain: one row per training run with at least one anomalous step; the range runs from the first
--   to the last.
-- scope: run (recomputed for the runs whose train_steps changed)
-- subject: run_id
-- sources: run_steps, runs
-- params: jump_ratio float > 1
-- audits: tests/pipelines/test_diagnose_rules.py (fires on a 10x jump after decay and on a NaN LR,
--   quiet on warmup + cosine); tests/pipelines/test_diagnose_real.py (real CPU trainings whose LR was
--   set below min_lr: the schedule climbs 3x and 3000x)
--
-- Warmup ramps up, so an increase is only suspect once the LR has decreased at least once; then an
-- increase by more than jump_ratio between two logged steps is an anomaly (cyclic schedules with warm
-- restarts should raise jump_ratio or disable the rule). And after its warmup -- the one the job
-- declared in its config (trainer.warmup_steps, MLPerf's opt_learning_rate_warmup_steps/_epochs), else
-- from the LR's first decrease -- the LR may not rise above jump_ratio times the lowest LR logged since
-- then: a schedule that climbs step by step never jumps, but ends far above where it started. A run
-- whose LR only rises and that declares no warmup is not judged for a climb (a long warmup looks the
-- same).

with

steps as (
    -- what the per-step work needs, on integers (the run's number and the step's place among its
    -- logged LRs); the anomalies get their model, hardware, precision and time at the end
    select
        s.run_no,
        s.run_id,
        s.step,
        s.lr,
        s.lr_log_no
    from run_steps as s
    where s.lr is not null
),

with_previous as (
    select
        *,
        lag(lr) over (partition by run_no order by lr_log_no) as prev_lr
    from steps
),

declared_warmups as (
    -- the warmup a job declared in its config: this trainer's trainer.warmup_steps, MLPerf's
    -- opt_learning_rate_warmup_steps / _epochs (in the unit its steps are logged in)
    select
        run_id,
        max(coalesce(
            cast(json_extract_string(config_json, '$.trainer.warmup_steps') as double),
            cast(json_extract_string(config_json, '$.opt_learning_rate_warmup_steps') as double),
            cast(json_extract_string(config_json, '$.opt_learning_rate_warmup_epochs') as double),
            cast(json_extract_string(config_json, '$.lars_opt_learning_rate_warmup_epochs') as double),
            cast(json_extract_string(config_json, '$.num_warmup_steps') as double))) as warmup
    from runs
    group by run_id
),

warmup_ends as (
    -- declared, else the first step whose LR is below the one before (decay has begun); a run with
    -- neither (its LR only ever rose, its warmup unknown) is not judged for a climb
    select
        with_previous.run_no,
        min(case when with_previous.lr < with_previous.prev_lr then with_previous.step end) as first_decay,
        coalesce(max(declared_warmups.warmup), min(case when with_previous.lr < with_previous.prev_lr
            then with_previous.step end)) as warm_end
    from with_previous
    left join declared_warmups
        on declared_warmups.run_id = with_previous.run_id
    group by with_previous.run_no
),

with_decay as (
    select
        with_previous.*,
        -- decay has begun before this step: the run's first decrease is earlier (no window needed)
        case when warmup_ends.first_decay < with_previous.step then 1 else 0 end as has_decayed,
        min(case when with_previous.step >= warmup_ends.warm_end and with_previous.lr >= 0
            and with_previous.lr < cast('Infinity' as double) then with_previous.lr end) over (
            partition by with_previous.run_no order by with_previous.lr_log_no
            rows between unbounded preceding and 1 preceding) as low_since_warmup,
        warmup_ends.warm_end
    from with_previous
    inner join warmup_ends
        on warmup_ends.run_no = with_previous.run_no
),

flagged as (
    select *
    from with_decay
    where not (lr >= 0 and lr < cast('Infinity' as double))
        or (has_decayed = 1 and lr > {{ jump_ratio }} * prev_lr)
        or (step > warm_end and lr > {{ jump_ratio }} * low_since_warmup)
),

anomalies as (
    select
        flagged.*,
        s.model,
        s.hardware,
        s.precision,
        s.ts
    from flagged
    inner join run_steps as s
        on s.run_no = flagged.run_no
        and s.step = flagged.step
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
