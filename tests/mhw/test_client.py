"""The telemetry client (mhw/client.py): a plain loop's runs, steps, extra metrics, evaluations and
system samples land exactly; runs end with the right status however they end; other ranks write
nothing; ``import mhw`` imports nothing heavy; and a training repo with its own ``model.py`` and
``pipelines/`` imports the client and both integrations, and still gets its own modules."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mhw
from warehouse.query import connect

REPO = Path(__file__).resolve().parents[2]


def rows(lake_root, sql):
    return connect(lake_root=lake_root, serving_path="").execute(sql).fetchall()


def test_a_plain_loop_lands_exactly(lake_root):
    with mhw.start_run("my-gpt", run_id="plain-1", config={"lr": 3e-4, "layers": 2}, dataset="shakespeare",
                       precision="bf16", system_interval_s=0.05) as run:
        for step in range(30):
            run.log(step, loss=3.0 - step / 10, lr=3e-4, tokens_per_s=1000.0 + step, accuracy=step / 30,
                    nan_metric=math.nan)
        run.log_eval(29, {"loss": 0.5, "perplexity": math.exp(0.5)}, n=64)
    got = rows(lake_root, "select step, loss, lr, tokens_per_s, precision, model, cpu_util is not null from train_steps "
                          "order by step")
    assert got == [(s, 3.0 - s / 10, 3e-4, 1000.0 + s, "bf16", "my-gpt", True) for s in range(30)]
    extra = rows(lake_root, "select step, metric, value from step_metrics order by metric, step")
    assert [(s, m, v) for s, m, v in extra if m == "accuracy"] == [(s, "accuracy", s / 30) for s in range(30)]
    assert [s for s, m, v in extra if m == "nan_metric" and math.isnan(v)] == list(range(30))  # NaN is data
    assert sorted(rows(lake_root, "select metric, value, n, checkpoint_step, train_run_id from eval_results")) == \
        [("loss", 0.5, 64, 29, "plain-1"), ("perplexity", math.exp(0.5), 64, 29, "plain-1")]
    ((status, steps, final, source, dataset, config, config_hash, kind, code),) = rows(
        lake_root, "select status, steps, final_loss, source, dataset, config_json, config_hash, kind, code_version "
                   "from runs")
    assert (status, steps, final, source, dataset, kind) == ("completed", 30, 3.0 - 29 / 10, "client", "shakespeare",
                                                             "train")
    assert config == '{"layers": 2, "lr": 0.0003}' and len(config_hash) == 16 and code
    assert rows(lake_root, "select count(*) from system_samples where run_id = 'plain-1'")[0][0] >= 2
    assert rows(lake_root, "select count(*) from quarantine") == [(0,)]


def test_values_that_are_not_numbers_are_quarantined_not_written_nor_raised(lake_root):
    with mhw.start_run("m", run_id="bad-values", system_interval_s=None) as run:
        run.log(0, loss=1.0, note="warming up", lr="1e-3", ok=2)
        run.log(1, loss=0.9, **{"x" * 300: 1.0})
    assert rows(lake_root, "select step, loss, lr from train_steps order by step") == [(0, 1.0, None), (1, 0.9, None)]
    assert rows(lake_root, "select step, metric, value from step_metrics") == [(0, "ok", 2.0)]
    q = sorted(rows(lake_root, "select line, field, target_table, reason from quarantine"))
    assert [(line, f[:3], t) for line, f, t, _ in q] == [(0, "lr", "train_steps"), (0, "not", "step_metrics"),
                                                         (1, "xxx", "step_metrics")]
    assert "expected a number, got str 'warming up'" in q[1][3] and "too long" in q[2][3]


def test_a_run_ends_failed_when_its_block_raises_and_diverged_on_a_nan_loss(lake_root):
    with pytest.raises(ValueError):
        with mhw.start_run("m", run_id="raises", system_interval_s=None) as run:
            run.log(0, loss=1.0)
            raise ValueError("data loader broke")
    with mhw.start_run("m", run_id="nan", system_interval_s=None) as run:
        run.log(0, loss=1.0)
        run.log(1, loss=math.inf)
    assert sorted(rows(lake_root, "select run_id, status, steps from runs")) == [("nan", "diverged", 2),
                                                                              ("raises", "failed", 1)]
    assert rows(lake_root, "select count(*) from train_steps where run_id = 'raises'") == [(1,)]


def test_a_resumed_run_replaces_the_steps_it_logs_again_and_keeps_the_rest(lake_root):
    with mhw.start_run("m", run_id="resumed", block_rows=20, system_interval_s=None) as run:
        for s in range(50):
            run.log(s, loss=1.0)
    with mhw.start_run("m", run_id="resumed", block_rows=20, system_interval_s=None) as run:  # from step 30
        for s in range(30, 45):
            run.log(s, loss=2.0)
    got = dict(rows(lake_root, "select step, loss from train_steps"))
    assert got == {s: 2.0 if 30 <= s < 45 else 1.0 for s in range(50)}


def test_other_ranks_write_nothing_and_per_rank_is_not_yet(lake_root, monkeypatch):
    monkeypatch.setenv("RANK", "3")
    run = mhw.start_run("m", run_id="rank3")
    assert not run.enabled
    run.log(0, loss=1.0)
    run.log_eval(0, {"loss": 1.0})
    run.end()
    assert not os.path.exists(lake_root)
    with pytest.raises(NotImplementedError, match="issue 16"):
        mhw.start_run("m", per_rank=True)


EXIT_SCRIPT = """
import sys, mhw
run = mhw.start_run("m", run_id=sys.argv[1], system_interval_s=None)
run.log(0, loss=1.0)
run.log(1, loss=0.5)
if sys.argv[1] == "uncaught":
    raise RuntimeError("boom")
"""


@pytest.mark.parametrize("how, status", [("uncaught", "failed"), ("forgot-end", "completed")])
def test_a_process_that_exits_without_end_leaves_its_rows_and_a_status(lake_root, how, status):
    p = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, how], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "MHW_LAKE": lake_root})
    assert (p.returncode != 0) == (how == "uncaught"), p.stderr[-2000:]
    assert rows(lake_root, "select status, steps from runs") == [(status, 2)]
    assert rows(lake_root, "select step from train_steps order by step") == [(0,), (1,)]


HEAVY = ("torch", "pyarrow", "numpy", "duckdb", "pandas", "pyspark", "airflow", "transformers", "lightning")


def imported_after(code: str, env: dict | None = None) -> list[str]:
    probe = code + (f"\nimport os, sys; print('imported:' + ','.join(m for m in {HEAVY!r} if m in sys.modules), "
                    "flush=True); os._exit(0)")  # not the minute a run waits at exit for a collector that is not there
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                       env={**os.environ, **(env or {})})
    assert p.returncode == 0, p.stderr[-2000:]
    return [m for m in p.stdout.strip().splitlines()[-1].removeprefix("imported:").split(",") if m]


def test_import_mhw_is_cheap_and_the_client_never_imports_torch():
    assert imported_after("import mhw") == []
    assert imported_after("import mhw; mhw.start_run") == []
    # a run posting to a collector needs neither Parquet nor torch (nothing listens: it only queues)
    assert imported_after("import mhw; r = mhw.start_run('m', collector='http://127.0.0.1:9', token='t', "
                          "system_interval_s=None); r.log(0, loss=1.0)") == []


USER_SCRIPT = """
import model, pipelines                               # the user's own, from this folder
import mhw
from mhw.integrations.hf import MHWCallback
from mhw.integrations.lightning import MHWLogger
assert model.WHOSE == "user" and pipelines.WHOSE == "user", (model.__file__, pipelines.__file__)
net = model.build()
with mhw.start_run("user-net", run_id="user-run", system_interval_s=None) as run:
    for step in range(5):
        run.log(step, loss=net(step), lr=0.1)
cb, lg = MHWCallback(model_slug="user-net"), MHWLogger("user-net")
print("ok", model.__file__, pipelines.__file__)
"""


@pytest.mark.slow  # imports transformers and lightning in a fresh process
def test_a_training_repo_with_its_own_model_and_pipelines_imports_the_client(tmp_path, lake_root):
    repo = tmp_path / "my-training-repo"
    (repo / "pipelines").mkdir(parents=True)
    (repo / "model.py").write_text('WHOSE = "user"\n\ndef build():\n    return lambda step: 1.0 / (step + 1)\n')
    (repo / "pipelines" / "__init__.py").write_text('WHOSE = "user"\n')
    (repo / "train.py").write_text(USER_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "train.py"], cwd=repo, capture_output=True, text=True, timeout=300,
                       env={**env, "MHW_LAKE": lake_root})
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.split()[:3] == ["ok", str(repo / "model.py"), str(repo / "pipelines" / "__init__.py")]
    assert rows(lake_root, "select step, loss from train_steps order by step") == [(s, 1.0 / (s + 1)) for s in range(5)]
    assert rows(lake_root, "select run_id, status from runs") == [("user-run", "completed")]


def test_the_client_and_its_integrations_import_only_mhw_and_warehouse():
    """The promise that makes a user's model.py or pipelines/ safe: nothing under mhw/ but the command
    line imports this project's model or pipelines packages."""
    import ast

    found = []
    for path in [REPO / "mhw" / "client.py", REPO / "mhw" / "__init__.py", *(REPO / "mhw" / "integrations").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("model", "pipelines")]
    assert found == []


def test_the_plain_loop_example_runs(tmp_path, lake_root):
    example = REPO / "docs" / "examples" / "plain_loop.py"
    p = subprocess.run([sys.executable, str(example), "--steps", "40"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "MHW_LAKE": lake_root})
    assert p.returncode == 0, p.stderr[-3000:]
    assert rows(lake_root, "select count(*), count(distinct step) from train_steps") == [(40, 40)]
    assert rows(lake_root, "select status from runs") == [("completed",)]
    assert rows(lake_root, "select count(*) from eval_results") != [(0,)]


def test_an_object_store_lake_is_written_through_its_own_code_path(tmp_path):
    """A ``file://`` URI takes the object-store path of the writer (no lock, one PUT per file), as an
    ``s3://`` lake does; a resumed run merges there too."""
    uri = f"file://{tmp_path}/objlake"
    for start, stop, loss in ((0, 30, 1.0), (20, 25, 2.0)):
        with mhw.start_run("m", run_id="obj", lake=uri, block_rows=16, system_interval_s=None) as run:
            for s in range(start, stop):
                run.log(s, loss=loss, extra_name=float(s))
    root = str(tmp_path / "objlake")
    assert dict(rows(root, "select step, loss from train_steps")) == {s: 2.0 if 20 <= s < 25 else 1.0 for s in range(30)}
    assert rows(root, "select count(*) from step_metrics") == [(30,)]
    assert not (tmp_path / "objlake" / "_lake.lock").exists()  # the object-store path takes no lock


def test_a_metric_named_like_the_rows_own_fields_cannot_move_the_row(lake_root):
    with mhw.start_run("m", run_id="reserved", system_interval_s=None) as run:
        run.log(0, loss=1.0, model="../other", ts=0.5, run_id="someone-else")
    assert rows(lake_root, "select run_id, model, step, loss from train_steps") == [("reserved", "m", 0, 1.0)]
    assert sorted(f for f, in rows(lake_root, "select field from quarantine")) == ["model", "run_id", "ts"]
    assert all(r.startswith("reserved name") for r, in rows(lake_root, "select reason from quarantine"))
