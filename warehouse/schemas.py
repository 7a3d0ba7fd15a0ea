"""Every lake table's schema, declared once. Everything else (writers, validators, DuckDB views,
Spark readers, the JSONL docs) is derived from these constants.

Fact tables are partitioned by ``model``, ``hardware`` and the UTC ``date`` of their time column
(hive layout: ``<table>/model=<m>/hardware=<h>/date=<YYYY-MM-DD>/<key>.parquet``). Partition columns
are part of the logical schema below but are not stored inside the Parquet files: the path carries them.
"""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")

# Bounds on what ingest accepts, so that one bad row costs bounded memory and time: without them a
# JSONL row with a 200 MB run_id ingested, and every later build read it (93 s, a 23.5 GB peak).
# A value, row or line over a bound is quarantined with the bound and the actual size in its reason
# (warehouse/ingest.py, model/importers/); docs/jsonl-schema.md lists them.
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


@dataclass(frozen=True)
class Table:
    name: str
    schema: pa.Schema  # logical schema, partition columns included
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

    def max_chars(self, column: str) -> int | None:
        """The longest value the string column ``column`` takes, in characters (None: not a string)."""
        if not pa.types.is_string(self.schema.field(column).type):
            return None
        if column in self.partition_by:
            return SLUG_CHARS
        return dict(self.wide).get(column, NAME_CHARS)

    @property
    def file_schema(self) -> pa.Schema:
        """The columns stored inside each Parquet file (partition columns live in the path)."""
        return pa.schema([f for f in self.schema if f.name not in self.partition_by])


FACT_PARTITIONS = ("model", "hardware", "date")


def _fields(*pairs: tuple[str, pa.DataType, str]) -> pa.Schema:
    return pa.schema([pa.field(n, t, metadata={"doc": d}) for n, t, d in pairs])


_KEYS = (
    ("model", pa.string(), "model slug: letters, digits and . _ + - (partition key)"),
    ("hardware", pa.string(), "hardware fingerprint, e.g. h100-sxm-80gb-x8 (partition key)"),
    ("date", pa.date32(), "UTC date of the row's time column (partition key; derived, not supplied)"),
)

RUNS = Table(
    name="runs",
    schema=_fields(
        ("run_id", pa.string(), "unique id of a training or evaluation run"),
        ("kind", pa.string(), "train | eval | import"),
        ("model_family", pa.string(), "architecture family, e.g. gpt2, bert"),
        ("n_params", pa.int64(), "trainable parameters"),
        ("gpu_name", pa.string(), "device name as the driver reports it"),
        ("gpu_count", pa.int32(), "accelerators used by the run (0 on CPU)"),
        ("precision", pa.string(), "fp32 | bf16 | fp16 | int8"),
        ("dataset", pa.string(), "data set name or path"),
        ("config_hash", pa.string(), "sha256 prefix of the resolved config"),
        ("code_version", pa.string(), "git commit or package version of the code that ran"),
        ("started_at", TS, "UTC start time"),
        ("ended_at", TS, "UTC end time (null while running)"),
        ("status", pa.string(), "running | completed | failed | diverged"),
        ("source", pa.string(), "trainer | hf-trainer | tensorboard | mlperf | jsonl | synthetic"),
        ("final_loss", pa.float64(), "last training loss (NaN if diverged)"),
        ("steps", pa.int64(), "optimizer steps completed"),
        ("parent_run_id", pa.string(), "training run an eval run belongs to"),
        ("config_json", pa.string(), "resolved config as JSON"),
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
    schema=_fields(
        ("run_id", pa.string(), "run the step belongs to"),
        ("step", pa.int64(), "optimizer step (global, 0-based or as logged)"),
        ("ts", TS, "UTC time the step ended"),
        ("precision", pa.string(), "fp32 | bf16 | fp16 (copied from the run for cube grain)"),
        ("epoch", pa.float64(), "fractional epoch"),
        ("loss", pa.float64(), "training loss; NaN and inf are kept as data"),
        ("lr", pa.float64(), "learning rate used for the step"),
        ("grad_norm", pa.float64(), "global L2 norm of gradients before clipping"),
        ("tokens_per_s", pa.float64(), "tokens processed per second in this step"),
        ("samples_per_s", pa.float64(), "samples processed per second in this step"),
        ("step_time_ms", pa.float64(), "wall time of the whole step"),
        ("data_time_ms", pa.float64(), "part of step_time_ms spent waiting for data"),
        ("loss_scale", pa.float64(), "fp16 GradScaler scale (null otherwise)"),
        ("mfu", pa.float64(), "model FLOPs utilization, 0..1 (null if peak unknown)"),
        ("gpu_util", pa.float64(), "mean accelerator utilization, percent"),
        ("gpu_mem_gb", pa.float64(), "peak accelerator memory allocated, GB"),
        ("gpu_mem_total_gb", pa.float64(), "accelerator memory capacity, GB"),
        ("cpu_util", pa.float64(), "process CPU utilization, percent"),
        ("host_mem_gb", pa.float64(), "process resident memory, GB"),
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
    schema=_fields(
        ("run_id", pa.string(), "run the step belongs to"),
        ("step", pa.int64(), "optimizer step (as in train_steps)"),
        ("ts", TS, "UTC time of the step (as in train_steps)"),
        ("precision", pa.string(), "fp32 | bf16 | fp16 (copied from the run)"),
        ("metric", pa.string(), "name as the log writes it, e.g. mean_token_accuracy, num_tokens, rewards/margins"),
        ("value", pa.float64(), "metric value; NaN and inf are kept as data"),
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
    schema=_fields(
        ("run_id", pa.string(), "evaluation run id"),
        ("train_run_id", pa.string(), "training run the checkpoint came from"),
        ("checkpoint", pa.string(), "checkpoint path or name"),
        ("checkpoint_step", pa.int64(), "training step of the checkpoint"),
        ("ts", TS, "UTC time of the measurement"),
        ("precision", pa.string(), "precision the model was evaluated in"),
        ("suite", pa.string(), "quality | robustness | latency | errors | precision | …"),
        ("metric", pa.string(), "metric name, e.g. loss, perplexity, accuracy, f1, p95_ms"),
        ("value", pa.float64(), "metric value; NaN and inf are kept as data"),
        ("n", pa.int64(), "examples or requests behind the value"),
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
    schema=_fields(
        ("run_id", pa.string(), "evaluation run id"),
        ("checkpoint_step", pa.int64(), "training step of the checkpoint"),
        ("ts", TS, "UTC time the request finished"),
        ("precision", pa.string(), "precision the model served in"),
        ("batch_size", pa.int32(), "requests in the batch"),
        ("seq_len", pa.int32(), "tokens per request"),
        ("latency_ms", pa.float64(), "request latency in milliseconds"),
        ("ok", pa.bool_(), "false for exceptions, NaN/inf outputs and timeouts"),
        *_KEYS,
    ),
    partition_by=FACT_PARTITIONS,
    time_column="ts",
    required=("run_id", "model", "hardware", "latency_ms", "ts"),
    doc="One row per timed inference request, kept raw so percentiles can be merged exactly.",
)

SYSTEM_SAMPLES = Table(
    name="system_samples",
    schema=_fields(
        ("run_id", pa.string(), "run the sample was taken during"),
        ("ts", TS, "UTC sample time"),
        ("device", pa.string(), "cpu | cuda:0 | cuda:1 | …"),
        ("util", pa.float64(), "utilization, percent"),
        ("mem_used_gb", pa.float64(), "memory in use, GB (RSS for cpu)"),
        ("mem_total_gb", pa.float64(), "memory capacity, GB"),
        ("power_w", pa.float64(), "power draw, watts (null where unknown)"),
        ("temperature_c", pa.float64(), "temperature, Celsius (null where unknown)"),
        *_KEYS,
    ),
    partition_by=FACT_PARTITIONS,
    time_column="ts",
    required=("run_id", "model", "hardware", "device", "ts"),
    doc="Periodic per-device samples from a background sampler (psutil, NVML).",
    key=("run_id", "device", "ts"),
)

QUARANTINE = Table(
    name="quarantine",
    schema=_fields(
        ("target_table", pa.string(), "table the row was meant for"),
        ("source", pa.string(), "file the row came from"),
        ("line", pa.int64(), "1-based line (or record index) in that file"),
        ("field", pa.string(), "offending field (null if the whole row is bad)"),
        ("reason", pa.string(), "why the row was rejected"),
        ("raw", pa.string(), "the row as read, for repair and replay"),
        ("ingested_at", TS, "UTC time the row was rejected"),
        ("date", pa.date32(), "UTC date of ingested_at (partition key)"),
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
    schema=_fields(
        ("alert_id", pa.string(), "stable id: hash of rule and subject, so re-running never duplicates"),
        ("rule", pa.string(), "diagnostic rule that fired (sql/diagnostics/<rule>.sql)"),
        ("severity", pa.string(), "info | warning | critical"),
        ("scope", pa.string(), "run (one training run) | fleet (model × hardware × precision over days)"),
        ("run_id", pa.string(), "training run (run-level rules; null for fleet rules)"),
        ("precision", pa.string(), "precision of the run or of the served variant"),
        ("suite", pa.string(), "eval suite (eval rules)"),
        ("metric", pa.string(), "metric the rule compares, e.g. loss, grad_norm, accuracy, p95_ms"),
        ("step_start", pa.int64(), "first anomalous step (run-level rules)"),
        ("step_end", pa.int64(), "last anomalous step seen (run-level rules)"),
        ("start_at", TS, "UTC time the anomaly starts"),
        ("end_at", TS, "UTC time of the last anomalous point seen"),
        ("observed", pa.float64(), "value observed at the start (NaN and inf kept)"),
        ("expected", pa.float64(), "baseline or threshold it is compared with"),
        ("baseline", pa.string(), "what `expected` is: previous window, trailing median, checkpoint, SLO…"),
        ("n_points", pa.int64(), "anomalous points (steps, blocks, checkpoints or days) behind the alert"),
        ("message", pa.string(), "one line: what happened"),
        ("action", pa.string(), "suggested next step"),
        ("detected_at", TS, "UTC time the alert was first computed (kept on re-runs)"),
        ("notified_at", TS, "UTC time the notifiers took it (null: not yet, retried next run)"),
        *_KEYS,
    ),
    partition_by=FACT_PARTITIONS,
    time_column="start_at",
    required=("alert_id", "rule", "model", "hardware", "start_at"),
    doc="One row per alert of the health diagnostics (mhw diagnose); derived from the fact tables.",
)

TABLES: dict[str, Table] = {
    t.name: t for t in (RUNS, TRAIN_STEPS, STEP_METRICS, EVAL_RESULTS, LATENCY_SAMPLES, SYSTEM_SAMPLES, QUARANTINE,
                        ALERTS)
}
DERIVED_TABLES = ("alerts",)  # written by the pipelines, never ingested; not compacted or aged out
FACT_TABLES = tuple(n for n, t in TABLES.items() if t.partition_by == FACT_PARTITIONS and n not in DERIVED_TABLES)
