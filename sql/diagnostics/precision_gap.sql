-- rule: precision_gap
-- purpose: a reduced-precision variant of a model (int8, fp16, bf16) that loses more quality against
--   the reference precision (fp32) on the same hardware, suite and day than it should: a bad
--   quantization calibration, a kernel bug on that hardware, an overflow.
-- grain: one row per model × hardware × reduced precision × episode (consecutive evaluated days with
--   a gap); suite and metric name the worst series on the first day.
-- scope: fleet (recomputed for the model × hardware pairs whose eval_results changed)
-- subject: model, hardware, precision
-- sources: eval_results, diagnose_pairs, metric_directions
-- params: suites strings; reference string; precisions strings; max_rel_gap float > 0; critical_rel_gap float > 0
-- audits: tests/pipelines/test_diagnose_rules.py (fires when int8 loses 4 accuracy points, quiet at 0.4)
--
-- Per model × hardware × precision × suite × metric × day: the median value. The gap is how much
-- worse the reduced precision is than the reference, relative to the reference, in the metric's
-- direction (metric_directions).

with

evals as (
    select
        e.model,
        e.hardware,
        e.precision,
        e.suite,
        e.metric,
        e.date,
        e.ts,
        e.value,
        d.direction
    from eval_results as e
    inner join diagnose_pairs as p
        on p.model = e.model
        and p.hardware = e.hardware
    inner join metric_directions as d
        on d.metric = e.metric
    where e.suite in ({{ suites }})
        and (e.precision in ({{ precisions }}) or e.precision = {{ reference }})
        and abs(e.value) < cast('Infinity' as double)
),

daily as (
    select
        model,
        hardware,
        precision,
        suite,
        metric,
        date,
        max(direction) as direction,
        median(value) as value,
        min(ts) as first_ts,
        max(ts) as last_ts
    from evals
    group by model, hardware, precision, suite, metric, date
),

gaps as (
    select
        low.model,
        low.hardware,
        low.precision,
        low.suite,
        low.metric,
        low.date,
        low.first_ts,
        low.last_ts,
        low.value as observed,
        ref.value as expected,
        low.direction * (ref.value - low.value) / nullif(abs(ref.value), 0) as rel_gap
    from daily as low
    inner join daily as ref
        on ref.model = low.model
        and ref.hardware = low.hardware
        and ref.suite = low.suite
        and ref.metric = low.metric
        and ref.date = low.date
        and ref.precision = {{ reference }}
    where low.precision in ({{ precisions }})
),

subject_days as (
    select
        model,
        hardware,
        precision,
        date,
        max(case when rel_gap > {{ max_rel_gap }} then 1 else 0 end) as is_flagged,
        count(*) filter (where rel_gap > {{ max_rel_gap }}) as n_gapped,
        max(rel_gap) as worst_gap,
        max_by(suite, rel_gap) as suite,
        max_by(metric, rel_gap) as metric,
        max_by(observed, rel_gap) as observed,
        max_by(expected, rel_gap) as expected,
        min(first_ts) as first_ts,
        max(last_ts) as last_ts
    from gaps
    group by model, hardware, precision, date
),

numbered as (
    select
        *,
        row_number() over (partition by model, hardware, precision order by date) as day_number
    from subject_days
),

islands as (
    select
        *,
        day_number - row_number() over (partition by model, hardware, precision order by date) as island
    from numbered
    where is_flagged = 1
),

episodes as (
    select
        model,
        hardware,
        precision,
        island,
        min_by(suite, date) as suite,
        min_by(metric, date) as metric,
        min(first_ts) as start_at,
        max(last_ts) as end_at,
        min_by(observed, date) as observed,
        min_by(expected, date) as expected,
        sum(n_gapped) as n_points,
        max(worst_gap) as worst_gap
    from islands
    group by model, hardware, precision, island
),

final as (
    select
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(precision as varchar) as precision,
        cast(null as varchar) as run_id,
        cast(suite as varchar) as suite,
        cast(metric as varchar) as metric,
        cast(null as bigint) as step_start,
        cast(null as bigint) as step_end,
        cast(start_at as timestamptz) as start_at,
        cast(end_at as timestamptz) as end_at,
        cast(observed as double) as observed,
        cast(expected as double) as expected,
        cast(concat({{ reference }}, ' on the same hardware, suite and day') as varchar) as baseline,
        cast(n_points as bigint) as n_points,
        cast(worst_gap >= {{ critical_rel_gap }} as boolean) as escalate
    from episodes
)

select * from final
