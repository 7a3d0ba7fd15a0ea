-- rule: serving_error_breach
-- purpose: a deployed model (model × hardware × precision) whose live traffic fails: the share of its
--   requests that fail on the server's side (5xx, aborts, timeouts; not the clients' 4xx) exceeds
--   max_error_rate over a window of window_minutes, from its servers' /metrics (scrape deltas) or
--   from its per-request logs.
-- grain: one row per model × hardware × precision × source × episode (consecutive judged windows in
--   breach: windows with too few requests to judge neither break nor extend one).
-- scope: fleet (recomputed for the model × hardware pairs whose serving_scrapes or serving_requests changed)
-- subject: model, hardware, precision, suite
-- sources: serving_scrapes, serving_requests, diagnose_pairs
-- params: window_minutes int >= 1; max_error_rate float > 0 < 1; min_requests int >= 1; min_errors int >= 1;
--   critical_error_rate float > 0 <= 1
-- audits: tests/pipelines/test_serving_cube.py (an injected error burst on a real mhw serve fires it;
--   its healthy twin under the same load, bad client requests included, stays quiet)
--
-- suite names the source: 'scrape' or 'request_log' (both are judged, never added together). Scrape
-- deltas are those of sql/cubes/serving_scrape_base.sql (the value minus the previous scrape's, the
-- value itself after a restart or on a first scrape whose series start is known), attributed to the
-- window the scrape ends in. Windows are window_minutes long, counted from 2000-01-01 UTC; an
-- episode runs over consecutive judged windows (live traffic seen a few minutes a day is one episode
-- over days, not one alert a day).

with

scrape_requests as (
    select
        s.model,
        s.hardware,
        s.precision,
        s.scraped_at as ts,
        s.status_class,
        case
            when s.prev_scraped_at is null then case when s.created_at is not null then s.value else 0.0 end
            when s.prev_value is null then s.value
            when s.value < s.prev_value or coalesce(s.created_at > s.prev_scraped_at, false) then s.value
            else s.value - s.prev_value
        end as n
    from serving_scrapes as s
    inner join diagnose_pairs as p
        on p.model = s.model
        and p.hardware = s.hardware
    where s.metric = 'requests'
),

log_requests as (
    select
        r.model,
        r.hardware,
        r.precision,
        r.ts,
        r.status_class,
        1.0 as n
    from serving_requests as r
    inner join diagnose_pairs as p
        on p.model = r.model
        and p.hardware = r.hardware
),

counted as (
    select 'scrape' as source, * from scrape_requests
    union all
    select 'request_log' as source, * from log_requests
),

windowed as (
    select
        model,
        hardware,
        precision,
        source,
        cast(floor(date_diff('microsecond', cast('2000-01-01 00:00:00+00' as timestamptz), ts)
            / (60e6 * {{ window_minutes }})) as bigint) as window_id,
        sum(n) as n_requests,
        sum(n) filter (where status_class in ('server_error', 'error')) as n_failed,  -- unknown status: not judged
        min(ts) as first_ts,
        max(ts) as last_ts
    from counted
    group by model, hardware, precision, source,
        cast(floor(date_diff('microsecond', cast('2000-01-01 00:00:00+00' as timestamptz), ts)
            / (60e6 * {{ window_minutes }})) as bigint)
),

scored as (
    select
        *,
        coalesce(n_failed, 0.0) / nullif(n_requests, 0) as error_rate,
        n_requests >= {{ min_requests }}
            and coalesce(n_failed, 0.0) >= {{ min_errors }}
            and coalesce(n_failed, 0.0) > {{ max_error_rate }} * n_requests as is_breach
    from windowed
),

numbered as (
    select
        *,
        row_number() over (partition by model, hardware, precision, source order by window_id) as window_number
    from scored
    where n_requests >= {{ min_requests }}  -- judged windows only: a quiet one neither breaks nor extends
),

islands as (
    select
        *,
        window_number - row_number() over (partition by model, hardware, precision, source order by window_id) as island
    from numbered
    where is_breach
),

episodes as (
    select
        model,
        hardware,
        precision,
        source,
        island,
        min(first_ts) as start_at,
        max(last_ts) as end_at,
        min_by(error_rate, window_id) as observed,
        max(error_rate) as worst_rate,
        count(*) as n_points
    from islands
    group by model, hardware, precision, source, island
),

final as (
    select
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(precision as varchar) as precision,
        cast(null as varchar) as run_id,
        cast(source as varchar) as suite,
        cast('server_error_rate' as varchar) as metric,
        cast(null as bigint) as step_start,
        cast(null as bigint) as step_end,
        cast(start_at as timestamptz) as start_at,
        cast(end_at as timestamptz) as end_at,
        cast(observed as double) as observed,
        cast({{ max_error_rate }} as double) as expected,
        cast(concat('largest acceptable share of server-side failures over ', cast({{ window_minutes }} as varchar),
            ' min') as varchar) as baseline,
        cast(n_points as bigint) as n_points,
        cast(worst_rate >= {{ critical_error_rate }} as boolean) as escalate
    from episodes
)

select * from final
