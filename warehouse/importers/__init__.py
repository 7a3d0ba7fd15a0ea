"""Importers: turn a training log someone else wrote into candidate lake rows.

Each format module exposes ``parse(path, meta) -> Parsed``. An importer only *reads*: it maps the
format's fields onto the lake's column names and leaves every check (types, required columns, slugs)
to ``warehouse.ingest``, which validates, writes and quarantines the rows of every format alike.

    jsonl        one JSON object per line, field names = column names   (warehouse/importers/jsonl.py)
    hf-trainer   Hugging Face Trainer ``trainer_state.json``             (warehouse/importers/hf_trainer.py)
    tensorboard  TensorBoard event files, or a log dir of them           (warehouse/importers/tensorboard.py)
    mlperf       ``:::MLLOG {json}`` lines of mlperf-logging             (warehouse/importers/mlperf.py)
    lm-eval      lm-evaluation-harness results JSON                      (warehouse/importers/lm_eval.py)
    mlflow       MLflow file store: ``mlruns/`` or one run folder of it  (warehouse/importers/mlflow.py)
    serving-log  per-request serving log, JSON lines with ``e2e_ms``    (warehouse/importers/serving_log.py)

Numbers a format logs per step that have no ``train_steps`` column go to ``step_metrics`` (one row
per run, step and metric), so nothing numeric is dropped. Run ids are stable: the file's own id
where it has one (MLflow), else a hash of what every copy of the run shares (a trainer state's
first log entry and trainer arguments, an MLPerf log's benchmark, platform and start), so copies
and checkpoints of one run land as one run; ``--run-id`` overrides.
"""
from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import re
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta

from warehouse.schemas import LINE_BYTES, RAW_HEAD, TABLES

FORMATS = ("jsonl", "hf-trainer", "tensorboard", "mlperf", "lm-eval", "mlflow", "serving-log")
_MODULES = {"jsonl": "jsonl", "hf-trainer": "hf_trainer", "tensorboard": "tensorboard", "mlperf": "mlperf",
            "lm-eval": "lm_eval", "mlflow": "mlflow", "serving-log": "serving_log"}
DIRECTORY_FORMATS = ("tensorboard", "mlflow")  # formats whose source may be a folder


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
    file: str | None = None  # the file inside a folder source (an event file, an MLflow metric) ``line`` is in

    def __post_init__(self):
        # Quarantine keeps raw rows of every format bounded: verbatim up to LINE_BYTES characters
        # (any line a line-based format accepts), else the head and a note of the size.
        if isinstance(self.raw, str) and len(self.raw) > LINE_BYTES:
            self.raw = cut_raw(self.raw[:RAW_HEAD], len(self.raw), "characters")


def cut_raw(head: str, size: int, unit: str = "bytes") -> str:
    """The raw row quarantine keeps for a row over the bounds: its first RAW_HEAD bytes or characters
    (``head``) and a note of its size."""
    return f"{head}... [cut: the row is {size:,} {unit}; quarantine keeps the first {RAW_HEAD:,}]"


def line_too_long(size: int) -> str:
    """The reason for rejecting a line over LINE_BYTES unparsed (kind 'line too long')."""
    return f"line too long: {size:,} bytes, over the limit of {LINE_BYTES:,} (1 MiB); not parsed"


_EOL = re.compile(rb"\r\n|\r|\n")


def read_lines(f, limit: int = LINE_BYTES, chunk: int = 1 << 20):
    """``(line number, line, size)`` for each line of the binary file ``f``, split where
    ``bytes.splitlines`` splits (``\\n``, ``\\r\\n``, ``\\r``), read in chunks: memory stays bounded
    whatever the file holds. ``size`` is None for a line within ``limit`` bytes; for a longer one it
    is the line's length and ``line`` only its first RAW_HEAD bytes (the rest is read and dropped),
    for the caller to reject unparsed."""
    keep = min(RAW_HEAD, limit)
    buf, lineno, eof = b"", 0, False
    head, size = None, 0  # while inside a line over the limit: its first bytes and its length so far
    while True:
        data = f.read(chunk)
        eof = not data
        buf += data
        start = 0
        while True:
            m = _EOL.search(buf, start)
            if m is None or (m.end() == len(buf) and m.group() == b"\r" and not eof):
                break  # no whole line left in the buffer (a final \r may be half of a \r\n)
            line, start, lineno = buf[start:m.start()], m.end(), lineno + 1
            if head is not None:
                yield lineno, head, size + len(line)
                head = None
            elif len(line) > limit:
                yield lineno, line[:keep], len(line)
            else:
                yield lineno, line, None
        rest = buf[start:]
        if eof:
            if head is not None:
                yield lineno + 1, head, size + len(rest)
            elif rest:
                yield (lineno + 1, rest, None) if len(rest) <= limit else (lineno + 1, rest[:keep], len(rest))
            return
        if head is None and len(rest) - rest.endswith(b"\r") > limit:  # a final \r is a break, not the line
            head, size = rest[:keep], 0
        if head is not None:  # drop what is read of the long line; keep a final \r (see above)
            cr = int(rest.endswith(b"\r"))
            size += len(rest) - cr
            rest = rest[len(rest) - cr:]
        buf = rest


BLOCK_BYTES = 1 << 23  # what read_blocks reads at a time: 8 MiB, ~25,000 lines of a trainer's log


def line_breaks(data: bytes) -> int:
    """How many line breaks ``data`` holds, as read_lines counts them (``\\r\\n`` is one)."""
    import numpy as np  # counts 4x faster than bytes.count; only ingest, which has it loaded, comes here

    n = int(np.count_nonzero(np.frombuffer(data, np.uint8) == 10))
    return n + data.count(b"\r") - data.count(b"\r\n") if b"\r" in data else n


def read_blocks(f, size: int = BLOCK_BYTES, limit: int = LINE_BYTES, seen=None):
    """``(first line number, block, size)`` for the binary file ``f`` read in blocks of about ``size``
    bytes, each holding whole lines as read_lines splits them: a block ends just after a line break
    (or at the end of the file), so ``read_lines`` of a block gives exactly the lines read_lines of the
    file gives there, numbered from the block's first. ``size`` is None for a block; a line over
    ``limit`` that does not end within a block comes as read_lines gives it (its first RAW_HEAD bytes
    and its length, the rest read and dropped), so memory stays bounded whatever the file holds.
    Blocks are bytearrays. ``seen(bytes)``, when given, is called with every byte read, in order (a
    hash of the file, read once)."""
    keep = min(RAW_HEAD, limit)
    lineno, buf = 1, b""
    while True:
        # read into place after what is left of the last read: a block's bytes are never copied
        fresh = bytearray(len(buf) + size)
        fresh[:len(buf)] = buf
        with memoryview(fresh) as view, view[len(buf):] as room:
            got = f.readinto(room)
            if seen is not None and got:
                with room[:got] as read:
                    seen(read)
        del fresh[len(buf) + got:]
        buf = fresh
        if not got:  # the end: what is left is whole lines, the last one without its break
            if buf:
                yield lineno, buf, None
            return
        # after the last break whose end is known (a final \r may be half of a \r\n)
        cut = max(buf.rfind(b"\n"), buf.rfind(b"\r", 0, len(buf) - 1)) + 1
        if cut:
            block, buf = (buf, b"") if cut == len(buf) else (buf, buf[cut:])
            del block[cut:]
            yield lineno, block, None
            lineno += line_breaks(block)
            del block
        if len(buf) - buf.endswith(b"\r") > limit:  # a line over the limit, not ended: read through it
            head = buf[:keep]
            if buf.endswith(b"\r"):  # it ends at that \r (a \n read next is the same break)
                length, rest, pending_cr = len(buf) - 1, b"", True
            else:
                length, rest, pending_cr = len(buf), None, False
                while rest is None:
                    data = f.read(size)
                    if seen is not None:
                        seen(data)
                    if not data:
                        yield lineno, head, length
                        return
                    m = _EOL.search(data)
                    if m is None:
                        length += len(data)
                        continue
                    length, rest = length + m.start(), data[m.end():]
                    pending_cr = m.group() == b"\r" and not rest
            if pending_cr:
                data = f.read(size)
                if seen is not None:
                    seen(data)
                rest = data[1:] if data.startswith(b"\n") else data
            buf = rest
            yield lineno, head, length
            lineno += 1


def block_lines(lineno: int, block: bytes, limit: int = LINE_BYTES):
    """read_lines of one block from read_blocks, numbered as in the file."""
    for n, line, size in read_lines(io.BytesIO(block), limit):
        yield lineno + n - 1, line, size


@dataclass(frozen=True)
class StepClock:
    """Derived time for formats that record none (a trainer state): ``ts = started_at + step /
    max_steps * span_s``. Ingest re-stamps every row of a run with the clock of its most advanced
    file, so rows of one run read from several checkpoint copies share one consistent series."""

    started_at: datetime
    span_s: float
    max_steps: float

    def at(self, step) -> datetime | None:
        s = number(step)
        if s is None:
            return None
        frac = s / self.max_steps if self.max_steps else 0.0
        return self.started_at + timedelta(seconds=frac * self.span_s)

    @property
    def ended_at(self) -> datetime:
        return self.started_at + timedelta(seconds=self.span_s)


@dataclass
class Parsed:
    source: str  # absolute path of the file (or TensorBoard run dir) the records came from
    format: str
    records: list[Record] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # things skipped or assumed, shown to the user
    clock: StepClock | None = None  # set when the rows' timestamps are derived, not read


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
    module = importlib.import_module(f"warehouse.importers.{_MODULES[fmt]}")
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
    """A stable run id for a file that names none: the same real path (a symlink's target) always gives
    the same id."""
    return f"{prefix}-{hashlib.sha1(os.path.realpath(path).encode()).hexdigest()[:12]}"


def content_run_id(prefix: str, shared: object) -> str:
    """A run id from what every file of one run has in common (``shared``, JSON-serializable), so
    checkpoint copies and re-exports of a run get the same id wherever they lie."""
    blob = json.dumps(shared, sort_keys=True, default=str, allow_nan=True)
    return f"{prefix}-{hashlib.sha1(blob.encode()).hexdigest()[:12]}"


def is_event_file(name: str) -> bool:
    return "tfevents" in os.path.basename(name)


def sources(path: str, fmt: str = "auto") -> list[tuple[str, str]]:
    """Expand a command-line PATH into (source, format) pairs. A directory is an MLflow file store
    (each run folder in it, found by its ``meta.yaml``, is one source; runs under ``.trash`` are
    deleted and skipped) or a TensorBoard log dir (each folder holding event files is one source).
    With ``--format auto`` an MLflow store wins over the TensorBoard logs inside its runs' artifacts,
    which would otherwise import the same run twice under two ids."""
    if not os.path.exists(path):
        raise SourceError(f"{path}: no such file or directory")
    if not os.path.isdir(path):
        return [(path, detect(path) if fmt == "auto" else fmt)]
    if fmt not in ("auto", *DIRECTORY_FORMATS):
        raise SourceError(f"{path}: is a directory; only --format {' or '.join(DIRECTORY_FORMATS)} read directories")
    found: list[tuple[str, str]] = []
    mlflow_runs = _mlflow_run_dirs(path) if fmt in ("auto", "mlflow") else []
    found += [(d, "mlflow") for d in mlflow_runs]
    if fmt in ("auto", "tensorboard"):
        inside = tuple(os.path.join(d, "") for d in mlflow_runs)
        run_dirs = sorted({root for root, _, files in os.walk(path) if any(is_event_file(f) for f in files)})
        found += [(d, "tensorboard") for d in run_dirs if not os.path.join(d, "").startswith(inside)]
    if not found:
        wanted = {"auto": "no MLflow runs (*/meta.yaml with a run_id) and no TensorBoard event files (*tfevents*)",
                  "mlflow": "no MLflow runs (*/meta.yaml with a run_id)",
                  "tensorboard": "no TensorBoard event files (*tfevents*)"}[fmt]
        raise SourceError(f"{path}: directory holds {wanted}")
    return found


def _mlflow_run_dirs(path: str) -> list[str]:
    """Folders under ``path`` (itself included) that are MLflow file-store runs: a ``meta.yaml``
    naming a ``run_id``/``run_uuid``."""
    runs = []
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d not in (".trash", "artifacts")]
        if "meta.yaml" in files:
            try:
                with open(os.path.join(root, "meta.yaml"), "rb") as f:
                    head = f.read(1 << 14)
            except OSError:
                continue
            if re.search(rb"^(run_uuid|run_id):", head, re.M):
                runs.append(root)
                dirs[:] = []  # a run's own folders (metrics/, params/, tags/) hold no runs
    return sorted(runs)


def is_trainer_state_name(path: str) -> bool:
    name = os.path.basename(path).lower()
    return "trainer_state" in name and name.endswith(".json")


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
    if is_trainer_state_name(name):
        return "hf-trainer"  # named so: the importer says what is missing if it is not one
    text = head.lstrip(b"\xef\xbb\xbf")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = lines[0] if lines else b""
    if first.startswith(b"{") and _is_serving_log(first):
        return "serving-log"
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    # One JSON document? Parsed whole only when named .json or when its first 64 KiB hold a line break:
    # a file whose first line alone is larger is JSON lines with a giant line, read line by line.
    if (name.endswith(".json") or first.startswith(b"{") and b"\n" in head) and not _is_json_line(lines):
        doc = _json_document(path)
        if isinstance(doc, dict):
            if isinstance(doc.get("log_history"), list):
                return "hf-trainer"
            if isinstance(doc.get("results"), dict) and any(k in doc for k in LM_EVAL_KEYS):
                return "lm-eval"
            if len(lines) > 1:  # pretty-printed: as JSON lines every line would be rejected
                keys = ", ".join(sorted(map(str, doc))[:12])
                raise SourceError(
                    f"{path}: one JSON document (not JSON lines) of no known format: a trainer_state.json needs "
                    f"'log_history', lm-eval results need 'results' with 'versions' or 'configs' (keys found: {keys})")
    if first.startswith(b"{"):
        return "jsonl"
    if first.startswith((b"# HELP ", b"# TYPE ")):
        raise SourceError(f"{path}: a Prometheus /metrics scrape (text exposition format): serving counters at one "
                          f"instant, not a training or evaluation log; no importer reads it")
    raise SourceError(
        f"{path}: cannot tell its format (not JSON lines, trainer_state.json, lm-eval results, MLLOG, MLflow or "
        f"TensorBoard); pass --format"
    )


def _is_serving_log(first: bytes) -> bool:
    from warehouse.importers.serving_log import looks_like

    return looks_like(first)


LM_EVAL_KEYS = ("versions", "configs", "n-shot", "higher_is_better")  # beside 'results' in lm-eval output


def _is_json_line(lines: list[bytes]) -> bool:
    """The first line is a whole JSON object and more lines follow: JSON lines, not a document (which
    saves parsing a large JSON-lines file whole)."""
    if len(lines) < 2:
        return False
    try:
        return isinstance(json.loads(lines[0]), dict)
    except ValueError:
        return False


def read_json(path: str, what: str):
    """The file parsed as one JSON document; SourceError naming the file and ``what`` it should have
    been when it cannot be read or is not JSON."""
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except OSError as e:
        raise SourceError(f"{path}: cannot read: {e.strerror or e}") from e
    except ValueError as e:
        raise SourceError(f"{path}: not {what}: not valid JSON: {e}") from e


def _json_document(path: str):
    """The file parsed as one JSON document, or None if it is not one (e.g. JSON lines)."""
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (ValueError, OSError):
        return None


def identity(path: str, meta: RunMeta, prefix: str, model: str | None = None,
             hardware: str | None = None, run_id: str | None = None) -> dict:
    """run_id, model and hardware of an imported run: the flags win over what the file says; free-form
    names become slugs (``distilbert/lora-imdb`` -> ``distilbert--lora-imdb``). ``run_id`` is the
    file's own (or content-derived) id; without one the id is a hash of the path."""
    from warehouse.writer import PartitionError, slugify

    model, hardware = meta.model or model, meta.hardware or hardware
    missing = [flag for flag, v in (("--model", model), ("--hardware", hardware)) if not v]
    if missing:
        raise SourceError(f"{path}: the file does not say its {' or '.join(m[2:] for m in missing)}; "
                          f"pass {' and '.join(missing)}")
    names = {}
    for what, v in (("model", model), ("hardware", hardware)):
        try:
            names[what] = slugify(str(v))
        except PartitionError as e:  # e.g. a benchmark named '..': no name to store it under
            raise SourceError(f"{path}: the file's {what} {e}; pass --{what}") from None
    return {"run_id": meta.run_id or run_id or default_run_id(prefix, path), **names}


def number(v) -> float | None:
    """``v`` as a float if it is a JSON number (not a bool), else None."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
