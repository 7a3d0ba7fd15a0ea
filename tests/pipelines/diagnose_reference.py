"""The oracle of tests/pipelines/test_diagnose_equal.py: the alerts of the reference rules, and the lakes
they are compared on.

The reference rules are the rules as they were before issue 14 (tests/fixtures/diagnose_reference/,
copied from sql/diagnostics at 4db215b): each reads raw rows itself (train_steps, eval_results,
latency_samples, the serving tables, runs) over the whole lake, with nothing shared between rules and no
scope machinery.
A rule with no copy there is its own reference (its SQL did not change). ``reference_alerts`` runs them
on any engine over views of every file of the lake and turns the rows into alerts with the shipped
``to_alerts`` (ids, severities and texts are not what changed).
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from pipelines import lakefiles, sketch
from pipelines.diagnose import WATCHED, load_config, load_rule, load_rules, named, render, to_alerts
from warehouse.cli import main as mhw
from warehouse.schemas import TABLES
from warehouse.writer import Lake

REPO = Path(__file__).resolve().parents[2]
REFERENCE_DIR = REPO / "tests" / "fixtures" / "diagnose_reference"
REAL = REPO.parent / "shared" / "data" / "real"
REALRUNS = REPO / "tests" / "fixtures" / "realruns"
# what an alert says: every column but detected_at / notified_at (when it was first seen and told)
COLUMNS = ("alert_id", "rule", "severity", "scope", "model", "hardware", "date", "precision", "run_id", "suite",
           "metric", "step_start", "step_end", "start_at", "end_at", "baseline", "n_points", "message", "action")
NUMBERS = ("observed", "expected")


def reference_rules() -> dict:
    shipped = load_rules()
    return {name: load_rule(REFERENCE_DIR / f"{name}.sql") if (REFERENCE_DIR / f"{name}.sql").exists() else rule
            for name, rule in shipped.items()}


def _code(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))


def changed_rules() -> set[str]:
    """The rules whose SQL (comments aside) differs from the reference."""
    shipped = load_rules()
    return {name for name, rule in reference_rules().items() if _code(rule.sql) != _code(shipped[name].sql)}


def reference_alerts(lake: str, engine, config_path: str | None = None) -> list[dict]:
    """Every alert of the reference rules on the whole lake (a full diagnose's scope: every run of
    train_steps and eval_results, every model x hardware pair of the watched tables)."""
    rules = reference_rules()
    cfg = load_config(config_path, rules)
    handle = Lake(lake)
    root = handle.root
    for table in (*WATCHED, "runs"):  # every table a rule reads (the serving tables of issue 18 too)
        spec = TABLES[table]
        files = [f.path for parts in lakefiles.list_partitions(handle.fs, f"{root}/{table}", spec.partition_by).values()
                 for f in parts]
        for view in (table, f"peer_{table}"):
            engine.register_files(view, files, spec.schema, spec.partition_by, f"{root}/{table}")
    runs = engine.query("select run_id from train_steps where run_id is not null union "
                        "select train_run_id from eval_results where train_run_id is not null")
    pairs = engine.query(" union ".join(f"select model, hardware from {table}" for table in WATCHED))
    for name, table in {"diagnose_runs": runs, "diagnose_pairs": pairs,
                        "metric_directions": cfg.metric_directions, "latency_slos": cfg.latency_slos,
                        "eval_references": cfg.eval_references, "sketch_bounds": sketch.bounds_table()}.items():
        engine.register_arrow(name, table)
    alerts = []
    for name, rule in rules.items():
        # the rules of runs and of model x hardware pairs; the fleet's live and hosts rules (by the clock,
        # across jobs) have no reference of their own: tests/pipelines/test_fleet.py
        if not cfg.rules[name].enabled or rule.scope not in ("run", "fleet"):
            continue
        rows = engine.query(render(rule, cfg.rules[name].params))
        alerts += to_alerts(rule, cfg.rules[name], named(rule, rows))  # CONTRACT, and a host and rank if named
    return alerts


def _same_number(x, y) -> bool:
    if x is None or y is None:
        return x is y
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    # the same SQL summed in another order differs in the last bits: both engines aggregate in parallel,
    # and DuckDB alone, running plateau's regr_slope twice on one lake, differs by 1.4e-12 relative
    return x == pytest.approx(y, rel=1e-9, abs=1e-300)


def assert_same_alerts(expected: list[dict], got: list[dict]) -> None:
    """The same alerts, column for column: ids, subjects, steps, times and texts equal; observed and
    expected equal to 1e-9 (what a summation order can move)."""
    e = {a["alert_id"]: a for a in expected}
    g = {a["alert_id"]: a for a in got}
    assert len(e) == len(expected) and len(g) == len(got)
    missing, extra = sorted(set(e) - set(g)), sorted(set(g) - set(e))
    assert not missing and not extra, (
        [(e[k]["rule"], e[k]["run_id"], e[k]["model"]) for k in missing],
        [(g[k]["rule"], g[k]["run_id"], g[k]["model"]) for k in extra])
    for k, a in e.items():
        b = g[k]
        for col in COLUMNS:
            assert a[col] == b[col], (a["rule"], a["run_id"], col, a[col], b[col])
        for col in NUMBERS:
            assert _same_number(a[col], b[col]), (a["rule"], a["run_id"], col, a[col], b[col])


# --- the lakes ------------------------------------------------------------------------------------------

# one run per group of files (a checkpoint series is one run): run id -> files of real/hf_trainer_state
HF_RUNS = {
    "p4p4n1ck": ["P4P4N1CK--whisper-large-v2-japanese-5k-steps--trainer_state.json",
                 "P4P4N1CK--whisper-large-v2-japanese-5k-steps--last-checkpoint.json"],
    "fabiom91": ["fabiom91--ConvNeXt_AI_Competition_Platform--model.json"],
    "shlomota": ["shlomota--taami--checkpoint-5000.json"],
    "tanisha": ["Tanisha-anshu--OpenAi-Whisper-small-Braj--trainer_state.json"],
    "leedongque": [f"LEEDONGQUE--serverlog--checkpoint-{n}.json" for n in (2000, 4000, 6000)],
    "haoken123": ["HaoKen123--ChuyenDE--checkpoint-1500.json"],
    "nijat": ["NijatZeynalov--mT5-based-azerbaijani-news-summarize--trainer_state.json"],
    "subro608": [f"subro608--Deep_learning_Bert_project2--checkpoint-{n}.json" for n in (500, 1000, 1500, 2000, 2400)],
    "akanksha": ["akanksha28pathak--SmolVLM_EndoscopyQA--trainer_state.json"],
    "akhmetvaleev": ["akhmetvaleev-ruslan--bashkir-language-audio2text--trainer_state.json"],
    "sygoat": [f"syGOAT--Mistral-v0.2-Translator-bf16--{n}.json"
               for n in ("checkpoint-500", "checkpoint-4000", "checkpoint-8500", "final")],
    "wtwong316": [f"wtwong316--alpaca-bitcoin-tweets-sentiment--checkpoint-{n}.json" for n in (200, 250, 300)],
    "hangeryang": ["HangerYang--Star--trainer_state.json"],
    "seangormann": ["SeanGormann--llm_recovery--checkpoint-200.json"],
    "yuanhuanghuang": ["yuanhuanghuang--quality--lrqa-init-py-trainer_state.json"],
    "odia": [f"shantipriyap--Odia-OCR--v2-checkpoint-{n}.json" for n in (50, 100, 150, 200)],
    "wabbybabb0": ["Wabbybabb0--glm_finetune--checkpoint-2000.json"],
    "alicelouis47": ["alicelouis47--VisLungTransformer--model.json"],
    "arbordreams": ["arbordreams--tokalign-baseline--model.json"],
}


def real_lake(root: str) -> None:
    """Every real log there is, ingested with ``mhw ingest``: the public logs of ../shared/data/real
    (Trainer states, TensorBoard, MLflow, MLPerf, lm-eval) and this project's real CPU trainings
    (tests/fixtures/realruns: many runs of two models, so runs have peers)."""
    hf = REAL / "hf_trainer_state"
    for run_id, files in HF_RUNS.items():
        assert mhw(["ingest", *(str(hf / f) for f in files), "--lake", root, "--run-id", run_id,
                    "--model", run_id, "--hardware", "gpu"]) == 0
    for f in sorted((REAL / "mlperf").iterdir()):
        assert mhw(["ingest", str(f), "--lake", root]) == 0
    assert mhw(["ingest", *map(str, sorted((REAL / "lm_eval").iterdir())), "--lake", root]) == 0
    assert mhw(["ingest", *map(str, sorted((REAL / "mlflow").iterdir())), "--hardware", "cpu", "--lake", root]) == 0
    tb = sorted((REAL / "tensorboard").iterdir())
    assert mhw(["ingest", str(tb[0]), "--model", "swahili-stt", "--hardware", "gpu", "--lake", root]) == 0
    assert mhw(["ingest", *map(str, tb[1:]), "--model", "wtwong316", "--hardware", "gpu", "--lake", root]) == 0
    assert mhw(["ingest", *map(str, sorted(REALRUNS.glob("*.jsonl"))), "--lake", root]) == 0


needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="shared/data/real is not beside the repo")

