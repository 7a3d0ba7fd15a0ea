-- model: run_steps
-- purpose: the one pass over raw train_steps that the run rules read instead of raw rows: every logged
--   step of the runs in scope, once, with its place among the run's finite losses, finite grad norms,
--   throughput readings and LR readings. The rules cut their blocks by log count (a tenth of the run,
--   ten logs...), so each of them used to sort every row of every run again; here the places are
--   counted once, without a sort.
-- grain: run × step (the rows of train_steps of the runs in diagnose_runs; (run_id, step) is unique in
--   the lake: ingest and the writer key rows by run and step). run_no numbers the runs in scope.
-- time column: ts
-- partitions: none (computed per diagnose, for the runs in scope, and held by the engine)
-- sources: train_steps, diagnose_runs
-- serve: none (read by sql/diagnostics/*.sql)
-- audits: tests/pipelines/test_diagnose_equal.py (every alert equal to the rules that number rows with
--   row_number(), on simulated and real lakes, DuckDB and Spark)
--
-- <kind>_log_no is the row's 0-based place among the run's rows of that kind, ordered by step, and
-- <kind>_logs their number (both null on a row not of that kind), where a kind is
--   loss: a finite loss; grad: a finite grad norm; tput: tokens/s and step time both positive and
--   finite (what throughput_drop reads); lr: a logged learning rate.
-- first_loss_step / last_loss_step: the first and last step with a finite loss (on those rows).
-- Counted from bitmaps, not by sorting: the steps of a run are cut in buckets of 32; per bucket, one
-- bit per step of each kind (a hash aggregate); a row's place is the kinds' steps in the buckets
-- before its own (a running sum over the few buckets of a run) plus the set bits below its own. Equal
-- to row_number() over (partition by run_id order by step) - 1 over the rows of the kind.

with

numbered_runs as (
    -- a number per run in scope: the runs' rows are grouped and joined on it (an integer) below, and
    -- by the rules that pair a step with the one logged before it
    select
        run_id,
        row_number() over (order by run_id) as run_no
    from diagnose_runs
),

steps as (
    select
        r.run_no,
        s.model,
        s.hardware,
        s.precision,
        s.run_id,
        s.step,
        s.ts,
        s.loss,
        s.lr,
        s.grad_norm,
        s.tokens_per_s,
        s.step_time_ms,
        s.data_time_ms,
        s.gpu_util,
        s.gpu_mem_gb,
        s.gpu_mem_total_gb,
        coalesce(abs(s.loss) < cast('Infinity' as double), false) as is_loss,
        coalesce(abs(s.grad_norm) < cast('Infinity' as double), false) as is_grad,
        coalesce(s.tokens_per_s > 0 and s.tokens_per_s < cast('Infinity' as double)
            and s.step_time_ms > 0 and s.step_time_ms < cast('Infinity' as double), false) as is_tput,
        s.lr is not null as is_lr,
        cast(floor(s.step / 32) as bigint) as bucket
    from train_steps as s
    inner join numbered_runs as r
        on r.run_id = s.run_id
),

positioned as (
    select
        *,
        cast(step - 32 * bucket as integer) as bit_no
    from steps
),

buckets as (
    select
        run_no,
        bucket,
        bit_or(case when is_loss then (cast(1 as bigint) << bit_no) else 0 end) as loss_bits,
        bit_or(case when is_grad then (cast(1 as bigint) << bit_no) else 0 end) as grad_bits,
        bit_or(case when is_tput then (cast(1 as bigint) << bit_no) else 0 end) as tput_bits,
        bit_or(case when is_lr then (cast(1 as bigint) << bit_no) else 0 end) as lr_bits,
        min(case when is_loss then step end) as first_loss_step,
        max(case when is_loss then step end) as last_loss_step
    from positioned
    group by run_no, bucket
),

offsets as (
    select
        run_no,
        bucket,
        loss_bits,
        grad_bits,
        tput_bits,
        lr_bits,
        coalesce(sum(bit_count(loss_bits)) over earlier, 0) as loss_before,
        coalesce(sum(bit_count(grad_bits)) over earlier, 0) as grad_before,
        coalesce(sum(bit_count(tput_bits)) over earlier, 0) as tput_before,
        coalesce(sum(bit_count(lr_bits)) over earlier, 0) as lr_before,
        sum(bit_count(loss_bits)) over (partition by run_no) as loss_logs,
        sum(bit_count(grad_bits)) over (partition by run_no) as grad_logs,
        sum(bit_count(tput_bits)) over (partition by run_no) as tput_logs,
        min(first_loss_step) over (partition by run_no) as first_loss_step,
        max(last_loss_step) over (partition by run_no) as last_loss_step
    from buckets
    window earlier as (partition by run_no order by bucket rows between unbounded preceding and 1 preceding)
),

final as (
    select
        p.run_no,
        p.model,
        p.hardware,
        p.precision,
        p.run_id,
        p.step,
        p.ts,
        p.loss,
        p.lr,
        p.grad_norm,
        p.tokens_per_s,
        p.step_time_ms,
        p.data_time_ms,
        p.gpu_util,
        p.gpu_mem_gb,
        p.gpu_mem_total_gb,
        cast(case when p.is_loss then o.loss_before
            + bit_count(o.loss_bits & ((cast(1 as bigint) << p.bit_no) - 1)) end as bigint) as loss_log_no,
        cast(case when p.is_loss then o.loss_logs end as bigint) as loss_logs,
        case when p.is_loss then o.first_loss_step end as first_loss_step,
        case when p.is_loss then o.last_loss_step end as last_loss_step,
        cast(case when p.is_grad then o.grad_before
            + bit_count(o.grad_bits & ((cast(1 as bigint) << p.bit_no) - 1)) end as bigint) as grad_log_no,
        cast(case when p.is_grad then o.grad_logs end as bigint) as grad_logs,
        cast(case when p.is_tput then o.tput_before
            + bit_count(o.tput_bits & ((cast(1 as bigint) << p.bit_no) - 1)) end as bigint) as tput_log_no,
        cast(case when p.is_tput then o.tput_logs end as bigint) as tput_logs,
        cast(case when p.is_lr then o.lr_before
            + bit_count(o.lr_bits & ((cast(1 as bigint) << p.bit_no) - 1)) end as bigint) as lr_log_no
    from positioned as p
    inner join offsets as o
        on o.run_no = p.run_no
        and o.bucket = p.bucket
)

select * from final
