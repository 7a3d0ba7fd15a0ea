-- audit: serving_totals
-- purpose: the served serving_health cube holds exactly the raw lake's serving telemetry: per lake
--   partition its day rows count the raw request-log rows (all, successes), the raw successful
--   scrapes, and the requests the raw scrapes' counters add up to (the deltas recomputed here from
--   value and prev_value); and the hour rows of each source add up to its day row.
-- grain: one row per (partition or level, measure) that differs; no rows = the audit passes.
-- sources: serving_requests, serving_scrapes (lake), serving_health (serving)
-- tolerance: counts exact (scrape deltas are whole numbers in doubles); a value on one side only is a
--   difference

with

lake_requests as (
    select
        model,
        hardware,
        date,
        cast(count(*) as double) as n_requests,
        cast(count(*) filter (where status_class = 'ok') as double) as n_ok
    from serving_requests
    group by model, hardware, date
),

lake_scrapes as (
    select
        model,
        hardware,
        date,
        cast(count(*) filter (where metric = 'up' and value = 1) as double) as n_scrapes,
        sum(case
                when metric <> 'requests' then null
                when prev_scraped_at is null then case when created_at is not null then value else 0.0 end
                when prev_value is null then value
                when value < prev_value or coalesce(created_at > prev_scraped_at, false) then value
                else value - prev_value
            end) as n_requests
    from serving_scrapes
    group by model, hardware, date
),

cube_days as (
    select
        model,
        hardware,
        date,
        cast(sum(n_requests) filter (where source = 'request_log') as double) as log_requests,
        cast(sum(n_ok) filter (where source = 'request_log') as double) as log_ok,
        cast(sum(n_scrapes) filter (where source = 'scrape') as double) as n_scrapes,
        cast(sum(n_requests) filter (where source = 'scrape') as double) as scrape_requests
    from serving_health
    where period = 'day'
    group by model, hardware, date
),

partitions as (
    select
        'model=' || coalesce(r.model, s.model, c.model) || '/hardware=' || coalesce(r.hardware, s.hardware, c.hardware)
            || '/date=' || cast(coalesce(r.date, s.date, c.date) as varchar) as partition,
        r.n_requests as lake_log_requests, c.log_requests as cube_log_requests,
        r.n_ok as lake_log_ok, c.log_ok as cube_log_ok,
        s.n_scrapes as lake_scrapes, c.n_scrapes as cube_scrapes,
        s.n_requests as lake_scrape_requests, c.scrape_requests as cube_scrape_requests
    from lake_requests as r
    full outer join lake_scrapes as s
        on s.model = r.model and s.hardware = r.hardware and s.date = r.date
    full outer join cube_days as c
        on c.model = coalesce(r.model, s.model)
        and c.hardware = coalesce(r.hardware, s.hardware)
        and c.date = coalesce(r.date, s.date)
),

compared as (
    select partition, 'request_log n_requests' as measure, lake_log_requests as lake_value,
        cube_log_requests as cube_value
    from partitions
    where lake_log_requests is not null or cube_log_requests is not null
    union all
    select partition, 'request_log n_ok', lake_log_ok, cube_log_ok
    from partitions
    where lake_log_requests is not null or cube_log_requests is not null
    union all
    select partition, 'scrape n_scrapes', lake_scrapes, cube_scrapes
    from partitions
    where lake_scrapes is not null or cube_scrapes is not null
    union all
    -- a scrape of a server that counts no requests (no requests rows) has no count on either side
    select partition, 'scrape n_requests', lake_scrape_requests, cube_scrape_requests
    from partitions
    where lake_scrape_requests is not null or cube_scrape_requests is not null
),

levels as (
    select
        'level=hour/' || source || '/model=' || model || '/hardware=' || hardware || '/date=' || cast(date as varchar)
            as partition,
        'n_requests' as measure,
        cast(sum(n_requests) filter (where period = 'day') as double) as lake_value,
        cast(sum(n_requests) filter (where period = 'hour') as double) as cube_value
    from serving_health
    group by source, model, hardware, date
),

final as (
    select
        cast('serving_totals' as varchar) as audit,
        cast(partition as varchar) as partition,
        cast(measure as varchar) as measure,
        cast(lake_value as double) as lake_value,
        cast(cube_value as double) as cube_value
    from (select * from compared union all select * from levels) as checked
    where lake_value is distinct from cube_value
)

select * from final
