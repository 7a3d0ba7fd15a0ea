"""Importers: turn a training log someone else wrote into candidate lake rows.

Each format module exposes ``parse(path, meta) -> Parsed``. An importer only *reads*: it maps the
format's fields onto the lake's column names and leaves every check (types, required columns, slugs)
to ``warehouse.ingest``, which validates, writes and quarantines the rows of every format alike.

    jsonl        one JSON object per line, field names = column names   (model/importers/jsonl.py)
    hf-trainer   Hugging Face Trainer ``trainer_state.json``             (model/importers/hf_trainer.py)
    tensorboard  TensorBoard event files, or a log dir of them           (model/importers/tensorboard.py)
    mlperf       ``:::MLLOG {json}`` lines of mlperf-logging             (model/importers/mlperf.py)
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
from dataclasses import dataclass, field, fields
from datetime import datetime

from warehouse.schemas import TABLES

FORMATS = ("jsonl", "hf-trainer", "tensorboard", "mlperf")
_MODULES = {"jsonl": "jsonl", "hf-trainer": "hf_trainer", "tensorboard": "tensorboard", "mlperf": "mlperf"}


class SourceError(ValueError):
    """A file that cannot be read or parsed at all (as opposed to single bad rows, which are
    quarantined)."""


@dataclass
class Record:
    """One candidate row. ``values`` maps column names to values as read; ``error`` is set when the
    importer could not even decode the row (invalid JSON, ...), and the row goes to quarantine."""

    table: object  # target table name as given (validated by ingest; may be None or junk)
    values: object  # normally a dict of column -> value
    line: int | None = None  # 1-based line, or record index where the format has no lines
    raw: str | None = None  # the row as read, kept in quarantine for repair and replay
    error: tuple[str | None, str] | None = None  # (field, reason) found while decoding


@dataclass
class Parsed:
    source: str  # absolute path of the file (or TensorBoard run dir) the records came from
    format: str
    records: list[Record] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # things skipped or assumed, shown to the user


@dataclass
class RunMeta:
    """Run metadata from the command line (``--model``, ``--hardware`` ...). ``None`` = not given.
    Importers prefer these over anything they guess from the file."""

    run_id: str | None = None
    model: str | None = None
    hardware: str | None = None
    precision: str | None = None
    model_family: str | None = None
    n_params: int | None = None
    gpu_name: str | None = None
    gpu_count: int | None = None
    dataset: str | None = None
    code_version: str | None = None
    started_at: datetime | None = None

    def given(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def run_columns(self) -> dict:
        """The given values that are columns of the runs table (run_id, model, hardware excluded:
        importers resolve those themselves)."""
        skip = {"run_id", "model", "hardware"}
        return {k: v for k, v in self.given().items() if k in TABLES["runs"].schema.names and k not in skip}


def parse(path: str, fmt: str, meta: RunMeta, table: str | None = None) -> Parsed:
    """Parse one source. ``table`` is the default target table of JSONL lines without one."""
    if fmt not in _MODULES:
        raise SourceError(f"{path}: unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    module = importlib.import_module(f"model.importers.{_MODULES[fmt]}")
    return module.parse(path, meta, table) if fmt == "jsonl" else module.parse(path, meta)


def json_type(v) -> str:
    """A value's JSON type name, for messages about rows that came from JSON."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    return {"list": "array", "dict": "object"}.get(type(v).__name__, type(v).__name__)


def default_run_id(prefix: str, path: str) -> str:
    """A stable run id for a file that names none: the same absolute path always gives the same id."""
    return f"{prefix}-{hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]}"


def is_event_file(name: str) -> bool:
    return "tfevents" in os.path.basename(name)


def sources(path: str, fmt: str = "auto") -> list[tuple[str, str]]:
    """Expand a command-line PATH into (source, format) pairs. A directory is a TensorBoard log dir:
    each folder in it that holds event files is one source (one run)."""
    if not os.path.exists(path):
        raise SourceError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        if fmt not in ("auto", "tensorboard"):
            raise SourceError(f"{path}: is a directory; only --format tensorboard reads directories")
        run_dirs = sorted({root for root, _, files in os.walk(path) if any(is_event_file(f) for f in files)})
        if not run_dirs:
            raise SourceError(f"{path}: directory holds no TensorBoard event files (*tfevents*)")
        return [(d, "tensorboard") for d in run_dirs]
    return [(path, detect(path) if fmt == "auto" else fmt)]


def detect(path: str) -> str:
    """Guess a file's format from its name and first bytes."""
    name = os.path.basename(path).lower()
    if is_event_file(name):
        return "tensorboard"
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError as e:
        raise SourceError(f"{path}: cannot read: {e.strerror or e}") from e
    if b":::MLLOG" in head:
        return "mlperf"
    if name.endswith(".json"):  # a whole-file JSON document: a trainer_state.json has log_history
        try:
            with open(path, "rb") as f:
                doc = json.load(f)
            if isinstance(doc, dict) and "log_history" in doc:
                return "hf-trainer"
        except (ValueError, OSError):
            pass  # not one document; may still be JSON lines
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    first = next((ln.strip() for ln in head.lstrip(b"\xef\xbb\xbf").splitlines() if ln.strip()), b"")
    if first.startswith(b"{"):
        return "jsonl"
    raise SourceError(
        f"{path}: cannot tell its format (not JSON lines, trainer_state.json, MLLOG or TensorBoard); "
        f"pass --format"
    )


def identity(path: str, meta: RunMeta, prefix: str, model: str | None = None,
             hardware: str | None = None) -> dict:
    """run_id, model and hardware of an imported run: the flags win over what the file says; free-form
    names become slugs (``distilbert/lora-imdb`` -> ``distilbert--lora-imdb``)."""
    from warehouse.writer import slugify

    model, hardware = meta.model or model, meta.hardware or hardware
    missing = [flag for flag, v in (("--model", model), ("--hardware", hardware)) if not v]
    if missing:
        raise SourceError(f"{path}: the file does not say its {' or '.join(m[2:] for m in missing)}; "
                          f"pass {' and '.join(missing)}")
    return {"run_id": meta.run_id or default_run_id(prefix, path),
            "model": slugify(str(model)), "hardware": slugify(str(hardware))}


def number(v) -> float | None:
    """``v`` as a float if it is a JSON number (not a bool), else None."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
