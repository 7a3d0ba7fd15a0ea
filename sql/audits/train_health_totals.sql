-- audit: train_health_totals
-- purpose: the served training cube holds exactly the raw lake's train_steps: per lake partition
--   (model × hardware × date) the run-level rows of train_health and the step-time sketch add up to
--   the raw rows' count, step checksum, finite-loss count and sum, NaN/inf count and timed steps;
--   and every aggregation level of train_health (daily and window) sums to the raw total.
-- grain: one row per (partition or level, measure) that differs; no rows = the audit passes.
-- sources: train_steps (lake), train_health and train_step_time_sketch (serving)
-- tolerance: counts exact; float sums 1e-9 relative (summation order differs between builds); a value
--   on one side only is a difference, except that no sketch rows means zero sketched steps

with

lake as (
    select
        model,
        hardware,
        date,
        cast(count(*) as double) as n_steps,
        cast(sum(step) as double) as step_sum,
        cast(count(*) filter (where abs(loss) < cast('Infinity' as double)) as double) as n_loss,
        sum(loss) filter (where abs(loss) < cast('Infinity' as double)) as loss_sum,
        cast(count(*) filter (where isnan(loss) or abs(loss) = cast('Infinity' as double)) as double)
            as n_loss_nonfinite,
        cast(count(step_time_ms) as double) as n_sketched
    from train_steps
    group by model, hardware, date
),

cube as (
    select
        model,
        hardware,
        date,
        cast(sum(n_steps) as double) as n_steps,
        cast(sum(step_sum) as double) as step_sum,
        cast(sum(n_loss) as double) as n_loss,
        sum(loss_sum) as loss_sum,
        cast(sum(n_loss_nonfinite) as double) as n_loss_nonfinite
    from train_health
    where grouping_id = 0  -- run × day
    group by model, hardware, date
),

sketch as (
    select
        model,
        hardware,
        date,
        cast(sum(n) as double) as n_sketched
    from train_step_time_sketch
    where grouping_id = 0
    group by model, hardware, date
),

partitions as (
    select
        'model=' || coalesce(lake.model, cube.model, sketch.model)
            || '/hardware=' || coalesce(lake.hardware, cube.hardware, sketch.hardware)
            || '/date=' || cast(coalesce(lake.date, cube.date, sketch.date) as varchar) as partition,
        lake.n_steps as lake_n_steps, cube.n_steps as cube_n_steps,
        lake.step_sum as lake_step_sum, cube.step_sum as cube_step_sum,
        lake.n_loss as lake_n_loss, cube.n_loss as cube_n_loss,
        lake.loss_sum as lake_loss_sum, cube.loss_sum as cube_loss_sum,
        lake.n_loss_nonfinite as lake_n_loss_nonfinite, cube.n_loss_nonfinite as cube_n_loss_nonfinite,
        lake.n_sketched as lake_n_sketched, sketch.n_sketched as cube_n_sketched
    from lake
    full outer join cube
        on cube.model = lake.model and cube.hardware = lake.hardware and cube.date = lake.date
    full outer join sketch
        on sketch.model = coalesce(lake.model, cube.model)
        and sketch.hardware = coalesce(lake.hardware, cube.hardware)
        and sketch.date = coalesce(lake.date, cube.date)
),

compared as (
    select partition, 'n_steps' as measure, lake_n_steps as lake_value, cube_n_steps as cube_value from partitions
    union all
    select partition, 'step_sum', lake_step_sum, cube_step_sum from partitions
    union all
    select partition, 'n_loss', lake_n_loss, cube_n_loss from partitions
    union all
    select partition, 'loss_sum', lake_loss_sum, cube_loss_sum from partitions
    union all
    select partition, 'n_loss_nonfinite', lake_n_loss_nonfinite, cube_n_loss_nonfinite from partitions
    union all
    -- a sketch of zero values has no rows: a partition with no step times (HF, MLPerf and TensorBoard
    -- imports log none) reads 0 on both sides, while sketched steps missing from either side still differ
    select partition, 'step_time_sketch_n', coalesce(lake_n_sketched, 0.0), coalesce(cube_n_sketched, 0.0)
    from partitions
),

levels as (
    select
        'level=' || agg_level as partition,
        'n_steps' as measure,
        (select cast(count(*) as double) from train_steps) as lake_value,
        cast(sum(n_steps) as double) as cube_value
    from train_health
    group by agg_level
    union all
    select
        'level=' || agg_level,
        'step_time_sketch_n',
        (select cast(count(step_time_ms) as double) from train_steps),
        cast(sum(n) as double)
    from train_step_time_sketch
    group by agg_level
),

final as (
    select
        cast('train_health_totals' as varchar) as audit,
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
