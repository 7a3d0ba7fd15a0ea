-- model: model_cells
-- purpose: every run of the models in a batch as underfitting compares it with its peers: the median of
--   its finite losses in each of 200 cells of a grid over its model's longest run. Kept between
--   diagnoses (pipelines/kept.py): a run whose rows did not change is not read again
--   while its model's longest run stays the same, so an appended block reads its own rows, not every
--   other run of its model.
-- grain: model × run × cell (a run without a finite loss: one row, cell null)
-- time column: none
-- partitions: none (computed per batch of the run rules, and held by the engine)
-- sources: peer_train_steps, model_cells_kept
-- serve: none (read by sql/diagnostics/underfitting.sql)
-- audits: tests/pipelines/test_diagnose_equal.py (a run appended beside kept cells: its alerts equal the
--   reference rules' on the whole lake; a longer run moves the grid: the cells are read again)
--
-- peer_train_steps holds the raw rows of the runs read this time; model_cells_kept the rows of this
-- model kept from the last diagnose for runs whose rows did not change (only where the grid they were
-- cut on is the grid now: the caller checks that the longest run, grid_last_step, is the same).
-- grid_last_step: the model's last step with a finite loss over all of its runs; cell_steps: the
-- grid's cell width, greatest(1, grid_last_step / 200); last_step: the run's own last such step.

with

steps as (
    select
        model,
        run_id,
        step,
        loss,
        coalesce(abs(loss) < cast('Infinity' as double), false) as is_loss
    from peer_train_steps
),

fresh_runs as (
    select
        model,
        run_id,
        max(step) filter (where is_loss) as last_step
    from steps
    group by model, run_id
),

spans as (
    select
        model,
        last_step
    from fresh_runs
    union all
    select
        model,
        last_step
    from model_cells_kept
),

grids as (
    select
        model,
        max(last_step) as grid_last_step,
        greatest(1, max(last_step) / 200) as cell_steps
    from spans
    where last_step is not null
    group by model
),

fresh_cells as (
    select
        steps.model,
        steps.run_id,
        cast(floor(steps.step / grids.cell_steps) as bigint) as cell,
        median(steps.loss) as cell_loss,
        count(*) as n_logs
    from steps
    inner join grids
        on grids.model = steps.model
    where steps.is_loss
    group by steps.model, steps.run_id, cast(floor(steps.step / grids.cell_steps) as bigint)
),

fresh as (
    select
        fresh_runs.model,
        fresh_runs.run_id,
        grids.grid_last_step,
        grids.cell_steps,
        fresh_runs.last_step,
        fresh_cells.cell,
        fresh_cells.cell_loss,
        fresh_cells.n_logs
    from fresh_runs
    left join grids
        on grids.model = fresh_runs.model
    left join fresh_cells
        on fresh_cells.model = fresh_runs.model
        and fresh_cells.run_id = fresh_runs.run_id
),

final as (
    select
        cast(model as varchar) as model,
        cast(run_id as varchar) as run_id,
        cast(grid_last_step as bigint) as grid_last_step,
        cast(cell_steps as double) as cell_steps,
        cast(last_step as bigint) as last_step,
        cast(cell as bigint) as cell,
        cast(cell_loss as double) as cell_loss,
        cast(n_logs as bigint) as n_logs
    from fresh
    union all
    select
        model,
        run_id,
        grid_last_step,
        cell_steps,
        last_step,
        cell,
        cell_loss,
        n_logs
    from model_cells_kept
)

select * from final
