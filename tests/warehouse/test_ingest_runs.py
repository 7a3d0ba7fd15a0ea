"""``mhw ingest`` keeps one row per key whatever files a run arrives in: checkpoint copies, re-exports,
any order, re-ingests and edits (warehouse/ingest.py, "How a run is rebuilt"). Real files from
``../shared/data/real`` where they show the case; the lake is read back through DuckDB."""
import datetime as dt
import json
import os
import shutil
from pathlib import Path

import pytest

from pipelines.maintenance import compact
from warehouse import cli
from warehouse.query import connect
from warehouse.schemas import TABLES, TS
from warehouse.writer import Lake

REPO = Path(__file__).resolve().parents[2]
REAL = REPO.parent / "shared" / "data" / "real"
HF = REAL / "hf_trainer_state"
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real public logs not present at {REAL}")
UTC = dt.timezone.utc
T0 = dt.datetime(2024, 5, 1, 12, tzinfo=UTC)
SUBRO = "subro608--Deep_learning_Bert_project2--checkpoint-{}.json"
SYGOAT = "syGOAT--Mistral-v0.2-Translator-bf16--{}.json"


def ingest(*argv) -> int:
    return cli.main(["ingest", *map(str, argv)])


def q(lake, sql):
    return connect(lake_root=lake, serving_path="").execute(sql).fetchall()


def snapshot(lake) -> dict[str, list[tuple]]:
    """Every lake table's rows, sorted; timestamps as epoch microseconds (quarantine's ingested_at,
    the time of the ingest itself, left out; so is audit_log, which records each ingest call itself)."""
    out = {}
    for name, table in TABLES.items():
        if name == "audit_log":
            continue
        cols = [f"epoch_us({f.name})" if f.type == TS else f.name for f in table.schema if f.name != "ingested_at"]
        out[name] = q(lake, f"select {', '.join(cols)} from {name} order by all")
    return out


def copy(tmp_path, name: str, mtime: dt.datetime | None = None, folder: str = "") -> Path:
    dest = tmp_path / "in" / folder / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(HF / name, dest)
    if mtime:
        os.utime(dest, (mtime.timestamp(), mtime.timestamp()))
    return dest


@needs_real
def test_checkpoint_copies_under_one_run_id_are_one_row_per_step(lake_root, capsys):
    files = [HF / SUBRO.format(s) for s in (500, 1000, 1500, 2000, 2400)]
    assert ingest(*files, "--model", "bert", "--hardware", "t4", "--run-id", "subro", "--lake", lake_root) == 0
    assert q(lake_root, "select count(*), count(distinct step), min(step), max(step) from train_steps") == [
        (24, 24, 100, 2400)]  # 5 + 10 + 15 + 20 + 24 rows read, one per step kept
    assert q(lake_root, "select count(*), count(distinct (checkpoint_step, suite, metric)) from eval_results") == [
        (120, 120)]
    assert q(lake_root, "select run_id, status, steps from runs") == [("subro", "completed", 2400)]
    out = capsys.readouterr().out
    assert f"run subro (bert): 5 files, one row per key: runs 1, train_steps 24, eval_results 120; " \
           f"most advanced file: {HF / SUBRO.format(2400)}" in out


@needs_real
def test_any_order_of_files_gives_the_same_lake_and_reingesting_changes_nothing(tmp_path):
    """Each checkpoint copy has its own mtime; with --started-at every copy derives its own clock
    (span = its mtime - start). The rows land on the most advanced copy's clock whatever the order."""
    files = {s: copy(tmp_path, SUBRO.format(s), T0 + dt.timedelta(seconds=s)) for s in (500, 1000, 2400)}
    flags = ["--model", "bert", "--hardware", "t4", "--started-at", T0.isoformat()]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for s in (500, 2400, 1000):
        assert ingest(files[s], *flags, "--lake", a) == 0
    assert ingest(files[1000], files[2400], *flags, "--lake", b) == 0
    assert ingest(files[500], *flags, "--lake", b) == 0
    first = snapshot(a)
    assert first == snapshot(b)
    assert ingest(files[2400], files[500], *flags, "--lake", b) == 0  # again: nothing changes
    assert snapshot(b) == first
    # one clock: the 2400 copy's (start T0, 2400 s for 2400 steps), also for steps read from the 500 copy
    ts = q(a, "select step, epoch_us(ts) from train_steps order by step")
    assert len(ts) == 24 and all(us == int((T0 + dt.timedelta(seconds=step)).timestamp() * 1e6) for step, us in ts)
    assert q(a, "select count(*) from runs") == [(1,)]


@needs_real
def test_checkpoint_copies_without_a_run_id_are_one_run_on_the_final_files_clock(lake_root, capsys):
    files = [HF / SYGOAT.format(n) for n in ("checkpoint-500", "checkpoint-4000", "checkpoint-8500", "final")]
    series = [HF / SUBRO.format(s) for s in (500, 2400)] + \
        [HF / f"wtwong316--alpaca-bitcoin-tweets-sentiment--checkpoint-{s}.json" for s in (200, 300)]
    assert ingest(*files, *series, "--model", "m", "--hardware", "h", "--lake", lake_root) == 0
    runs = q(lake_root, "select run_id, status, steps from runs order by steps")
    assert [r[1:] for r in runs] == [("completed", 300), ("completed", 2400), ("completed", 8660)]
    assert len({r[0] for r in runs}) == 3  # three runs, none merged with another
    sy = runs[-1][0]
    assert q(lake_root, f"select count(*), count(distinct step) from train_steps where run_id = '{sy}'") == [(866, 866)]
    # final.json knows the run time: every step, from any copy, is on its clock, in step order
    final = json.loads(files[-1].read_text())["log_history"][-1]
    end = dt.datetime.fromtimestamp(os.path.getmtime(files[-1]), tz=UTC)
    start = end - dt.timedelta(seconds=final["train_runtime"])
    assert q(lake_root, f"select epoch_us(started_at), epoch_us(ended_at) from runs where run_id = '{sy}'") == [
        (int(start.timestamp() * 1e6), int(end.timestamp() * 1e6))]
    ts = [us for _, us in q(lake_root, f"select step, epoch_us(ts) from train_steps where run_id = '{sy}' order by step")]
    assert ts == sorted(ts) and len(set(ts)) == 866


@needs_real
def test_an_edited_file_replaces_exactly_its_own_contribution(tmp_path, lake_root):
    early, late = copy(tmp_path, SUBRO.format(1000)), copy(tmp_path, SUBRO.format(2400))
    flags = ["--model", "bert", "--hardware", "t4", "--run-id", "r", "--lake", lake_root]
    assert ingest(early, late, *flags) == 0
    doc = json.loads(late.read_text())
    doc["log_history"] = [e for e in doc["log_history"] if e.get("step") != 2300 or "eval_loss" in e]
    next(e for e in doc["log_history"] if e.get("step") == 2400 and "loss" in e)["loss"] = 9.99
    late.write_text(json.dumps(doc))
    assert ingest(late, *flags) == 0
    steps = dict(q(lake_root, "select step, loss from train_steps"))
    assert len(steps) == 23 and 2300 not in steps and steps[2400] == 9.99
    # the same file under another run: run r keeps only the early copy's rows
    assert ingest(late, *flags[:-4], "--run-id", "r2", "--lake", lake_root) == 0
    assert q(lake_root, "select run_id, count(*), max(step) from train_steps group by all order by 1") == [
        ("r", 10, 1000), ("r2", 23, 2400)]
    assert q(lake_root, "select run_id, status, steps from runs order by 1") == [
        ("r", "running", 1000), ("r2", "completed", 2400)]


def test_a_run_exported_twice_is_stored_once(tmp_path, lake_root, capsys):
    lines = [{"table": "runs", "run_id": "j1", "model": "m", "hardware": "h", "started_at": "2024-05-01T12:00:00Z",
              "status": "completed", "steps": 3}]
    lines += [{"table": "train_steps", "run_id": "j1", "model": "m", "hardware": "h", "step": s,
               "ts": f"2024-05-01T12:00:0{s}Z", "loss": 3.0 - s} for s in (1, 2, 3)]
    lines += [{"table": "step_metrics", "run_id": "j1", "model": "m", "hardware": "h", "step": 1,
               "ts": "2024-05-01T12:00:01Z", "metric": "tokens_seen", "value": 512}]
    text = "".join(json.dumps(l) + "\n" for l in lines)
    (tmp_path / "a.jsonl").write_text(text)
    (tmp_path / "b.jsonl").write_text(text.replace('"loss": 0.0', '"loss": 0.5'))  # a later export, step 3 fixed
    assert ingest(tmp_path / "a.jsonl", tmp_path / "b.jsonl", "--lake", lake_root) == 0
    assert q(lake_root, "select step, loss from train_steps order by step") == [(1, 2.0), (2, 1.0), (3, 0.0)]
    assert (q(lake_root, "select count(*) from runs"), q(lake_root, "select count(*) from step_metrics")) == ([(1,)], [(1,)])
    # a key twice in one file: the later line wins, and the user is told
    (tmp_path / "c.jsonl").write_text(text + json.dumps({**lines[1], "loss": 7.0}) + "\n")
    assert ingest(tmp_path / "c.jsonl", "--lake", lake_root) == 0
    assert "1 train_steps rows repeat an earlier (run_id, step) of this source; the later one is kept" in \
        capsys.readouterr().out


def test_an_mlperf_log_copied_twice_is_one_run(tmp_path, lake_root):
    log = REPO / "tests" / "fixtures" / "mlperf" / "bert-8xh100.mlperf.log"
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        shutil.copy(log, tmp_path / d / "result_0.txt")
    assert ingest(tmp_path / "x" / "result_0.txt", tmp_path / "y" / "result_0.txt", "--lake", lake_root) == 0
    assert q(lake_root, "select count(*) from runs") == [(1,)]
    assert q(lake_root, "select count(*), count(distinct step) from train_steps") == [(4, 4)]
    assert q(lake_root, "select metric, count(*) from eval_results group by all") == [("mlm_accuracy", 2)]
    # the same bytes are one source: its bad lines are quarantined once, whichever copy is ingested again
    assert q(lake_root, "select count(*), count(distinct source) from quarantine") == [(2, 1)]
    assert ingest(tmp_path / "y" / "result_0.txt", "--lake", lake_root) == 0
    assert q(lake_root, "select count(*), count(distinct source) from quarantine") == [(2, 1)]


@needs_real
def test_a_tensorboard_log_copied_twice_is_one_run(tmp_path, lake_root):
    (f,) = (REAL / "tensorboard").glob("wtwong316--*--runs-Apr26_11-44-26-events.*")
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        shutil.copy(f, tmp_path / d / f.name)
    assert ingest(tmp_path / "x", tmp_path / "y", "--model", "m", "--hardware", "h", "--lake", lake_root) == 0
    assert q(lake_root, "select count(*), count(distinct step), round(min(loss), 3) from train_steps") == [(30, 30, 0.543)]
    assert q(lake_root, "select count(*) from runs") == [(1,)]
    assert q(lake_root, "select round(min(value), 4) from eval_results where metric = 'loss'") == [(0.6275,)]


@needs_real
def test_extra_numbers_are_queryable_in_step_metrics(lake_root, capsys):
    assert ingest(HF / "LEEDONGQUE--serverlog--checkpoint-2000.json", "--model", "m", "--hardware", "h",
                  "--lake", lake_root) == 0
    capsys.readouterr()
    assert cli.main(["query", "select s.metric, s.value, t.loss from step_metrics s join train_steps t "
                              "using (run_id, step) where s.step = 50 order by s.metric", "--format", "json"]) == 0
    got = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert [(g["metric"], g["value"]) for g in got] == [
        ("entropy", 1.1514280203729867), ("mean_token_accuracy", 0.789223695397377), ("num_tokens", 24730.0)]
    assert {g["loss"] for g in got} == {1.0507236480712892}


@needs_real
def test_a_checkpoint_ingested_after_compaction_does_not_duplicate_the_steps_before_it(tmp_path, lake_root, capsys):
    end = T0 + dt.timedelta(hours=2)
    subro = {s: copy(tmp_path, SUBRO.format(s), end) for s in (500, 1000, 2400)}
    other = [copy(tmp_path, f"wtwong316--alpaca-bitcoin-tweets-sentiment--checkpoint-{s}.json", end) for s in (200, 300)]
    flags = ["--model", "bert", "--hardware", "t4", "--started-at", T0.isoformat(), "--lake", lake_root]
    assert ingest(subro[500], subro[1000], *other, *flags) == 0
    res = compact(Lake(lake_root), min_files=1, min_age_s=0)
    assert res.compacted_partitions >= 3  # the runs' own files are now inside compacted-*.parquet files
    assert not list(Path(lake_root, "train_steps").rglob("ingest-run-*.parquet"))
    capsys.readouterr()
    assert ingest(subro[2400], *flags) == 0
    assert "10 train_steps rows of the run were also in 1 compacted file(s): taken out there" in capsys.readouterr().out
    ids = dict(q(lake_root, "select steps, run_id from runs"))
    assert q(lake_root, "select run_id, count(*), count(distinct step) from train_steps group by all order by 2") == [
        (ids[2400], 24, 24), (ids[300], 30, 30)]  # the other run, compacted in the same files, is untouched
    assert q(lake_root, f"select count(*) from eval_results where run_id = '{ids[2400]}'") == [(120,)]


@needs_real
@pytest.mark.slow  # every real public log, ingested
def test_every_real_log_imports(lake_root, capsys):
    paths = [p for d in ("hf_trainer_state", "mlperf", "lm_eval", "tensorboard") for p in sorted((REAL / d).iterdir())]
    assert ingest(*paths, REAL / "mlflow", "--model", "m", "--hardware", "h", "--lake", lake_root) == 0
    assert q(lake_root, "select count(*) from quarantine") == [(0,)]
    by_source = dict(q(lake_root, "select source, count(*) from runs group by all"))
    assert by_source == {"hf-trainer": 19, "mlperf": 7, "lm-eval": 6, "tensorboard": 3, "mlflow": 2}
    assert q(lake_root, "select count(*) from step_metrics")[0][0] > 28000  # HangerYang's 14 extra keys per step
    capsys.readouterr()
    assert ingest(REAL / "prometheus" / "Ahasannn--hardware-aware-router--vllm_metrics.txt", "--lake", lake_root) == 2
    assert "a Prometheus /metrics scrape" in capsys.readouterr().err
