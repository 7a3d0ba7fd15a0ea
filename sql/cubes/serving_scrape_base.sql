-- model: serving_scrape_base
-- purpose: what inference servers did between consecutive scrapes of their /metrics, per hour:
--   counter and histogram-bucket deltas (restarts handled), gauge means and maxima, the seconds the
--   scrapes covered; read once from raw serving_scrapes, every serving_health row merges from it.
-- grain: model × hardware × precision × date × hour × target × metric × status × le × labels
-- time column: hour (UTC hour of serving_scrapes.scraped_at; date is its lake partition)
-- partitions: model, hardware, date (one file per lake partition; rebuilt only when its raw files change)
-- sources: serving_scrapes
-- serve: none (served rolled up, as serving_health)
-- audits: tests/pipelines/test_serving_cube.py (deltas equal a real server's own counts across a
--   restart and a failed scrape)
--
-- The delta of a cumulative series (counters, histogram _bucket/_count/_sum) over the interval a
-- scrape closes, from the row alone (warehouse/scrape.py keeps the previous scrape's value beside
-- each value):
--   the target's first scrape: the value when the series' start is known (created_at: everything
--     since it started lies in this interval), else 0 (a baseline);
--   a series not in the previous scrape: the value (it started since);
--   a restart (the value fell, or the series started after the previous scrape): the value;
--   else value - prev_value.
-- Gauges (queue_depth, running, cache_usage) are sampled, not differenced. `up` rows carry the
-- interval: seconds since the previous scrape (or since the process started, on a first scrape
-- whose start is known); a failed scrape (up = 0) covers nothing: the next one's interval spans it.
-- A delta is attributed to the hour its scrape ends in.

with

scrapes as (
    select
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(precision as varchar) as precision,
        cast(date as date) as date,
        cast(target as varchar) as target,
        cast(scraped_at as timestamptz) as scraped_at,
        cast(metric as varchar) as metric,
        cast(status as varchar) as status,
        cast(status_class as varchar) as status_class,
        cast(le as double) as le,
        coalesce(cast(labels as varchar), '') as labels,
        cast(value as double) as value,
        cast(created_at as timestamptz) as created_at,
        cast(prev_scraped_at as timestamptz) as prev_scraped_at,
        cast(prev_value as double) as prev_value
    from serving_scrapes
),

classified as (
    select
        *,
        metric in ('queue_depth', 'running', 'cache_usage') as is_gauge,
        prev_scraped_at is not null
            and (value < prev_value or coalesce(created_at > prev_scraped_at, false)) as is_reset
    from scrapes
),

deltas as (
    select
        *,
        case
            when is_gauge or metric = 'up' then null
            when prev_scraped_at is null then case when created_at is not null then value else 0.0 end
            when prev_value is null then value
            when is_reset then value
            else value - prev_value
        end as delta,
        case
            when metric <> 'up' or value = 0 then null
            when prev_scraped_at is not null then date_diff('microsecond', prev_scraped_at, scraped_at) / 1e6
            when created_at is not null and created_at < scraped_at
                then date_diff('microsecond', created_at, scraped_at) / 1e6
            else 0.0
        end as interval_s
    from classified
),

per_hour as (
    select
        model,
        hardware,
        precision,
        date,
        date_trunc('hour', scraped_at) as hour,
        target,
        metric,
        status,
        status_class,
        le,
        labels,
        sum(delta) as delta,
        sum(value) filter (where is_gauge) as gauge_sum,
        max(value) filter (where is_gauge) as gauge_max,
        count(*) filter (where is_gauge) as gauge_n,
        sum(interval_s) as observed_s,
        count(*) filter (where metric = 'up' and value = 1) as n_scrapes,
        count(*) filter (where metric = 'up' and value = 0) as n_failed_scrapes,
        count(*) filter (where metric = 'up' and value = 1 and is_reset) as n_restarts,
        min(scraped_at) as first_ts,
        max(scraped_at) as last_ts
    from deltas
    group by model, hardware, precision, date, date_trunc('hour', scraped_at), target, metric, status,
        status_class, le, labels
),

final as (
    select
        cast(model as varchar) as model,                    -- model slug
        cast(hardware as varchar) as hardware,              -- hardware fingerprint
        cast(precision as varchar) as precision,            -- precision served in
        cast(date as date) as date,                         -- UTC date of the scrapes
        cast(hour as timestamptz) as hour,                  -- UTC hour the scrapes ended in
        cast(target as varchar) as target,                  -- /metrics URL
        cast(metric as varchar) as metric,                  -- canonical metric (serving_scrapes.metric)
        cast(status as varchar) as status,                  -- requests: status as labeled
        cast(status_class as varchar) as status_class,      -- requests: ok | client_error | server_error | error
        cast(le as double) as le,                           -- buckets: inclusive upper bound, seconds
        cast(labels as varchar) as labels,                  -- the series' other labels
        cast(delta as double) as delta,                     -- counters and buckets: increase over the hour's intervals
        cast(gauge_sum as double) as gauge_sum,             -- gauges: sum of the sampled values
        cast(gauge_max as double) as gauge_max,             -- gauges: largest sampled value
        cast(gauge_n as bigint) as gauge_n,                 -- gauges: samples
        cast(observed_s as double) as observed_s,           -- up: seconds the hour's scrape intervals cover
        cast(n_scrapes as bigint) as n_scrapes,             -- up: successful scrapes
        cast(n_failed_scrapes as bigint) as n_failed_scrapes, -- up: failed scrapes
        cast(n_restarts as bigint) as n_restarts,           -- up: scrapes that found the server restarted
        cast(first_ts as timestamptz) as first_ts,          -- earliest scrape
        cast(last_ts as timestamptz) as last_ts             -- latest scrape
    from per_hour
)

select * from final
