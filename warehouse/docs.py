"""Generate ``docs/jsonl-schema.md`` from the schemas (and the importers' own docs), so the document
can never drift from the code: ``python -m warehouse.docs`` rewrites it, ``--check`` fails if the
committed file differs (a test runs the same comparison)."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import pyarrow as pa

from warehouse.schemas import (DERIVED_TABLES, LINE_BYTES, MAX_FIELDS, NAME_CHARS, PATH_CHARS, RAW_HEAD,
                               SLUG_CHARS, TABLES, TEXT_CHARS, TS, Table)

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "jsonl-schema.md"

# One realistic line per table. A test feeds each through ingest's validator, so they stay valid.
EXAMPLES: dict[str, dict] = {
    "runs": {"table": "runs", "run_id": "gpt2-small-20240501-a1", "kind": "train", "model": "gpt2-small",
             "hardware": "a100-40gb-x1", "model_family": "gpt2", "n_params": 124439808, "gpu_count": 1,
             "precision": "bf16", "started_at": "2024-05-01T12:00:00Z", "status": "running", "source": "jsonl"},
    "train_steps": {"table": "train_steps", "run_id": "gpt2-small-20240501-a1", "model": "gpt2-small",
                    "hardware": "a100-40gb-x1", "step": 1200, "ts": "2024-05-01T12:31:07.250Z", "loss": 3.412,
                    "lr": 0.0006, "grad_norm": 0.87, "tokens_per_s": 152340.0, "step_time_ms": 215.1},
    "step_metrics": {"table": "step_metrics", "run_id": "gpt2-small-20240501-a1", "model": "gpt2-small",
                     "hardware": "a100-40gb-x1", "step": 1200, "ts": "2024-05-01T12:31:07.250Z",
                     "metric": "mean_token_accuracy", "value": 0.412},
    "eval_results": {"table": "eval_results", "run_id": "gpt2-small-20240501-a1-eval", "model": "gpt2-small",
                     "hardware": "a100-40gb-x1", "train_run_id": "gpt2-small-20240501-a1",
                     "checkpoint_step": 1200, "ts": 1714567200, "suite": "quality", "metric": "perplexity",
                     "value": 30.4, "n": 2048},
    "latency_samples": {"table": "latency_samples", "run_id": "gpt2-small-serve-1", "model": "gpt2-small",
                        "hardware": "l4-x1", "ts": "2024-05-01T14:00:00.125+02:00", "batch_size": 8,
                        "seq_len": 256, "latency_ms": 41.7, "ok": True},
    "system_samples": {"table": "system_samples", "run_id": "gpt2-small-20240501-a1", "model": "gpt2-small",
                       "hardware": "a100-40gb-x1", "ts": "2024-05-01T12:31:00Z", "device": "cuda:0",
                       "util": 97.0, "mem_used_gb": 31.2, "mem_total_gb": 40.0, "power_w": 310.5},
    "serving_scrapes": {"table": "serving_scrapes", "target": "http://10.0.0.5:8000/metrics", "model": "llama-8b",
                        "hardware": "h100-80gb-x1", "precision": "bf16", "scraped_at": "2024-05-01T14:01:00Z",
                        "server": "vllm", "metric": "e2e_seconds_bucket", "le": 0.5, "labels": "engine=0",
                        "value": 1841.0, "created_at": "2024-05-01T09:12:44Z",
                        "prev_scraped_at": "2024-05-01T14:00:00Z", "prev_value": 1790.0,
                        "source_metric": "vllm:e2e_request_latency_seconds_bucket"},
    "serving_requests": {"table": "serving_requests", "model": "llama-8b", "hardware": "h100-80gb-x1",
                         "precision": "bf16", "ts": "2024-05-01T14:00:00.125Z", "status": "200", "e2e_ms": 812.4,
                         "ttft_ms": 95.1, "itl_ms": 22.3, "prompt_tokens": 412, "output_tokens": 33},
    "quarantine": {"target_table": "train_steps", "source": "/data/steps.jsonl", "line": 42, "field": "loss",
                   "reason": "wrong type: expected a number, got string 'abc'",
                   "raw": "{\"table\": \"train_steps\", \"loss\": \"abc\", \"...\": \"...\"}",
                   "ingested_at": "2024-05-02T08:00:00Z"},
}

RULES = """\
How `mhw ingest` reads JSON lines (`--format jsonl`, or any `*.jsonl` / `*.ndjson` file):

- One JSON object per line; blank lines are skipped. The line's `table` field picks its table, else
  `--table`. The other fields are that table's columns below; a field that is not a column is an error.
- Values are checked strictly and never rewritten. A line that does not fit (invalid JSON, not an
  object, wrong type, missing required column, unparseable timestamp, unknown field, a supplied `date`,
  a `model`/`hardware` that is not a slug such as `../../etc`, `a/b` or `x=y`) is written to the
  `quarantine` table with the file, line, field, reason and the raw line; the other lines are loaded.
- Timestamps: ISO-8601 strings (`2024-05-01T12:00:00Z`, `2024-05-01T14:00:00+02:00`; no offset means
  UTC) or epoch seconds (a number). Stored as UTC microseconds.
- `date` is the UTC date of the table's time column, derived on write: never supply it.
- Integer columns take integral numbers (`3` or `3.0`, not `true` or `"3"`). Number columns take
  numbers, the JSON tokens `NaN`, `Infinity`, `-Infinity`, or the strings `"nan"`, `"inf"`,
  `"-inf"`: NaN and inf are data (a diverged loss) and are kept as they are.
- `null` is the same as leaving a field out. Run metadata flags (`--model`, `--hardware`,
  `--run-id`, `--precision`, ...) fill the columns a line leaves out.
- `model` and `hardware` are partition keys: 1-128 letters, digits and `. _ + -`, starting with a
  letter or digit. A free-form name from a flag or an importer (`--model "distilbert/lora imdb"`)
  becomes one (`distilbert--lora-imdb`); a name longer than 128 keeps its first 111 characters and
  `-` plus 16 hex digits of a SHA-1 of all of it, so long names never collide; a name with no
  letters or digits (`--model ..`) is an error.
- Tables with a key (below) keep one row per key, whatever files a run arrives in: a run exported
  twice, or split over several files, is stored once; where two files give the same key, the row of
  the file that got furthest in the run wins (furthest step, then an ended run, then known timing,
  then more rows). A key repeated inside one file keeps its later line.
- Ingesting a file again replaces what it gave before (rows and quarantine rows); ingesting files in
  another order gives the same lake.
"""

BOUNDS = f"""\
Bounds (`warehouse/schemas.py`), so that one bad line costs bounded memory, at ingest and in every
build after it:

- A line over {LINE_BYTES:,} bytes (1 MiB) is rejected before it is parsed (`line too long`), however
  long it is: the file is read in chunks. Quarantine keeps its first {RAW_HEAD:,} bytes and a note of
  its size. The same holds for MLPerf and MLflow metric lines. A rejected row's `raw` is kept whole
  up to {LINE_BYTES:,} characters, in every format; a longer one is cut the same way.
- A row with more than {MAX_FIELDS} fields is rejected (`too many fields`).
- A string longer than its column's bound (the type column below) is rejected (`too long`, with the
  field, the bound and the length): ids, names and enums {NAME_CHARS} characters, paths and URIs
  (`dataset`, `checkpoint`) {PATH_CHARS:,}, the free text of `config_json` {TEXT_CHARS:,} (1 Mi), `model`
  and `hardware` {SLUG_CHARS}. Characters are Unicode code points.
- A file may hold any number of lines: they are read one at a time.
"""


def _json_type(f: pa.Field, table: Table) -> str:
    t = f.type
    if f.name in table.partition_by and f.name == "date":
        return "date (derived)"
    if t == TS:
        return "timestamp"
    if pa.types.is_string(t):
        return f"string (≤ {table.max_chars(f.name):,})"
    if pa.types.is_integer(t):
        return f"integer (int{t.bit_width})"
    if pa.types.is_floating(t):
        return "number"
    if pa.types.is_boolean(t):
        return "boolean"
    return str(t)


def _doc(f: pa.Field) -> str:
    return (f.metadata or {}).get(b"doc", b"").decode().replace("|", "\\|")


def render_table(table: Table) -> str:
    loadable = table.name != "quarantine"
    lines = [f"## `{table.name}`", "", table.doc, ""]
    lines.append(f"Time column `{table.time_column}`; partitioned by {', '.join(f'`{k}`' for k in table.partition_by)}."
                 + (f" One row per ({', '.join(f'`{k}`' for k in table.key)})." if table.key else "")
                 + ("" if loadable else " Written by ingest only: not accepted as input."))
    lines += ["", "| column | type | required | description |", "|---|---|---|---|"]
    for f in table.schema:
        req = "yes" if f.name in table.required else ("derived" if f.name == "date" else "")
        lines.append(f"| `{f.name}` | {_json_type(f, table)} | {req} | {_doc(f)} |")
    label = "Example line" if loadable else "Example row, as ingest writes it"
    lines += ["", f"{label}:", "", "```json", json.dumps(EXAMPLES[table.name]), "```", ""]
    return "\n".join(lines)


def _md(docstring: str) -> str:
    return (docstring or "").strip().replace("``", "`")


def render_importers() -> str:
    from warehouse.importers import names

    out = ["## Other formats", "",
           "`--format auto` (the default) picks the format from the name and first bytes: `*tfevents*` files "
           "are TensorBoard, files with `:::MLLOG` lines MLPerf, a file named `*trainer_state*` or a JSON "
           "document with `log_history` a Trainer state, a JSON document with `results` and `versions` or "
           "`configs` lm-eval results, a first line that is an object with `e2e_ms` and no `table` a per-request "
           "serving log, `*.jsonl` or a first line starting with `{` JSON lines. A directory is an "
           "MLflow file store (folders with a run's `meta.yaml`) or a TensorBoard log dir. Their rows go through "
           "the same checks, keys and quarantine as JSON lines.", ""]
    for fmt, module in (("hf-trainer", "hf_trainer"), ("tensorboard", "tensorboard"), ("mlperf", "mlperf"),
                        ("lm-eval", "lm_eval"), ("mlflow", "mlflow"), ("serving-log", "serving_log")):
        mod = importlib.import_module(f"warehouse.importers.{module}")
        out += [f"### `--format {fmt}`", "", _md(mod.__doc__), ""]
    mlperf = importlib.import_module("warehouse.importers.mlperf")
    out += ["MLPerf `eval_accuracy` by benchmark (`warehouse/importers/mlperf.py`, `BENCHMARKS`):", "",
            "| benchmark | metric | better | target |", "|---|---|---|---|"]
    rows = [(b, m, hib, t) for b, (m, hib, t) in mlperf.BENCHMARKS.items()]
    rows += [(f"{b} ({part})", m, hib, t) for (b, part), (m, hib, t) in mlperf.PART_METRICS.items()]
    for b, m, hib, t in sorted(rows):
        out.append(f"| `{b}` | `{m}` | {'higher' if hib else 'lower'} | {'≥' if hib else '≤'} {t:g} |")
    by_column: dict[tuple[str, float], list[str]] = {}
    for tag, target in names.TRAIN_ALIASES.items():
        by_column.setdefault(target, []).append(tag)
    out += ["", "TensorBoard tag and MLflow metric aliases (`warehouse/importers/names.py`, `TRAIN_ALIASES`):", "",
            "| train_steps column | names |", "|---|---|"]
    for (column, factor), tags in by_column.items():
        scale = f" (x{factor:g})" if factor != 1.0 else ""
        out.append(f"| `{column}`{scale} | {', '.join(f'`{t}`' for t in tags)} |")
    out += ["", f"Eval prefixes: {', '.join(f'`{p}`' for p in names.EVAL_PREFIXES)}; "
                f"test prefixes: {', '.join(f'`{p}`' for p in names.TEST_PREFIXES)}.", ""]
    return "\n".join(out)


def render() -> str:
    head = ["# Ingest formats: the JSONL row schema", "",
            "<!-- Generated by `python -m warehouse.docs` from warehouse/schemas.py and warehouse/importers/; "
            "do not edit by hand. -->", "", RULES, BOUNDS]
    body = [render_table(t) for t in TABLES.values() if t.name not in DERIVED_TABLES]
    return "\n".join(head + body) + "\n" + render_importers()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m warehouse.docs", description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if the committed file is out of date")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        current = DOC_PATH.read_text() if DOC_PATH.exists() else ""
        if current != text:
            print(f"{DOC_PATH} is out of date: run python -m warehouse.docs", file=sys.stderr)
            return 1
        return 0
    DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
    DOC_PATH.write_text(text)
    print(f"wrote {DOC_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
