-- rule: throughput_drop
-- purpose: a training run whose tokens/s falls well below its own recent level, with the data-wait
--   share unchanged: the compute itself got slower (a straggler rank, a throttling or failing node,
--   a noisy neighbour). Drops explained by waiting for data are the data_stall rule's.
-- grain: one row per training run with at least min_blocks slow blocks; the range runs from the
--   first slow block to the last.
-- scope: run (recomputed for the runs whose train_steps changed)
-- subject: run_id
-- sources: run_steps
-- params: target_blocks int >= 2; min_block_logs int >= 3; max_block_logs int >= 3; max_drop float > 0 < 1;
--   window_blocks int >= 1; min_history_blocks int >= 1; min_blocks int >= 1
-- audits: tests/pipelines/test_diagnose_rules.py (fires on a 2x slowdown, quiet on the clean twin and on
--   a data stall)
--
-- Blocks by log count as in exploding_gradients (about target_blocks a run, so a block is a tenth of
-- the run: a drop that lasts it is sustained, one slow step is not). Per block: the median tokens/s
-- and the median compute tokens/s (the same tokens over the step time minus the data wait). A block is
-- slow when both are more than max_drop below the median of the previous window_blocks blocks'
-- medians (after min_history_blocks of them).

with

logged as (
    select
        s.model,
        s.hardware,
        s.precision,
        s.run_id,
        s.step,
        s.ts,
        s.tokens_per_s,
        case
            when s.step_time_ms > coalesce(s.data_time_ms, 0)
                then s.tokens_per_s * s.step_time_ms / (s.step_time_ms - coalesce(s.data_time_ms, 0))
        end as compute_tokens_per_s,
        s.tput_log_no as log_no,  -- its place among the run's rows with tokens/s and step time > 0, finite
        s.tput_logs as n_logs
    from run_steps as s
    where s.tput_log_no is not null
),

steps as (
    select
        *,
        cast(floor(log_no / greatest({{ min_block_logs }}, least({{ max_block_logs }},
            floor(n_logs / {{ target_blocks }})))) as bigint) as block,
        greatest({{ min_block_logs }}, least({{ max_block_logs }}, floor(n_logs / {{ target_blocks }}))) as block_logs
    from logged
),

blocks as (
    select
        model,
        hardware,
        run_id,
        block,
        max(precision) as precision,
        median(tokens_per_s) as tps,
        median(compute_tokens_per_s) as compute_tps,
        min(step) as first_step,
        max(step) as last_step,
        min(ts) as first_ts,
        max(ts) as last_ts
    from steps
    group by model, hardware, run_id, block, block_logs
    having count(*) = block_logs
),

compared as (
    select
        cur.model,
        cur.hardware,
        cur.precision,
        cur.run_id,
        cur.block,
        cur.tps,
        cur.compute_tps,
        cur.first_step,
        cur.last_step,
        cur.first_ts,
        cur.last_ts,
        median(prev.tps) as base_tps,
        median(prev.compute_tps) as base_compute_tps,
        count(*) as n_prev
    from blocks as cur
    inner join blocks as prev
        on prev.run_id = cur.run_id
        and prev.block < cur.block
        and prev.block >= cur.block - {{ window_blocks }}
    group by cur.model, cur.hardware, cur.precision, cur.run_id, cur.block, cur.tps, cur.compute_tps,
        cur.first_step, cur.last_step, cur.first_ts, cur.last_ts
),

slow as (
    select *
    from compared
    where n_prev >= {{ min_history_blocks }}
        and tps < (1 - {{ max_drop }}) * base_tps
        and compute_tps < (1 - {{ max_drop }}) * base_compute_tps
),

per_run as (
    select
        model,
        hardware,
        run_id,
        max(precision) as precision,
        min(first_step) as step_start,
        max(last_step) as step_end,
        min(first_ts) as start_at,
        max(last_ts) as end_at,
        min_by(tps, block) as observed,
        min_by(base_tps, block) as expected,
        count(*) as n_points
    from slow
    group by model, hardware, run_id
    having count(*) >= {{ min_blocks }}
),

final as (
    select
        cast(model as varchar) as model,
        cast(hardware as varchar) as hardware,
        cast(precision as varchar) as precision,
        cast(run_id as varchar) as run_id,
        cast(null as varchar) as suite,
        cast('tokens_per_s' as varchar) as metric,
        cast(step_start as bigint) as step_start,
        cast(step_end as bigint) as step_end,
        cast(start_at as timestamptz) as start_at,
        cast(end_at as timestamptz) as end_at,
        cast(observed as double) as observed,
        cast(expected as double) as expected,
        cast(concat('median tokens/s of the previous ', cast({{ window_blocks }} as varchar), ' blocks')
            as varchar) as baseline,
        cast(n_points as bigint) as n_points,
        cast(false as boolean) as escalate
    from per_run
)

select * from final
