-- rule: serving_saturation
-- purpose: a deployed model (model × hardware × precision) whose servers cannot keep up with its live
--   traffic: over a window of window_minutes its requests waiting (num_requests_waiting, tgi_queue_size,
--   nv_inference_pending_request_count) average max_queue_depth or more, or its KV cache is on average
--   max_cache_usage full or more, as its /metrics report them.
-- grain: one row per model × hardware × precision × episode (consecutive judged windows saturated); metric
--   names the signal of the first window (queue_depth or cache_usage).
-- scope: fleet (recomputed for the model × hardware pairs whose serving_scrapes changed)
-- subject: model, hardware, precision
-- sources: serving_scrapes, diagnose_pairs
-- params: window_minutes int >= 1; max_queue_depth float > 0; max_cache_usage float > 0 <= 1; min_scrapes int >= 1;
--   critical_ratio float > 1
-- audits: tests/pipelines/test_serving_cube.py (a real mhw serve slowed down under a fixed arrival
--   rate fires it; its healthy twin under the same arrivals stays quiet)
--
-- Gauges are sampled by the scrapes: a window's level is the mean of each target's samples, queue
-- depth summed over the model's targets (replicas' queues add up), cache usage averaged. A window
-- needs min_scrapes samples before it is judged: one scrape catching a burst is not saturation.

with

gauges as (
    select
        s.model,
        s.hardware,
        s.precision,
        s.target,
        s.metric,
        s.value,
        s.scraped_at as ts,
        cast(floor(date_diff('microsecond', cast('2000-01-01 00:00:00+00' as timestamptz), s.scraped_at)
            / (60e6 * {{ window_minutes }})) as bigint) as window_id
    from serving_scrapes as s
    inner join diagnose_pairs as p
        on p.model = s.model
        and p.hardware = s.hardware
    where s.metric in ('queue_depth', 'cache_usage')
),

per_target as (
    select
        model,
        hardware,
        precision,
        window_id,
        target,
        avg(value) filter (where metric = 'queue_depth') as queue_depth,
        avg(value) filter (where metric = 'cache_usage') as cache_usage,
        count(*) filter (where metric = 'queue_depth') as n_queue,
        count(*) filter (where metric = 'cache_usage') as n_cache,
        min(ts) as first_ts,
        max(ts) as last_ts
    from gauges
    group by model, hardware, precision, window_id, target
),

windows as (
    select
        model,
        hardware,
        precision,
        window_id,
        sum(queue_depth) filter (where n_queue >= {{ min_scrapes }}) as queue_depth,
        avg(cache_usage) filter (where n_cache >= {{ min_scrapes }}) as cache_usage,
        min(first_ts) as first_ts,
        max(last_ts) as last_ts
    from per_target
    group by model, hardware, precision, window_id
),

scored as (
    select
        *,
        coalesce(queue_depth / {{ max_queue_depth }}, 0.0) as queue_ratio,
        coalesce(cache_usage / {{ max_cache_usage }}, 0.0) as cache_ratio,
        row_number() over (partition by model, hardware, precision order by window_id) as window_number
    from windows
    where queue_depth is not null or cache_usage is not null  -- judged windows only
),

flagged as (
    select
        *,
        case when queue_ratio >= cache_ratio then 'queue_depth' else 'cache_usage' end as metric,
        case when queue_ratio >= cache_ratio then queue_depth else cache_usage end as observed,
        case when queue_ratio >= cache_ratio then {{ max_queue_depth }} else {{ max_cache_usage }} end as expected,
        greatest(queue_ratio, cache_ratio) as ratio
    from scored
    where queue_ratio >= 1 or cache_ratio >= 1
),

islands as (
    select
        *,
        window_number - row_number() over (partition by model, hardware, precision order by window_id) as island
    from flagged
),

episodes as (
    select
        model,
        hardware,
        precision,
        island,
        min_by(metric, window_id) as metric,
        min(first_ts) as start_at,
        max(last_ts) as end_at,
        min_by(observed, window_id) as observed,
        min_by(expected, window_id) as expected,
        count(*) as n_points,
        max(ratio) as worst_ratio
    from islands
    group by model, hardware, precision, island
),

final as (
    select
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(precision as varchar) as precision,
        cast(null as varchar) as run_id,
        cast(null as varchar) as suite,
        cast(metric as varchar) as metric,
        cast(null as bigint) as step_start,
        cast(null as bigint) as step_end,
        cast(start_at as timestamptz) as start_at,
        cast(end_at as timestamptz) as end_at,
        cast(observed as double) as observed,
        cast(expected as double) as expected,
        cast(concat('mean over ', cast({{ window_minutes }} as varchar), ' min at most max_', metric) as varchar)
            as baseline,
        cast(n_points as bigint) as n_points,
        cast(worst_ratio >= {{ critical_ratio }} as boolean) as escalate
    from episodes
)

select * from final
