-- audit: eval_totals
-- purpose: the served eval cube holds exactly the raw lake's eval_results: per lake partition the
--   run-level rows of eval_health add up to the raw results, finite-value count and sum and
--   examples, and to each run's results (training run, else eval run); every aggregation level sums
--   to the raw total.
-- grain: one row per (partition or level, measure) that differs; no rows = the audit passes.
-- sources: eval_results (lake), eval_health (serving)
-- tolerance: counts exact; float sums 1e-9 relative; a value on one side only is a difference

with

lake as (
    select
        model,
        hardware,
        date,
        cast(count(*) as double) as n_results,
        cast(count(*) filter (where abs(value) < cast('Infinity' as double)) as double) as n_value,
        sum(value) filter (where abs(value) < cast('Infinity' as double)) as value_sum,
        cast(sum(n) as double) as n_examples
    from eval_results
    group by model, hardware, date
),

cube as (
    select
        model,
        hardware,
        date,
        cast(sum(n_results) as double) as n_results,
        cast(sum(n_value) as double) as n_value,
        sum(value_sum) as value_sum,
        cast(sum(n_examples) as double) as n_examples
    from eval_health
    where grouping_id = 0  -- suite × metric × run × checkpoint × day
    group by model, hardware, date
),

lake_runs as (
    select
        model,
        hardware,
        date,
        coalesce(train_run_id, run_id) as run_id,
        cast(count(*) as double) as n_results
    from eval_results
    group by model, hardware, date, coalesce(train_run_id, run_id)
),

cube_runs as (
    select
        model,
        hardware,
        date,
        run_id,
        cast(sum(n_results) as double) as n_results
    from eval_health
    where grouping_id = 0
    group by model, hardware, date, run_id
),

-- results counted under the wrong run add up per partition: they differ only here
per_run as (
    select
        'model=' || coalesce(lake_runs.model, cube_runs.model)
            || '/hardware=' || coalesce(lake_runs.hardware, cube_runs.hardware)
            || '/date=' || cast(coalesce(lake_runs.date, cube_runs.date) as varchar) as partition,
        'n_results run=' || coalesce(lake_runs.run_id, cube_runs.run_id) as measure,
        lake_runs.n_results as lake_value,
        cube_runs.n_results as cube_value
    from lake_runs
    full outer join cube_runs
        on cube_runs.model = lake_runs.model and cube_runs.hardware = lake_runs.hardware
        and cube_runs.date = lake_runs.date and cube_runs.run_id = lake_runs.run_id
),

partitions as (
    select
        'model=' || coalesce(lake.model, cube.model) || '/hardware=' || coalesce(lake.hardware, cube.hardware)
            || '/date=' || cast(coalesce(lake.date, cube.date) as varchar) as partition,
        lake.n_results as lake_n_results, cube.n_results as cube_n_results,
        lake.n_value as lake_n_value, cube.n_value as cube_n_value,
        lake.value_sum as lake_value_sum, cube.value_sum as cube_value_sum,
        lake.n_examples as lake_n_examples, cube.n_examples as cube_n_examples
    from lake
    full outer join cube
        on cube.model = lake.model and cube.hardware = lake.hardware and cube.date = lake.date
),

compared as (
    select partition, 'n_results' as measure, lake_n_results as lake_value, cube_n_results as cube_value from partitions
    union all
    select partition, 'n_value', lake_n_value, cube_n_value from partitions
    union all
    select partition, 'value_sum', lake_value_sum, cube_value_sum from partitions
    union all
    select partition, 'n_examples', lake_n_examples, cube_n_examples from partitions
    union all
    select partition, measure, lake_value, cube_value from per_run
),

levels as (
    select
        'level=' || agg_level as partition,
        'n_results' as measure,
        (select cast(count(*) as double) from eval_results) as lake_value,
        cast(sum(n_results) as double) as cube_value
    from eval_health
    group by agg_level
),

final as (
    select
        cast('eval_totals' as varchar) as audit,
        cast(partition as varchar) as partition,
        cast(measure as varchar) as measure,
        cast(lake_value as double) as lake_value,
        cast(cube_value as double) as cube_value
    from (select * from compared union all select * from levels) as checked
    where not (
        lake_value is not distinct from cube_value
        or coalesce(abs(lake_value - cube_value) <= 1e-9 * greatest(abs(lake_value), abs(cube_value), 1.0), false))
)

select * from final
