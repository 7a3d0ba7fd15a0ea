-- rule: underfitting
-- purpose: a training run that has not learned: its loss never fell much below where it started, or
--   it is stuck far above the other runs of the same model and data at the same steps (an LR off by
--   orders of magnitude, a schedule or warmup that never lets it move, a batch far too small, a run
--   knocked into a bad state it cannot leave).
-- grain: one row per training run that has not learned as of its latest logged step.
-- scope: run (recomputed for the runs whose train_steps changed; peers are read from every partition
--   of the run's model)
-- subject: run_id
-- sources: run_steps, model_cells, peer_eval_results, runs
-- params: min_logs int >= 3; start_frac float > 0 < 1; end_frac float > 0 < 1; min_learn float > 0 < 1;
--   peer_frac float > 0 < 1; max_peer_gap float > 0; min_peers int >= 1; val_suites strings
-- audits: tests/pipelines/test_diagnose_rules.py (fires on a flat loss and on a run stuck above three
--   peers, quiet on the peers); tests/pipelines/test_diagnose_real.py (real runs: a real trainer state
--   stuck at ln 4, one logging loss 0.0 throughout, real CPU trainings with the LR far too high and in
--   the wrong units against their healthy twins)
--
-- Never learned: with at least min_logs logged losses, the median of the last end_frac of them (at
-- least 3) is not min_learn (a share of its level) below the median of the first start_frac (at
-- least 3). Scale-free: logged-step shares, not step counts, so 5 logs of a short fine-tune and 30 000
-- of a pre-training run are judged alike.
-- Where the run has min_peers peers over its last steps, they decide, not its own start: a run as flat
-- as its peers at the same steps is where this model is by then (a classifier still on its ln 2
-- plateau, a job killed before it left it), and a flat run with peers far below it is behind them.
-- A run whose latest logged loss is not finite is left to the divergence rule.
-- Stuck above its peers: the peers are the other runs of the same model and data (runs.dataset and the
-- data section of runs.config_json where the job recorded one). The run's median training loss over
-- its last peer_frac of steps, (S · (1 - peer_frac), S], is compared with peers whose logs cover it;
-- where the run and at least min_peers peers have a validation loss (val_suites) at the run's latest
-- checkpoint step, that is compared too, and both must be behind (behind on validation alone is
-- memorizing: the overfitting rule's). Behind is more than max_peer_gap above the lower quartile of
-- the peers' values (a fleet or a sweep with many faulty runs pulls the median up; the
-- quartile is what the healthy ones reach, and a single lucky seed does not set it once there are
-- five peers or more).
-- Peers are read as the medians of 200 cells over the model's longest run (model_cells; their level over
-- the window is the median of the cells in it: close to the median of their logs, at a fraction of the
-- join).

with

logged as (
    select
        s.model,
        s.hardware,
        s.precision,
        s.run_id,
        s.step,
        s.ts,
        s.loss,
        s.loss_log_no as log_no,  -- its place among the run's finite losses
        s.loss_logs as n_logs
    from run_steps as s
    where s.loss_log_no is not null
),

diverged as (
    -- a run whose latest logged loss is NaN or inf is the divergence rule's: what it learned before is moot
    select
        run_id
    from run_steps
    group by run_id
    having not coalesce(abs(max_by(loss, step)) < cast('Infinity' as double), false)
),

numbered as (
    select *
    from logged
    where run_id not in (select run_id from diverged)
),

levels as (
    select
        model,
        hardware,
        run_id,
        max(precision) as precision,
        max(n_logs) as n_logs,
        min(step) as first_step,
        max(step) as last_step,
        min(ts) as first_ts,
        max(ts) as last_ts,
        median(loss) filter (where log_no < greatest(3, {{ start_frac }} * n_logs)) as start_level,
        median(loss) filter (where log_no >= n_logs - greatest(3, {{ end_frac }} * n_logs)) as end_level
    from numbered
    group by model, hardware, run_id
),

never_learned as (
    select
        *,
        start_level - end_level <= {{ min_learn }} * abs(start_level) as is_flat
    from levels
    where n_logs >= {{ min_logs }}
),

datasets as (
    -- "same data": the runs row's data set name and, where the job recorded it, its data config (a
    -- 64-example run of the same corpus is not a peer of the full one)
    select
        run_id,
        max(concat(coalesce(dataset, ''), '|', coalesce(json_extract_string(config_json, '$.data'), '')))
            as dataset
    from runs
    group by run_id
),

grids as (
    -- peers are compared on a grid of 200 cells over the model's longest run (model_cells), so the
    -- peer join reads a few dozen cell medians per run instead of every logged step
    select distinct
        model,
        cell_steps
    from model_cells
    where cell_steps is not null
),

peer_cells as (
    select
        model_cells.model,
        coalesce(datasets.dataset, '') as dataset,
        model_cells.run_id,
        model_cells.cell,
        model_cells.cell_loss,
        model_cells.n_logs
    from model_cells
    left join datasets
        on datasets.run_id = model_cells.run_id
    where model_cells.cell is not null
),

peer_spans as (
    select
        model,
        dataset,
        run_id,
        min(cell) as first_cell,
        max(cell) as last_cell
    from peer_cells
    group by model, dataset, run_id
),

targets as (
    select
        levels.run_id,
        levels.model,
        coalesce(datasets.dataset, '') as dataset,
        levels.last_step,
        levels.last_step - {{ peer_frac }} * levels.last_step as window_start,
        cast(floor((levels.last_step - {{ peer_frac }} * levels.last_step) / grids.cell_steps) as bigint) + 1
            as first_cell,
        cast(floor(levels.last_step / grids.cell_steps) as bigint) as last_cell
    from levels
    inner join grids
        on grids.model = levels.model
    left join datasets
        on datasets.run_id = levels.run_id
),

own_window as (
    select
        targets.run_id,
        median(logged.loss) as own_level
    from targets
    inner join logged
        on logged.run_id = targets.run_id
        and logged.step > targets.window_start
        and logged.step <= targets.last_step
    group by targets.run_id
),

windows as (
    -- the distinct windows targets are compared over: the runs of one model and data whose latest steps
    -- end in the same grid cells share them (a few per cell of the grid, however many runs there are)
    select distinct
        model,
        dataset,
        first_cell,
        last_cell
    from targets
),

window_levels as (
    -- the level of every run whose logs cover a window: the candidates (a target among them is not
    -- its own peer; see peer_refs)
    select
        windows.model,
        windows.dataset,
        windows.first_cell,
        windows.last_cell,
        peer_cells.run_id,
        median(peer_cells.cell_loss) as peer_level
    from windows
    inner join peer_spans
        on peer_spans.model = windows.model
        and peer_spans.dataset = windows.dataset
        and peer_spans.first_cell < windows.first_cell
        and peer_spans.last_cell >= windows.last_cell
    inner join peer_cells
        on peer_cells.run_id = peer_spans.run_id
        and peer_cells.model = windows.model
        and peer_cells.cell >= windows.first_cell
        and peer_cells.cell <= windows.last_cell
    group by windows.model, windows.dataset, windows.first_cell, windows.last_cell, peer_cells.run_id
),

validation as (
    select
        e.train_run_id as run_id,
        e.model,
        e.checkpoint_step,
        median(e.value) as val_loss
    from peer_eval_results as e
    where e.metric = 'loss'
        and e.suite in ({{ val_suites }})
        and e.checkpoint_step is not null
        and abs(e.value) < cast('Infinity' as double)
    group by e.train_run_id, e.model, e.checkpoint_step
),

own_validation as (
    select
        targets.run_id,
        max(validation.checkpoint_step) as val_step,
        max_by(validation.val_loss, validation.checkpoint_step) as own_val
    from targets
    inner join validation
        on validation.run_id = targets.run_id
    group by targets.run_id
),

val_levels as (
    -- the validation loss of every run at a checkpoint step some target's latest validation is at
    select
        validation.model,
        datasets.dataset,
        validation.checkpoint_step,
        validation.run_id,
        validation.val_loss
    from validation
    inner join datasets
        on datasets.run_id = validation.run_id
    where validation.checkpoint_step in (select val_step from own_validation)
),

candidates as (
    -- every level a target may be compared with, by what it is compared under: the training loss over
    -- a window (model, data, window cells), the validation loss at a checkpoint (model, data, step)
    select
        'training' as basis,
        model,
        dataset,
        first_cell as key_from,
        last_cell as key_to,
        run_id,
        peer_level
    from window_levels
    union all
    select
        'validation' as basis,
        model,
        dataset,
        checkpoint_step as key_from,
        checkpoint_step as key_to,
        run_id,
        val_loss as peer_level
    from val_levels
),

ranked as (
    select
        *,
        row_number() over (partition by basis, model, dataset, key_from, key_to order by peer_level)
            as level_rank
    from candidates
),

key_sizes as (
    select
        basis,
        model,
        dataset,
        key_from,
        key_to,
        count(*) as n_levels
    from candidates
    group by basis, model, dataset, key_from, key_to
),

asked as (
    -- what each target is compared under: its window, and its latest checkpoint where it has one
    select
        run_id,
        'training' as basis,
        model,
        dataset,
        first_cell as key_from,
        last_cell as key_to
    from targets
    union all
    select
        own_validation.run_id,
        'validation' as basis,
        targets.model,
        targets.dataset,
        own_validation.val_step as key_from,
        own_validation.val_step as key_to
    from own_validation
    inner join targets
        on targets.run_id = own_validation.run_id
),

counted as (
    -- the peers: the key's levels but the target's own
    select
        asked.*,
        own.peer_level as own_level,
        key_sizes.n_levels - case when own.run_id is null then 0 else 1 end as n_peers
    from asked
    inner join key_sizes
        on key_sizes.basis = asked.basis
        and key_sizes.model = asked.model
        and key_sizes.dataset = asked.dataset
        and key_sizes.key_from = asked.key_from
        and key_sizes.key_to = asked.key_to
    left join ranked as own
        on own.basis = asked.basis
        and own.model = asked.model
        and own.dataset = asked.dataset
        and own.key_from = asked.key_from
        and own.key_to = asked.key_to
        and own.run_id = asked.run_id
),

quartiles as (
    select
        *,
        cast(ceil(0.25 * n_peers) as bigint) as k
    from counted
    where n_peers > 0
),

peer_refs as (
    -- the lower quartile of the peers' levels: what healthy runs of this model reach by then (a sweep
    -- or a fleet of faulty runs pulls a median up; a lucky seed alone does not set the bar). It is the
    -- k-th smallest of the peers' levels, k = ceil(n_peers / 4): the key's k-th level, or its
    -- (k+1)-th where the target's own level is among the key's and at or below the k-th
    select
        quartiles.run_id,
        quartiles.basis,
        quartiles.n_peers,
        case
            when quartiles.own_level <= min(ranked.peer_level) filter (where ranked.level_rank = quartiles.k)
                then min(ranked.peer_level) filter (where ranked.level_rank = quartiles.k + 1)
            else min(ranked.peer_level) filter (where ranked.level_rank = quartiles.k)
        end as peer_ref
    from quartiles
    inner join ranked
        on ranked.basis = quartiles.basis
        and ranked.model = quartiles.model
        and ranked.dataset = quartiles.dataset
        and ranked.key_from = quartiles.key_from
        and ranked.key_to = quartiles.key_to
        and ranked.level_rank between quartiles.k and quartiles.k + 1
    group by quartiles.run_id, quartiles.basis, quartiles.n_peers, quartiles.own_level, quartiles.k
),

peers as (
    -- the training loss over the window, and the validation loss at the run's latest checkpoint where
    -- it and min_peers peers have one (fixed eval batches: far less noisy than training batches)
    select
        run_id,
        coalesce(sum(n_peers) filter (where basis = 'training'), 0) as n_train_peers,
        min(peer_ref) filter (where basis = 'training') as train_ref,
        coalesce(sum(n_peers) filter (where basis = 'validation'), 0) as n_val_peers,
        min(peer_ref) filter (where basis = 'validation') as val_ref
    from peer_refs
    group by run_id
),

compared as (
    select
        never_learned.*,
        own_window.own_level as own_train,
        own_validation.own_val,
        peers.n_train_peers,
        peers.train_ref,
        peers.n_val_peers >= {{ min_peers }} as has_val,
        peers.n_val_peers,
        peers.val_ref,
        coalesce(peers.n_train_peers >= {{ min_peers }}
            and own_window.own_level > (1 + {{ max_peer_gap }}) * peers.train_ref, false) as train_behind,
        coalesce(own_validation.own_val > (1 + {{ max_peer_gap }}) * peers.val_ref, false) as val_behind
    from never_learned
    left join own_window
        on own_window.run_id = never_learned.run_id
    left join own_validation
        on own_validation.run_id = never_learned.run_id
    left join peers
        on peers.run_id = never_learned.run_id
),

judged as (
    -- behind on training loss, and on validation loss too where that can be compared: a run behind on
    -- validation only is memorizing (the overfitting rule's), one behind on training only is noise
    select
        *,
        coalesce(has_val, false) as by_val,
        train_behind and (not coalesce(has_val, false) or val_behind) as is_behind,
        coalesce(n_train_peers >= {{ min_peers }}, false) as has_peers,
        case when coalesce(has_val, false) then own_val else own_train end as own_level,
        case when coalesce(has_val, false) then val_ref else train_ref end as peer_level,
        case when coalesce(has_val, false) then n_val_peers else n_train_peers end as n_peers
    from compared
),

flagged as (
    select *
    from judged
    where (is_flat and not has_peers) or is_behind
),

final as (
    select
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(precision as varchar) as precision,
        cast(run_id as varchar) as run_id,
        cast(null as varchar) as suite,
        cast('loss' as varchar) as metric,
        cast(first_step as bigint) as step_start,
        cast(last_step as bigint) as step_end,
        cast(first_ts as timestamptz) as start_at,
        cast(last_ts as timestamptz) as end_at,
        cast(case when is_flat then end_level else own_level end as double) as observed,
        cast(case when is_flat then start_level else peer_level end as double) as expected,
        cast(case
            when is_flat then 'its own first logged losses'
            when by_val then concat('lower quartile of ', cast(n_peers as varchar),
                ' peer run(s) of the same model and data, validation loss at the same checkpoint')
            else concat('lower quartile of ', cast(n_peers as varchar),
                ' peer run(s) of the same model and data, training loss over the same steps')
        end as varchar) as baseline,
        cast(n_logs as bigint) as n_points,
        cast(false as boolean) as escalate
    from flagged
)

select * from final
