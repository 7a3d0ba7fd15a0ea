"""Bounds on every field, row and line (issue 13): an oversized value is quarantined with a reason
naming field, bound and length; a 200 MB line costs bounded memory at ingest and in the build after
it; long names keep a visible hash instead of colliding; a name with no letters is an error."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from warehouse import cli
from warehouse.ingest import SHOWN_PROBLEMS, validate
from warehouse.query import connect
from warehouse.schemas import (LINE_BYTES, MAX_FIELDS, NAME_CHARS, PATH_CHARS, RAW_HEAD, RUN_ID_CHARS, SLUG_CHARS,
                               TABLES, TEXT_CHARS)
from warehouse.writer import SLUG, PartitionError, check_slug, slugify

REPO = Path(__file__).resolve().parents[2]
MLPERF_LOG = REPO / "tests" / "fixtures" / "mlperf" / "bert-8xh100.mlperf.log"
STEP = {"run_id": "r1", "model": "gpt2-tiny", "hardware": "cpu", "step": 1, "ts": "2024-05-01T12:00:00Z"}
RUN = {"run_id": "r1", "model": "gpt2-tiny", "hardware": "cpu", "started_at": "2024-05-01T12:00:00Z"}


def ingest(*argv) -> int:
    return cli.main(["ingest", *map(str, argv)])


def rows(lake, sql):
    return connect(lake_root=lake, serving_path="").execute(sql).fetchall()


# --- field and row bounds in validate() -----------------------------------------------------------

@pytest.mark.parametrize("table, column, limit", [
    ("train_steps", "run_id", NAME_CHARS), ("train_steps", "precision", NAME_CHARS),
    ("step_metrics", "metric", NAME_CHARS), ("runs", "dataset", PATH_CHARS), ("runs", "config_json", TEXT_CHARS),
    ("eval_results", "checkpoint", PATH_CHARS), ("train_steps", "model", SLUG_CHARS),
    ("system_samples", "hardware", SLUG_CHARS),
])
def test_a_string_over_its_bound_is_too_long_and_one_at_it_is_kept(table, column, limit):
    base = {"train_steps": STEP, "runs": RUN, "step_metrics": {**STEP, "metric": "m"},
            "eval_results": {**STEP, "suite": "s", "metric": "m"},
            "system_samples": {**STEP, "device": "cpu"}}[table]
    base = {k: v for k, v in base.items() if k in TABLES[table].schema.names}
    row, problems = validate(TABLES[table], {**base, column: "a" * limit})
    assert problems == [] and len(row[column]) == limit
    row, problems = validate(TABLES[table], {**base, column: "a" * (limit + 1)})
    assert row is None and len(problems) == 1
    p = problems[0]
    assert (p.field, p.kind) == (column, "too long")
    assert p.detail.startswith(f"{limit + 1:,} characters; the limit is {limit:,}")
    assert len(p.reason) < 200  # the value is named, never repeated


def test_too_many_fields_is_one_problem_not_one_per_field():
    values = {**STEP, **{f"x{i}": 1 for i in range(MAX_FIELDS)}}
    row, problems = validate(TABLES["train_steps"], values)
    assert row is None
    assert [(p.field, p.kind) for p in problems] == [(None, "too many fields")]
    width = len(TABLES["train_steps"].schema)
    assert problems[0].detail == f"{len(values):,} fields; the limit is {MAX_FIELDS} (train_steps has {width} columns)"


def test_problems_and_their_text_stay_bounded():
    huge_name = "k" * LINE_BYTES
    row, problems = validate(TABLES["train_steps"], {**STEP, huge_name: 1, **{f"bad{i}": 1 for i in range(100)}})
    assert row is None and len(problems) == SHOWN_PROBLEMS
    assert problems[0].kind == "unknown field" and len(problems[0].field) == NAME_CHARS
    assert len(problems[0].detail) < 200
    assert (problems[-1].kind, problems[-1].detail) == ("more problems", f"{101 - SHOWN_PROBLEMS + 1} more not listed")


def test_jsonl_too_long_fields_are_quarantined_with_field_bound_and_length(tmp_path, lake_root, capsys):
    path = tmp_path / "steps.jsonl"
    lines = [{**STEP, "step": i} for i in range(5)]
    lines.insert(2, {**STEP, "step": 99, "run_id": "r" * 300})
    lines.insert(4, {**STEP, "step": 98, "model": "m" * 129})
    path.write_text("".join(json.dumps({"table": "train_steps", **ln}) + "\n" for ln in lines))
    assert ingest(path, "--lake", lake_root) == 0
    out = capsys.readouterr().out
    assert f"{path}:3: field 'run_id': too long: 300 characters; the limit is 256" in out
    assert f"{path}:5: field 'model': too long: 129 characters; the limit is 128" in out
    assert rows(lake_root, "select count(*), count(distinct run_id) from train_steps") == [(5, 1)]
    q = rows(lake_root, "select line, field, split_part(reason, ':', 1), length(raw) from quarantine order by line")
    assert [r[:3] for r in q] == [(3, "run_id", "too long"), (5, "model", "too long")]
    assert q[0][3] == len(json.dumps({"table": "train_steps", **lines[2]}))  # a line within the bound: kept whole


# --- a 200 MB line: quarantined unparsed, ingest and build stay small -----------------------------

# Runs the command from a fresh interpreter and reports its peak RSS. Not measured from pytest
# itself: a child started by vfork inherits its parent's high-water mark at exec (Linux keeps
# ru_maxrss across execve), so pytest's own peak would be the floor of every figure.
PEAK_RSS = """
import resource, subprocess, sys
rc = subprocess.run(sys.argv[2:], stdout=open(sys.argv[1], "wb"), stderr=subprocess.STDOUT).returncode
print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)  # Linux: kilobytes
"""


def _peak_rss(cmd: list[str], env: dict, out: Path) -> tuple[int, int]:
    """(exit status, peak resident memory in bytes) of one command, as the kernel counts it."""
    got = subprocess.run([sys.executable, "-c", PEAK_RSS, str(out), *cmd], cwd=REPO, env=env,
                         capture_output=True, text=True, check=True)
    rc, rss = got.stdout.split()
    return int(rc), int(rss)


@pytest.mark.slow  # a 200 MB row
def test_a_200_mb_run_id_is_quarantined_and_ingest_and_build_stay_small(tmp_path):
    size = 200 * 1024 * 1024
    path = tmp_path / "steps.jsonl"
    with open(path, "w") as f:  # written streamed: the test never holds the line either
        for i in range(100):
            f.write(json.dumps({"table": "train_steps", **STEP, "step": i}) + "\n")
        head = '{"table": "train_steps", "model": "gpt2-tiny", "hardware": "cpu", "step": 500, "run_id": "'
        f.write(head)
        block = "x" * (1 << 20)
        for _ in range(size // len(block)):
            f.write(block)
        f.write('", "ts": "2024-05-01T12:00:00Z"}\n')
        f.write(json.dumps({"table": "runs", **RUN}) + "\n")
    bad_line = len(head) + size + len('", "ts": "2024-05-01T12:00:00Z"}')
    lake, serving = tmp_path / "lake", tmp_path / "serving.duckdb"
    env = {**os.environ, "MHW_LAKE": str(lake), "MHW_SERVING": str(serving)}
    env.pop("MHW_CONFIG", None)
    mhw = [sys.executable, "-m", "warehouse.cli"]
    try:
        rc, ingest_rss = _peak_rss([*mhw, "ingest", str(path)], env, tmp_path / "ingest.out")
        out = (tmp_path / "ingest.out").read_text()
        assert rc == 0, out
    finally:
        path.unlink()
    assert f"{path}:101: line too long: {bad_line:,} bytes, over the limit of {LINE_BYTES:,} (1 MiB); not parsed" in out
    assert "[jsonl]: 101 rows (runs 1, train_steps 100), 1 rejected" in out
    assert rows(str(lake), "select count(*), count(distinct step), max(length(run_id)) from train_steps") == [(100, 100, 2)]
    assert rows(str(lake), "select run_id from runs") == [("r1",)]
    (q,) = rows(str(lake), "select line, field, reason, raw from quarantine")
    assert q[:3] == (101, None, f"line too long: {bad_line:,} bytes, over the limit of {LINE_BYTES:,} (1 MiB); not parsed")
    assert q[3].startswith(head + "x" * (RAW_HEAD - len(head))) and f"the row is {bad_line:,} bytes" in q[3]
    assert len(q[3]) < RAW_HEAD + 100
    # Memory: the line is never held whole (before: ~2 GB to ingest it, ~18 GB to build after it).
    assert ingest_rss < bad_line, f"ingest peaked at {ingest_rss / 2**20:.0f} MiB"
    rc, build_rss = _peak_rss([*mhw, "build"], env, tmp_path / "build.out")
    assert rc == 0, (tmp_path / "build.out").read_text()[-3000:]
    assert build_rss < 2**30, f"build peaked at {build_rss / 2**20:.0f} MiB"
    print(f"peak RSS: ingest {ingest_rss / 2**20:.0f} MiB, build {build_rss / 2**20:.0f} MiB")
    assert connect(lake_root=str(lake), serving_path=str(serving)).execute(
        "select count(*) from serving.train_health_daily").fetchone()[0] > 0


def test_an_mllog_line_over_the_bound_is_quarantined_and_the_log_still_ingests(tmp_path, capsys):
    ref, big = tmp_path / "ref", tmp_path / "big"
    assert ingest(MLPERF_LOG, "--lake", ref) == 0
    log = tmp_path / "bert.log"
    text = MLPERF_LOG.read_text().splitlines(keepends=True)
    giant = '0: :::MLLOG {"namespace": "", "time_ms": 1, "event_type": "POINT_IN_TIME", "key": "x", "value": "'
    log.write_text("".join(text[:5]) + giant + "v" * (2 * LINE_BYTES) + '"}\n' + "".join(text[5:]))
    assert ingest(log, "--lake", big) == 0
    tables = ("runs", "train_steps", "step_metrics", "eval_results")
    for t in tables:
        assert rows(str(big), f"select count(*) from {t}") == rows(str(ref), f"select count(*) from {t}"), t
    q = rows(str(big), "select line, split_part(reason, ':', 1) from quarantine order by line")
    ref_q = rows(str(ref), "select line, split_part(reason, ':', 1) from quarantine order by line")
    assert q == sorted([(6, "line too long")] + [(n + 1, k) for n, k in ref_q])  # later lines shift by one


# --- names: no truncation, no made-up 'unknown' ---------------------------------------------------

def test_long_names_keep_a_visible_hash_and_stay_distinct():
    a, b = "org/" + "a" * 196, "org/" + "a" * 195 + "b"  # 200 characters, the same first 199
    sa, sb = slugify(a), slugify(b)
    assert sa != sb and len(sa) == len(sb) == SLUG_CHARS
    assert sa[:111] == sb[:111] == "org--" + "a" * 106 and sa[111] == "-"
    assert SLUG.match(sa) and slugify(sa) == sa  # a slug, and slugify of it is itself
    assert slugify("distilbert/lora imdb") == "distilbert--lora-imdb"  # short names as before
    assert slugify("a" * SLUG_CHARS) == "a" * SLUG_CHARS


def test_train_run_ids_of_long_config_names_stay_distinct_and_fit_telemetry_keys():
    from pipelines.jobs import train_run_id

    a = train_run_id("configs/" + "c" * 150 + "-a.yaml", "bf16", "manual__1")
    b = train_run_id("configs/" + "c" * 150 + "-b.yaml", "bf16", "manual__1")
    c = train_run_id("configs/" + "c" * 150 + "-a.yaml", "bf16", "manual__2")
    assert len({a, b, c}) == 3 and {len(a), len(b), len(c)} == {RUN_ID_CHARS}  # cut at 128, all three were one
    assert check_slug("key", f"{a}-sys-20240501T120000-4194304-b000000001")  # Telemetry's longest key from it
    assert train_run_id("configs/gpt2.yaml", "bf16", "manual__1").startswith("gpt2-bf16-")


@pytest.mark.parametrize("name", ["..", "/", "", "---", " . "])
def test_a_name_with_no_letters_or_digits_is_an_error(name):
    with pytest.raises(PartitionError, match="has no letters or digits to make a name of"):
        slugify(name)


def test_check_slug_says_too_long_and_never_repeats_the_value():
    with pytest.raises(PartitionError) as e:
        check_slug("model", "m" * 1_000_000)
    assert "too long: 1,000,000 characters, at most 128" in str(e.value) and len(str(e.value)) < 200


def test_two_200_char_model_flags_are_two_models(tmp_path, lake_root, capsys):
    path = tmp_path / "steps.jsonl"
    path.write_text(json.dumps({"table": "train_steps", "run_id": "r1", "step": 1, "ts": "2024-05-01T12:00:00Z"}) + "\n")
    path2 = tmp_path / "steps2.jsonl"
    path2.write_text(json.dumps({"table": "train_steps", "run_id": "r2", "step": 1, "ts": "2024-05-01T12:00:00Z"}) + "\n")
    a, b = "m" * 199 + "a", "m" * 199 + "b"
    assert ingest(path, "--model", a, "--hardware", "cpu", "--lake", lake_root) == 0
    assert ingest(path2, "--model", b, "--hardware", "cpu", "--lake", lake_root) == 0
    assert f"--model {a!r} is stored as {slugify(a)!r}" in capsys.readouterr().out
    got = rows(lake_root, "select run_id, model from train_steps order by run_id")
    assert got == [("r1", slugify(a)), ("r2", slugify(b))] and slugify(a) != slugify(b)


def test_model_flag_with_no_letters_is_an_error(tmp_path, lake_root):
    path = tmp_path / "steps.jsonl"
    path.write_text(json.dumps({"table": "train_steps", **STEP}) + "\n")
    with pytest.raises(SystemExit) as e:
        ingest(path, "--model", "..", "--lake", lake_root)
    assert str(e.value) == "mhw ingest: --model '..' has no letters or digits to make a name of"
    assert not Path(lake_root, "train_steps").exists()


def test_a_file_naming_a_model_with_no_letters_is_a_clear_error(tmp_path, lake_root, capsys):
    log = tmp_path / "bert.log"
    log.write_text(MLPERF_LOG.read_text().replace('"key": "submission_benchmark", "value": "bert"',
                                                  '"key": "submission_benchmark", "value": ".."'))
    assert ingest(log, "--lake", lake_root) == 2
    err = capsys.readouterr().err
    assert f"{log}: the file's model '..' has no letters or digits to make a name of; pass --model" in err
    assert ingest(log, "--model", "bert", "--lake", lake_root) == 0  # the flag it names works
