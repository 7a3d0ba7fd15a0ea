"""The column path of JSONL ingest (warehouse/jsonl_columns.py) against the row path it replaces:
the same lake, row for row, and the same quarantine (line, field, reason, raw), for the odd lines a
real log holds and for seeded random mixes of good and broken lines. Blocks and parse units are made
tiny here so that every file crosses many of them."""
from __future__ import annotations

import functools
import json
import random

import pytest

from warehouse.importers import RunMeta, parse
from warehouse import cli, ingest, jsonl_columns
from warehouse.query import connect
from warehouse.schemas import TABLES

RUN, MODEL, HW = "r1", "gpt2-tiny", "cpu-x1"
STEP = {"table": "train_steps", "run_id": RUN, "model": MODEL, "hardware": HW}


def _row_path(self, source, table, shown_as, fill=None, identity=None, digest=None, path=None, resolve=None):
    """What ``mhw ingest`` did before the column path: every line through json.loads and validate."""
    digest = digest or ingest.content_digest(source)
    identity = resolve(digest) if resolve else identity
    return self.add(parse(source, "jsonl", RunMeta(), table), shown_as, fill, identity, digest, path)


def lake_rows(lake: str) -> dict[str, list]:
    con = connect(lake_root=lake, serving_path="")
    out = {}
    for name, table in TABLES.items():
        if name in ("alerts", "audit_log"):  # the audit log records each ingest call itself: never equal
            continue
        cols = [c for c in table.schema.names if c != "ingested_at"]
        rows = con.execute(f"select {', '.join(cols)} from {name} order by all").fetchall()
        out[name] = [tuple(_nan(v) for v in r) for r in rows]
    return out


def _nan(v):
    return "NaN" if isinstance(v, float) and v != v else v  # NaN == NaN, for comparing lakes


def ingest_both(tmp_path, monkeypatch, text: bytes | str, *flags: str, block: int = 4096, batch: int = 16):
    """(column-path lake rows, row-path lake rows, column exit code, row exit code) of one file."""
    path = tmp_path / "log.jsonl"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    monkeypatch.setattr(jsonl_columns, "read_blocks", functools.partial(jsonl_columns.read_blocks, size=block))
    monkeypatch.setattr(jsonl_columns, "BATCH_ROWS", batch)  # DuckDB reads many batches
    monkeypatch.setattr(jsonl_columns, "ROW_PATH_LINES", 0)  # a small file takes the columns too
    init, seen = jsonl_columns.Reader.__init__, []

    def counting(self, default, fill, row_path):  # how many lines the column path handed to the row path
        init(self, default, fill, lambda *a: (seen.append(a[0]), row_path(*a))[1])

    monkeypatch.setattr(jsonl_columns.Reader, "__init__", counting)
    got = {}
    for kind in ("columns", "rows"):
        with monkeypatch.context() as m:
            if kind == "rows":
                m.setattr(ingest.Ingester, "add_jsonl", _row_path)
            lake = str(tmp_path / f"lake-{kind}")
            rc = cli.main(["ingest", str(path), "--lake", lake, "--source-name", "log", *flags])
            got[kind] = (lake_rows(lake), rc)
    ingest_both.row_path_lines = len(seen)
    return got["columns"], got["rows"]


def step(i, **kw):
    return json.dumps({**STEP, "step": i, "ts": f"2026-11-0{1 + i % 9}T10:00:{i % 60:02d}Z", "loss": 3.0 - i / 1000,
                       **kw})


ODD_LINES = [
    step(0),
    "",  # blank
    "   ",
    step(1, loss=float("nan")).replace("NaN", "NaN"),
    step(2).replace('"loss": 2.998', '"loss": Infinity'),
    step(3).replace('"loss": 2.997', '"loss": -Infinity'),
    step(4).replace('"loss": 2.996', '"loss": -NaN'),
    step(5).replace('"loss": 2.995', '"loss": Inf'),
    step(6).replace('"loss": 2.994', '"loss": 1' + "0" * 320),
    step(7, loss="abc"),
    step(8, loss=True),
    step(9, loss=None),
    step(10, step_time_ms="12.5"),
    json.dumps({**STEP, "step": 11.0, "ts": "2026-11-02T10:00:00Z"}),
    json.dumps({**STEP, "step": "12", "ts": "2026-11-02T10:00:00Z"}),
    json.dumps({**STEP, "step": 2 ** 63, "ts": "2026-11-02T10:00:00Z"}),
    step(13, ts="2026-11-02T10:00:00+02:00"),
    step(14, ts="2026-11-02 10:00:00"),
    step(15, ts="2026-11-02T10:00:00.1234567Z"),
    step(16, ts="2026-02-30T10:00:00Z"),
    step(17, ts="yesterday"),
    step(18, ts=1_785_000_000.25),
    step(19, ts=1_785_000_000),
    step(20, ts=1e12),
    step(21, ts=-1e12),
    step(22, ts=None),
    step(23, los=1.0),  # unknown field
    '{"table": "train_steps", "run_id": "r1", "model": "gpt2-tiny", "hardware": "cpu-x1", "step": 24, '
    '"ts": "2026-11-02T10:00:00Z", "loss": 1.0, "loss": 2.0}',  # repeated field
    step(25, model="a/b"),
    step(26, model="x" * 129),
    step(27, run_id="é" * 300),
    step(28, run_id=None),
    step(29, hardware=""),
    step(30, extra={"nested": [1, 2]}),
    '{"table": "train_steps", "run_id": "r1", "model": "gpt2-tiny", "hardware": "cpu-x1", "step": 31, '
    '"ts": "2026-11-02T10:00:00Z", "loss": ',  # invalid JSON
    "[1, 2, 3]",
    '"just a string"',
    json.dumps({"table": "nope", "x": 1}),
    json.dumps({"run_id": RUN, "step": 32}),  # no table
    json.dumps({"table": "runs", "run_id": RUN, "model": MODEL, "hardware": HW, "kind": "train",
                "started_at": "2026-11-01T09:00:00Z", "source": "jsonl", "n_params": 1234}),
    json.dumps({"table": "eval_results", "run_id": "e1", "train_run_id": RUN, "model": MODEL, "hardware": HW,
                "checkpoint_step": 100, "suite": "quality", "metric": "loss", "value": 2.5, "n": 64,
                "ts": "2026-11-02T11:00:00Z"}),
    json.dumps({"table": "latency_samples", "run_id": "e1", "model": MODEL, "hardware": HW, "latency_ms": 3.5,
                "ok": True, "ts": "2026-11-02T11:00:01Z", "batch_size": 1, "seq_len": 128}),
    json.dumps({"table": "latency_samples", "run_id": "e1", "model": MODEL, "hardware": HW, "latency_ms": 3.5,
                "ok": 1, "ts": "2026-11-02T11:00:01Z", "batch_size": 2 ** 31, "seq_len": 128}),
    step(33, loss=1.5, precision="bf16", epoch=0.5) + "\r",
    step(34) + "\r" + step(35),  # a lone \r breaks the line in two
    "\ufeff" + step(36),  # a BOM past line 1 is not stripped
    step(37).replace('"loss"', '"lo\\u0073s"'),  # an escaped key
    step(38, run_id="r\u00e9sum\u00e9"),
    step(0, loss=9.9),  # a repeated (run, step): the later one is kept
]


def test_odd_lines_give_the_row_paths_lake_and_quarantine(tmp_path, monkeypatch):
    text = "\ufeff" + "\n".join(ODD_LINES) + "\n"
    cols, rows = ingest_both(tmp_path, monkeypatch, text)
    if cols != rows:
        _debug(cols, rows)
    assert cols == rows
    lake, rc = cols
    assert rc == 0 and len(lake["train_steps"]) > 10 and len(lake["quarantine"]) > 15


def test_lines_over_the_bound_and_blocks_that_end_mid_line(tmp_path, monkeypatch):
    big = step(1, dataset="x" * (jsonl_columns.LINE_BYTES + 10))
    text = "\n".join([step(0), big, step(2), big + "\r", step(3), "x" * 9000, step(4)]) + "\r\n"
    cols, rows = ingest_both(tmp_path, monkeypatch, text, block=1000, batch=3)
    if cols != rows:
        _debug(cols, rows)
    assert cols == rows
    assert len(cols[0]["quarantine"]) == 3


def test_flags_fill_what_lines_leave_out(tmp_path, monkeypatch):
    lines = [json.dumps({"step": i, "ts": f"2026-11-01T10:{i % 60:02d}:00Z", "loss": 1.0 / (i + 1)}) for i in range(300)]
    lines[17] = json.dumps({"step": 17, "ts": "2026-11-01T10:17:00Z", "model": "other-model"})
    lines[40] = json.dumps({"step": 40, "ts": "2026-11-01T10:40:00Z", "run_id": None})
    cols, rows = ingest_both(tmp_path, monkeypatch, "\n".join(lines), "--table", "train_steps", "--run-id", "r9",
                             "--model", "gpt2-tiny", "--hardware", "cpu-x1")
    if cols != rows:
        _debug(cols, rows)
    assert cols == rows
    assert len(cols[0]["train_steps"]) >= 299


def test_flags_fill_lines_read_from_their_head(tmp_path, monkeypatch):
    """Lines that lead with the same run and model (a head the columns parse past) and leave the
    hardware and precision to the flags; some name another model or null the precision the flag fills."""
    lines = [json.dumps({"run_id": "r9", "model": "gpt2-tiny", "step": i, "ts": f"2026-11-01T10:{i % 60:02d}:00Z",
                         "loss": 1.0 / (i + 1), **({"precision": None} if i % 7 == 0 else {})}) for i in range(300)]
    lines[17] = lines[17].replace('"gpt2-tiny"', '"gpt2-tiny2"')  # another model: a line of the same shape
    lines[18] = lines[18].replace('"gpt2-tiny"', '"a/b"')
    lines[40] = lines[40].replace('"r9"', '"r19"')
    cols, rows = ingest_both(tmp_path, monkeypatch, "\n".join(lines), "--table", "train_steps",
                             "--hardware", "cpu-x1", "--precision", "bf16")
    if cols != rows:
        _debug(cols, rows)
    assert cols == rows
    lake, _ = cols
    assert len(lake["train_steps"]) == 299 and len(lake["quarantine"]) == 1
    assert ingest_both.row_path_lines < 10


MUTATIONS = [
    lambda d, r: {**d, "loss": r.choice(["x", None, True, [1], {"a": 1}, 1e308 * 10 if False else "NaN"])},
    lambda d, r: {**d, "step": r.choice([-1, 1.5, "7", None, 2 ** 64])},
    lambda d, r: {**d, "ts": r.choice(["2026-13-01T00:00:00Z", "2026-11-01", "2026-11-01T25:00:00Z", 0, 1.5e9,
                                        "2026-11-01T10:00:00.5+05:30", "2026-11-01T10:00:00-00:00", None])},
    lambda d, r: {**d, r.choice(["lr", "grad_norm", "gpu_util"]): r.choice([0.001, -0.0, 1e-300, 5, "1"])},
    lambda d, r: {**d, "model": r.choice(["m" * 128, "m" * 129, "-lead", "ok.model_1+x", "sp ace", None])},
    lambda d, r: {**d, "unknown": 1},
    lambda d, r: {k: v for k, v in d.items() if k != r.choice(["run_id", "ts", "step", "table", "hardware"])},
    lambda d, r: {**d, "table": r.choice(["runs", "step_metrics", "quarantine", 7, None])},
]


def fuzz_text(seed: int, n: int = 1500, bad: float = 0.2) -> str:
    r = random.Random(seed)
    out = []
    for i in range(n):
        d = {**STEP, "run_id": r.choice(["r1", "r2", "r3"]), "step": r.randrange(0, n // 2),
             "ts": f"2026-11-{r.randint(1, 28):02d}T{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:00Z",
             "loss": round(r.uniform(0, 5), r.randint(0, 17)), "lr": 3e-4}
        p = r.random()
        if p < bad:
            d = r.choice(MUTATIONS)(d, r)
        line = json.dumps(d, allow_nan=True)
        if p > 1 - bad / 4:
            line = line[: r.randrange(1, len(line))]  # cut short
        elif p > 1 - bad / 2:
            line = line + r.choice(["\r", " ", "\t", "x"])
        out.append(line)
    return "\n".join(out) + r.choice(["", "\n", "\r\n"])


@pytest.mark.parametrize("seed", range(6))
def test_random_mixes_give_the_row_paths_lake_and_quarantine(tmp_path, monkeypatch, seed):
    cols, rows = ingest_both(tmp_path, monkeypatch, fuzz_text(seed), block=2048 + 997 * seed, batch=5 + 7 * seed)
    if cols != rows:
        _debug(cols, rows)
    assert cols == rows
    assert cols[0]["train_steps"] and cols[0]["quarantine"]
    assert ingest_both.row_path_lines < 1500 * 0.4  # ~20% are broken, cut or of a shape of their own


def test_in_big_blocks_only_the_odd_lines_take_the_row_path(tmp_path, monkeypatch):
    cols, rows = ingest_both(tmp_path, monkeypatch, fuzz_text(99, 4000, bad=0.01), block=1 << 16, batch=1024)
    assert cols == rows
    # ~1.5% of the lines are broken or cut; the others' shapes are few and the columns take them
    assert ingest_both.row_path_lines < 4000 * 0.04


# Lines of several tables and value kinds (nulls, epoch and ISO times, NaN and Infinity, booleans,
# integers written 64.0), for the digit fuzz below.
KINDS = [
    lambda i, r: {**STEP, "step": i, "ts": f"2026-11-0{1 + i % 9}T10:{i % 60:02d}:00.5Z", "loss": r.uniform(0, 5),
                  "lr": r.choice([3e-4, 1e-5, 2]), "grad_norm": r.choice([1.5, None, float("nan")])},
    lambda i, r: {**STEP, "step": i, "ts": 1_785_000_000 + i, "loss": r.choice([float("inf"), -float("inf"), 1.0]),
                  "tokens_per_s": None, "epoch": i / 7},
    lambda i, r: {"table": "latency_samples", "run_id": "e1", "model": MODEL, "hardware": HW, "ts": 1_785_000_000.25 + i,
                  "latency_ms": r.uniform(1, 9), "ok": r.choice([True, False]), "batch_size": 8, "seq_len": 128},
    lambda i, r: {"table": "eval_results", "run_id": "e1", "train_run_id": RUN, "model": MODEL, "hardware": HW,
                  "checkpoint_step": i, "suite": "quality", "metric": "loss", "value": r.choice([2.5, float("nan")]),
                  "n": 64.0, "ts": "2026-11-02 11:00:00"},
    lambda i, r: {"table": "runs", "run_id": f"r{i % 3}", "model": MODEL, "hardware": HW, "kind": "train",
                  "started_at": "2026-11-01T09:00:00+01:00", "gpu_count": 1, "n_params": 10 ** 9, "final_loss": None},
]
SIGNS = "0123456789+-"


def digit_fuzz_text(seed: int, n: int = 1200, bad: float = 0.4) -> str:
    """Lines of a few shapes, a share of them with digits and signs put in, taken out or changed
    anywhere (keys, table names, strings, numbers, NaN): a line's shape stays that of good lines,
    so only the column checks stand between it and the lake."""
    r = random.Random(seed)
    out = []
    for i in range(n):
        line = json.dumps(KINDS[i % len(KINDS)](i, r), allow_nan=True)
        if r.random() < bad:
            chars = list(line)
            for _ in range(r.randint(1, 3)):
                at = r.randrange(1, len(chars) - 1)
                if chars[at] in SIGNS and r.random() < 0.5:
                    del chars[at]
                else:
                    chars.insert(at, r.choice(SIGNS))
            line = "".join(chars)
        out.append(line)
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("seed", range(6))
def test_lines_that_differ_from_good_ones_in_digits_and_signs(tmp_path, monkeypatch, seed):
    cols, rows = ingest_both(tmp_path, monkeypatch, digit_fuzz_text(seed), block=8192 + 1999 * seed, batch=7 + 5 * seed)
    if cols != rows:
        _debug(cols, rows)
    assert cols == rows
    lake, _ = cols
    assert lake["train_steps"] and lake["latency_samples"] and lake["eval_results"] and lake["quarantine"]


def _debug(cols, rows):
    """Print the rows one path stored and the other did not (pytest shows it with the failure)."""
    for name in sorted(cols[0]):
        a, b = set(map(repr, cols[0][name])), set(map(repr, rows[0][name]))
        for r in sorted(a - b):
            print(f"{name}: column path only: {r[:400]}")
        for r in sorted(b - a):
            print(f"{name}: row path only: {r[:400]}")
