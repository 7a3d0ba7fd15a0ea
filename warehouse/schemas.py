"""Every lake table's schema, declared once. Everything else (writers, validators, DuckDB views,
Spark readers, the JSONL docs) is derived from these constants.

Fact tables are partitioned by ``model``, ``hardware`` and the UTC ``date`` of their time column
(hive layout: ``<table>/model=<m>/hardware=<h>/date=<YYYY-MM-DD>/<key>.parquet``). Partition columns
are part of the logical schema below but are not stored inside the Parquet files: the path carries them.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import pyarrow as pa

# Column types, by name. The pyarrow types (``Table.schema``, ``arrow_type``, ``TS``) are built on
# first use: a command that only needs names and types (mhw query's DuckDB views) never imports
# pyarrow and numpy, ~0.5 s of its start-up (bench/bench_startup.py).
STRING, INT64, INT32, FLOAT64, BOOL, DATE, TIMESTAMP = "string", "int64", "int32", "float64", "bool", "date32", "timestamp"


def arrow_type(name: str) -> pa.DataType:
    """The pyarrow type of a column type name (TIMESTAMP: microseconds, UTC)."""
    import pyarrow as pa

    return {STRING: pa.string(), INT64: pa.int64(), INT32: pa.int32(), FLOAT64: pa.float64(), BOOL: pa.bool_(),
            DATE: pa.date32(), TIMESTAMP: pa.timestamp("us", tz="UTC")}[name]


def __getattr__(name: str):
    if name == "TS":  # pyarrow's type of every time column, built (and kept) when first asked for
        globals()["TS"] = ts = arrow_type(TIMESTAMP)
        return ts
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Bounds on what ingest accepts, so that one bad row costs bounded memory and time: without them a
# JSONL row with a 200 MB run_id ingested, and every later build read it (93 s, a 23.5 GB peak).
# A value, row or line over a bound is quarantined with the bound and the actual size in its reason
# (warehouse/ingest.py, warehouse/importers/); docs/jsonl-schema.md lists them.
NAME_CHARS = 256  # a string column's default: ids, names and enums (run_id, metric, precision ...)
PATH_CHARS = 4096  # a file path or URI (Linux PATH_MAX): dataset, checkpoint
# Free text, a resolved config as JSON: one value per run, never a per-step key, so a large one costs a
# build little; lm-eval keeps every task's config there (60 K characters for MMLU's 57 tasks).
TEXT_CHARS = 1 << 20
SLUG_CHARS = 128  # partition keys, model and hardware (warehouse/writer.py SLUG)
# The longest run id the trainers make up (mhw train's DAG jobs, the HF callback): Telemetry's file
# keys, slugs too, add up to 39 characters to it (-sys-<time>-<pid>, -b<block>).
RUN_ID_CHARS = 88
MAX_FIELDS = 256  # fields in one row; every table has fewer than 32 columns
LINE_BYTES = 1 << 20  # one line of a line-based log (JSONL, MLLOG, MLflow metrics), checked before parsing
RAW_HEAD = 4096  # what quarantine keeps of a raw row over LINE_BYTES: its first bytes and a note of its size


class Column(NamedTuple):
    name: str
    type: str  # STRING, INT64, INT32, FLOAT64, BOOL, DATE or TIMESTAMP
    doc: str


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]  # logical schema, partition columns included
    partition_by: tuple[str, ...]
    time_column: str  # its UTC date is the `date` partition
    required: tuple[str, ...]  # a row without these is quarantined
    doc: str
    # The columns that identify one fact: ingest keeps one row per key whatever files a run arrives
    # in (checkpoint copies, re-exports). Empty: rows have no natural key (raw samples) and are kept
    # as each file gives them.
    key: tuple[str, ...] = ()
    # String columns allowed past NAME_CHARS (paths, free text), with their bound in characters.
    wide: tuple[tuple[str, int], ...] = ()

    def column(self, name: str) -> Column:
        """The column called ``name`` (KeyError if there is none)."""
        return self._by_name[name]

    @cached_property
    def _by_name(self) -> dict[str, Column]:
        return {c.name: c for c in self.columns}

    def max_chars(self, column: str) -> int | None:
        """The longest value the string column ``column`` takes, in characters (None: not a string)."""
        if self.column(column).type != STRING:
            return None
        if column in self.partition_by:
            return SLUG_CHARS
        return dict(self.wide).get(column, NAME_CHARS)

    @cached_property
    def schema(self) -> pa.Schema:
        """The logical schema as pyarrow's, each field's doc in its metadata."""
        import pyarrow as pa

        return pa.schema([pa.field(c.name, arrow_type(c.type), metadata={"doc": c.doc}) for c in self.columns])

    @cached_property
    def file_schema(self) -> pa.Schema:
        """The columns stored inside each Parquet file (partition columns live in the path)."""
        import pyarrow as pa

        return pa.schema([f for f in self.schema if f.name not in self.partition_by])


FACT_PARTITIONS = ("model", "hardware", "date")


def _fields(*triples: tuple[str, str, str]) -> tuple[Column, ...]:
    return tuple(Column(*t) for t in triples)


_KEYS = (
    ("model", STRING, "model slug: letters, digits and . _ + - (partition key)"),
    ("hardware", STRING, "hardware fingerprint, e.g. h100-sxm-80gb-x8 (partition key)"),
    ("date", DATE, "UTC date of the row's time column (partition key; derived, not supplied)"),
)

RUNS = Table(
    name="runs",
    columns=_fields(
        ("run_id", STRING, "unique id of a training or evaluation run"),
        ("kind", STRING, "train | eval | import"),
        ("model_family", STRING, "architecture family, e.g. gpt2, bert"),
        ("n_params", INT64, "trainable parameters"),
        ("gpu_name", STRING, "device name as the driver reports it"),
        ("gpu_count", INT32, "accelerators used by the run (0 on CPU)"),
        ("precision", STRING, "fp32 | bf16 | fp16 | int8"),
        ("dataset", STRING, "data set name or path"),
        ("config_hash", STRING, "sha256 prefix of the resolved config"),
        ("code_version", STRING, "git commit or package version of the code that ran"),
        ("started_at", TIMESTAMP, "UTC start time"),
        ("ended_at", TIMESTAMP, "UTC end time (null while running)"),
        ("status", STRING, "running | completed | failed | diverged"),
        ("source", STRING, "trainer | hf-trainer | tensorboard | mlperf | jsonl | synthetic"),
        ("final_loss", FLOAT64, "last training loss (NaN if diverged)"),
        ("steps", INT64, "optimizer steps completed"),
        ("parent_run_id", STRING, "training run an eval run belongs to, or that a repair run repairs (repairs)"),
        ("config_json", STRING, "resolved config as JSON"),
        *_KEYS,
    ),
    partition_by=FACT_PARTITIONS,
    time_column="started_at",
    required=("run_id", "model", "hardware", "started_at"),
    doc="One row per training or evaluation run. A run's row is rewritten as its status changes.",
    key=("run_id",),
    wide=(("dataset", PATH_CHARS), ("config_json", TEXT_CHARS)),
)

TRAIN_STEPS = Table(
    name="train_steps",
    columns=_fields(
        ("run_id", STRING, "run the step belongs to"),
        ("step", INT64, "optimizer step (global, 0-based or as logged)"),
        ("ts", TIMESTAMP, "UTC time the step ended"),
        ("precision", STRING, "fp32 | bf16 | fp16 (copied from the run for cube grain)"),
        ("epoch", FLOAT64, "fractional epoch"),
        ("loss", FLOAT64, "training loss; NaN and inf are kept as data"),
        ("lr", FLOAT64, "learning rate used for the step"),
        ("grad_norm", FLOAT64, "global L2 norm of gradients before clipping"),
        ("tokens_per_s", FLOAT64, "tokens processed per second in this step"),
        ("samples_per_s", FLOAT64, "samples processed per second in this step"),
        ("step_time_ms", FLOAT64, "wall time of the whole step"),
        ("data_time_ms", FLOAT64, "part of step_time_ms spent waiting for data"),
        ("loss_scale", FLOAT64, "fp16 GradScaler scale (null otherwise)"),
        ("mfu", FLOAT64, "model FLOPs utilization, 0..1 (null if peak unknown)"),
        ("gpu_util", FLOAT64, "mean accelerator utilization, percent"),
        ("gpu_mem_gb", FLOAT64, "peak accelerator memory allocated, GB"),
        ("gpu_mem_total_gb", FLOAT64, "accelerator memory capacity, GB"),
        ("cpu_util", FLOAT64, "process CPU utilization, percent"),
        ("host_mem_gb", FLOAT64, "process resident memory, GB"),
        *_KEYS,
    ),
    partition_by=FACT_PARTITIONS,
    time_column="ts",
    required=("run_id", "model", "hardware", "step", "ts"),
    doc="One row per optimizer step of a training run.",
    key=("run_id", "step"),
)

STEP_METRICS = Table(
    name="step_metrics",
    columns=_fields(
        ("run_id", STRING, "run the step belongs to"),
        ("step", INT64, "optimizer step (as in train_steps)"),
        ("ts", TIMESTAMP, "UTC time of the step (as in train_steps)"),
        ("precision", STRING, "fp32 | bf16 | fp16 (copied from the run)"),
        ("metric", STRING, "name as the log writes it, e.g. mean_token_accuracy, num_tokens, rewards/margins"),
        ("value", FLOAT64, "metric value; NaN and inf are kept as data"),
        *_KEYS,
    ),
    partition_by=FACT_PARTITIONS,
    time_column="ts",
    required=("run_id", "model", "hardware", "step", "metric", "ts"),
    doc="One row per (run, step, metric) for per-step numbers that have no train_steps column "
        "(an importer's extra keys, tags or tracked stats), so nothing a log records is dropped.",
    key=("run_id", "step", "metric"),
)

EVAL_RESULTS = Table(
    name="eval_results",
    columns=_fields(
        ("run_id", STRING, "evaluation run id"),
        ("train_run_id", STRING, "training run the checkpoint came from"),
        ("checkpoint", STRING, "checkpoint path or name"),
        ("checkpoint_step", INT64, "training step of the checkpoint"),
        ("ts", TIMESTAMP, "UTC time of the measurement"),
        ("precision", STRING, "precision the model was evaluated in"),
        ("suite", STRING, "quality | robustness | latency | errors | precision | …"),
        ("metric", STRING, "metric name, e.g. loss, perplexity, accuracy, f1, p95_ms"),
        ("value", FLOAT64, "metric value; NaN and inf are kept as data"),
        ("n", INT64, "examples or requests behind the value"),
        *_KEYS,
    ),
    partition_by=FACT_PARTITIONS,
    time_column="ts",
    required=("run_id", "model", "hardware", "suite", "metric", "ts"),
    doc="One row per (checkpoint, suite, metric) measurement.",
    # precision too: mhw eval's precision suite measures one checkpoint in several precisions
    key=("run_id", "checkpoint_step", "suite", "metric", "precision"),
    wide=(("checkpoint", PATH_CHARS),),
)

LATENCY_SAMPLES = Table(
    name="latency_samples",
    columns=_fields(
        ("run_id", STRING, "evaluation run id"),
        ("checkpoint_step", INT64, "training step of the checkpoint"),
        ("ts", TIMESTAMP, "UTC time the request finished"),
        ("precision", STRING, "precision the model served in"),
        ("batch_size", INT32, "requests in the batch"),
        ("seq_len", INT32, "tokens per request"),
        ("latency_ms", FLOAT64, "request latency in milliseconds"),
        ("ok", BOOL, "false for exceptions, NaN/inf outputs and timeouts"),
        *_KEYS,
    ),
    partition_by=FACT_PARTITIONS,
    time_column="ts",
    required=("run_id", "model", "hardware", "latency_ms", "ts"),
    doc="One row per timed inference request, kept raw so percentiles can be merged exactly.",
)

SYSTEM_SAMPLES = Table(
    name="system_samples",
    columns=_fields(
        ("run_id", STRING, "run the sample was taken during"),
        ("ts", TIMESTAMP, "UTC sample time"),
        ("device", STRING, "cpu | cuda:0 | cuda:1 | …"),
        ("util", FLOAT64, "utilization, percent"),
        ("mem_used_gb", FLOAT64, "memory in use, GB (RSS for cpu)"),
        ("mem_total_gb", FLOAT64, "memory capacity, GB"),
        ("power_w", FLOAT64, "power draw, watts (null where unknown)"),
        ("temperature_c", FLOAT64, "temperature, Celsius (null where unknown)"),
        *_KEYS,
    ),
    partition_by=FACT_PARTITIONS,
    time_column="ts",
    required=("run_id", "model", "hardware", "device", "ts"),
    doc="Periodic per-device samples from a background sampler (psutil, NVML).",
    key=("run_id", "device", "ts"),
)

SERVING_SCRAPES = Table(
    name="serving_scrapes",
    columns=_fields(
        ("target", STRING, "URL of the /metrics endpoint scraped"),
        ("scraped_at", TIMESTAMP, "UTC time of the scrape"),
        ("precision", STRING, "precision the model is served in"),
        ("server", STRING, "vllm | tgi | triton | unknown: whose metric families the scrape had"),
        ("metric", STRING, "canonical name: requests, e2e_seconds_bucket/_count/_sum, ttft_seconds_*, "
                           "itl_seconds_*, prompt_tokens, output_tokens, queue_depth, running, cache_usage, up"),
        ("status", STRING, "requests only: the status as the server labels it (2xx, 5xx, stop, abort, …)"),
        ("status_class", STRING, "requests only: ok | client_error | server_error | error"),
        ("le", FLOAT64, "histogram buckets only: the bucket's inclusive upper bound (inf for +Inf)"),
        ("labels", STRING, "the series' other labels, k=v sorted and comma-joined (engine=0), so replicas "
                           "inside one server stay apart"),
        ("value", FLOAT64, "cumulative value (counters, buckets, _count, _sum) or the gauge's value"),
        ("created_at", TIMESTAMP, "when the series (its _created sample), else the server process, started; "
                                  "null when the server does not say"),
        ("prev_scraped_at", TIMESTAMP, "the target's previous landed scrape (null: its first)"),
        ("prev_value", FLOAT64, "the same series' value in that scrape (null: not in it)"),
        ("source_metric", STRING, "the sample's name as the server exposes it"),
        *_KEYS,
    ),
    partition_by=FACT_PARTITIONS,
    time_column="scraped_at",
    required=("target", "model", "hardware", "scraped_at", "metric"),
    doc="One row per canonical sample of one scrape of an inference server's Prometheus /metrics (mhw scrape): "
        "cumulative values with the previous scrape's beside them, so per-interval deltas (resets handled) "
        "are a row-local computation (sql/cubes/serving_scrape_base.sql).",
)

SERVING_REQUESTS = Table(
    name="serving_requests",
    columns=_fields(
        ("request_id", STRING, "the server's request id (optional)"),
        ("ts", TIMESTAMP, "UTC time the request arrived"),
        ("precision", STRING, "precision the model served in"),
        ("status", STRING, "status as logged: an HTTP code (200, 500), or ok, error, timeout, stop, abort …"),
        ("status_class", STRING, "ok | client_error | server_error | error (derived from status when absent)"),
        ("e2e_ms", FLOAT64, "end-to-end latency, ms (arrival to last byte)"),
        ("ttft_ms", FLOAT64, "time to first token, ms"),
        ("itl_ms", FLOAT64, "mean inter-token latency of the request, ms ((e2e - ttft) / (output tokens - 1))"),
        ("prompt_tokens", INT64, "tokens in the prompt"),
        ("output_tokens", INT64, "tokens generated"),
        *_KEYS,
    ),
    partition_by=FACT_PARTITIONS,
    time_column="ts",
    required=("model", "hardware", "ts"),
    doc="One row per request from an inference server's per-request log, kept raw so percentiles merge exactly.",
)

QUARANTINE = Table(
    name="quarantine",
    columns=_fields(
        ("target_table", STRING, "table the row was meant for"),
        ("source", STRING, "file the row came from"),
        ("line", INT64, "1-based line (or record index) in that file"),
        ("field", STRING, "offending field (null if the whole row is bad)"),
        ("reason", STRING, "why the row was rejected"),
        ("raw", STRING, "the row as read, for repair and replay"),
        ("ingested_at", TIMESTAMP, "UTC time the row was rejected"),
        ("date", DATE, "UTC date of ingested_at (partition key)"),
    ),
    partition_by=("date",),
    time_column="ingested_at",
    required=(),
    doc="Rows rejected by ingest, with the reason. Nothing is silently dropped.",
    # raw: the row as read up to LINE_BYTES; a longer one keeps its first RAW_HEAD bytes and a note
    wide=(("source", PATH_CHARS), ("reason", TEXT_CHARS), ("raw", LINE_BYTES)),
)

ALERTS = Table(
    name="alerts",
    columns=_fields(
        ("alert_id", STRING, "stable id: hash of rule and subject, so re-running never duplicates"),
        ("rule", STRING, "diagnostic rule that fired (sql/diagnostics/<rule>.sql)"),
        ("severity", STRING, "info | warning | critical"),
        ("scope", STRING, "run (one training run) | fleet (model × hardware × precision over days)"),
        ("run_id", STRING, "training run (run-level rules; null for fleet rules)"),
        ("precision", STRING, "precision of the run or of the served variant"),
        ("suite", STRING, "eval suite (eval rules)"),
        ("metric", STRING, "metric the rule compares, e.g. loss, grad_norm, accuracy, p95_ms"),
        ("step_start", INT64, "first anomalous step (run-level rules)"),
        ("step_end", INT64, "last anomalous step seen (run-level rules)"),
        ("start_at", TIMESTAMP, "UTC time the anomaly starts"),
        ("end_at", TIMESTAMP, "UTC time of the last anomalous point seen"),
        ("observed", FLOAT64, "value observed at the start (NaN and inf kept)"),
        ("expected", FLOAT64, "baseline or threshold it is compared with"),
        ("baseline", STRING, "what `expected` is: previous window, trailing median, checkpoint, SLO…"),
        ("n_points", INT64, "anomalous points (steps, blocks, checkpoints or days) behind the alert"),
        ("message", STRING, "one line: what happened"),
        ("action", STRING, "suggested next step"),
        ("detected_at", TIMESTAMP, "UTC time the alert was first computed (kept on re-runs)"),
        ("notified_at", TIMESTAMP, "UTC time the notifiers took it (null: not yet, retried next run)"),
        *_KEYS,
    ),
    partition_by=FACT_PARTITIONS,
    time_column="start_at",
    required=("alert_id", "rule", "model", "hardware", "start_at"),
    doc="One row per alert of the health diagnostics (mhw diagnose); derived from the fact tables.",
)

REPAIRS = Table(
    name="repairs",
    columns=_fields(
        ("attempt_id", STRING, "stable id of one attempt: hash of the alert and the attempt number (a retry rewrites it)"),
        ("repair_id", STRING, "stable id of the repair: hash of the parent run and the alert it answers"),
        ("attempt", INT32, "1, 2, ... in policy order; 0 for a repair that trained nothing (advice, escalation)"),
        ("alert_id", STRING, "the alert the repair answers (alerts.alert_id)"),
        ("rule", STRING, "that alert's rule: the policy of conf/repair.yaml that was applied"),
        ("severity", STRING, "that alert's severity"),
        ("onset_step", INT64, "that alert's first anomalous step (alerts.step_start)"),
        ("parent_run_id", STRING, "the training run being repaired"),
        ("child_run_id", STRING, "the run this attempt trained (runs.parent_run_id is the parent); null if none"),
        ("action", STRING, "retrain | mark_best | advise | escalate"),
        ("patch", STRING, "name of the policy's patch (conf/repair.yaml)"),
        ("patch_json", STRING, "the config keys the patch changed, as JSON {key: [before, after]}"),
        ("resume_step", INT64, "parent checkpoint step the child started from (null: from scratch)"),
        ("checkpoint", STRING, "the checkpoint the attempt produced or marked (the child's last, or the parent's best)"),
        ("verdict", STRING, "running | healed | not_healed | escalated | advised"),
        ("reason", STRING, "why: the checks behind the verdict, or why a person must look"),
        ("observed", FLOAT64, "the child's loss at its end (validation loss for overfitting)"),
        ("expected", FLOAT64, "the reference it was held to (healthy peers, else the parent before the onset)"),
        ("margin", FLOAT64, "healed if observed <= expected * (1 + margin)"),
        ("compute_s", FLOAT64, "wall seconds the attempt's training took"),
        ("samples", INT64, "training samples the attempt processed (steps x batch x accumulation)"),
        ("owner", STRING, "who ran the attempt: airflow:<dag run>, or cli:<host>:<pid>"),
        ("alert_start_at", TIMESTAMP, "UTC start of the alert's anomaly (its date is the partition, as in alerts)"),
        ("alert_detected_at", TIMESTAMP, "UTC time diagnose first computed the alert"),
        ("started_at", TIMESTAMP, "UTC time the attempt was claimed"),
        ("verdict_at", TIMESTAMP, "UTC time of the verdict (null while running)"),
        ("seconds_to_verdict", FLOAT64, "verdict_at - alert_detected_at, seconds"),
        ("notified_at", TIMESTAMP, "UTC time the notifiers took the verdict (null: not yet)"),
        *_KEYS,
    ),
    partition_by=FACT_PARTITIONS,
    time_column="alert_start_at",
    required=("attempt_id", "repair_id", "parent_run_id", "model", "hardware", "alert_start_at"),
    doc="One row per attempt of the closed-loop repair (mhw repair): the alert, the patch, the parent and "
        "child runs, the verdict, the compute spent. Derived: written by pipelines/repair.py.",
    key=("attempt_id",),
    wide=(("patch_json", TEXT_CHARS), ("reason", TEXT_CHARS), ("checkpoint", PATH_CHARS)),
)

AUDIT_LOG = Table(
    name="audit_log",
    columns=_fields(
        ("entry_id", STRING, "id of the entry; its file is audit-<entry_id>.parquet"),
        ("command", STRING, "ingest | build | diagnose | notify | maintenance | simulate | train | eval | provision | …"),
        ("status", STRING, "started (running, or killed before it ended) | ok | failed"),
        ("user", STRING, "OS user of the process (Superset provisioning: the user Superset runs as)"),
        ("via", STRING, "cli | python | airflow <dag>.<task> <run_id> | superset"),
        ("host", STRING, "machine the command ran on"),
        ("pid", INT64, "process id (with host and started_at: tells a running command from a killed one)"),
        ("command_line", STRING, "the process's argv"),
        ("args", STRING, "the command's arguments, as JSON (long lists cut, with their length)"),
        ("started_at", TIMESTAMP, "UTC time the command started"),
        ("ended_at", TIMESTAMP, "UTC time it ended (null while started)"),
        ("duration_s", FLOAT64, "wall seconds (null while started)"),
        ("exit_code", INT32, "the command's exit code (0 ok; null while started)"),
        ("rows_in", INT64, "rows the command wrote into lake tables (ingest, simulate, train, eval)"),
        ("rows_quarantined", INT64, "rows rejected into quarantine (ingest)"),
        ("files_deleted", INT64, "lake files deleted (retention, replaced ingests, compaction's folded files)"),
        ("partitions", INT64, "partitions rebuilt (build), compacted or aged out (maintenance)"),
        ("alerts_new", INT64, "alerts never seen before (diagnose)"),
        ("counts", STRING, "every count the command reported, as JSON"),
        ("error", STRING, "why it failed: the exception, or the exit code"),
        ("date", DATE, "UTC date of started_at (partition key)"),
    ),
    partition_by=("date",),
    time_column="started_at",
    required=("entry_id", "command", "status", "started_at"),
    doc="One row per lake-changing command (warehouse/audit.py): who ran what, when, with which counts, "
        "and how it ended. Written 'started' before the command changes anything and rewritten in place "
        "(same key) when it ends, so a killed command never claims success.",
    wide=(("command_line", PATH_CHARS), ("args", TEXT_CHARS), ("counts", TEXT_CHARS), ("error", TEXT_CHARS)),
)

TABLES: dict[str, Table] = {
    t.name: t for t in (RUNS, TRAIN_STEPS, STEP_METRICS, EVAL_RESULTS, LATENCY_SAMPLES, SYSTEM_SAMPLES,
                        SERVING_SCRAPES, SERVING_REQUESTS, QUARANTINE, ALERTS, AUDIT_LOG, REPAIRS)
}
# Written by the pipelines, never ingested (no one can forge an alert, an audit entry or a repair
# through mhw ingest); not compacted or aged out.
DERIVED_TABLES = ("alerts", "audit_log", "repairs")
FACT_TABLES = tuple(n for n, t in TABLES.items() if t.partition_by == FACT_PARTITIONS and n not in DERIVED_TABLES)
