"""bench/bench_realruns.py's labels and fixtures: the spec and label files parse and name only what
exists, the exported real-run fixtures ingest cleanly through `mhw ingest`, and the objective criteria
measured on those real rows agree with the labels (no training here: the fixtures are real runs)."""
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import bench_realruns as bench  # noqa: E402
from warehouse import cli  # noqa: E402
from warehouse.query import connect  # noqa: E402

LABELS = bench.load_yaml(bench.LABELS)
RUNS = bench.matrix_runs()
PUBLIC = bench.load_yaml(bench.PUBLIC)
FIXTURES = sorted(bench.FIXTURES.glob("*.jsonl"))


def test_labels_name_known_families_splits_and_twins():
    families = set(LABELS["families"])
    assert set(LABELS["criteria"]) == families  # every family has its written criterion
    names = {r["name"] for r in RUNS}
    for r in RUNS + PUBLIC["runs"]:
        who = r.get("name") or r["id"]
        assert r["split"] in bench.SPLITS, who
        assert set(r.get("families") or []) <= families, who
        assert set(r.get("tolerated") or []) <= families, who
        assert not set(r.get("families") or []) & set(r.get("tolerated") or []), who
        assert not r.get("tolerated") or r.get("tolerated_why"), f"{who}: a tolerated family needs its reason"
        assert r.get("twin") is None or r["twin"] in names, who
    for r in RUNS:
        assert not any(k.startswith("trainer.inject_") for k in r.get("overrides") or {}), r["name"]  # real mistakes only
    for split in bench.SPLITS:  # both sides have healthy runs and faults
        side = [r for r in RUNS if r["split"] == split]
        assert any(not r["families"] for r in side) and any(r["families"] for r in side), split


def test_every_fixture_is_a_matrix_run_and_every_public_file_exists():
    names = {r["name"] for r in RUNS}
    assert FIXTURES, "no fixtures: bench/bench_realruns.py --export-fixtures writes them"
    assert {f.stem for f in FIXTURES} <= names
    assert sum(f.stat().st_size for f in FIXTURES) < 6e6
    if not bench.PUBLIC_DATA.exists():
        pytest.skip(f"{bench.PUBLIC_DATA} is not on this machine")
    for r in PUBLIC["runs"]:
        for f in r["files"]:
            assert (bench.PUBLIC_DATA / f).exists(), f
    listed = {f for r in PUBLIC["runs"] for f in r["files"]} | {f for r in PUBLIC.get("not_scored", []) for f in r["files"]}
    manifest = (bench.PUBLIC_DATA / "MANIFEST.md").read_text()
    for f in listed:  # a label names a file the manifest describes
        stem = Path(f).name.split("--")[0]
        assert stem in manifest or Path(f).parent.name + "/" in listed, f


@pytest.fixture(scope="module")
def fixture_lake(tmp_path_factory):
    lake = str(tmp_path_factory.mktemp("realruns") / "lake")
    assert cli.main(["ingest", *map(str, FIXTURES), "--lake", lake]) == 0
    return lake


@pytest.mark.slow  # every real-run fixture ingested (`fixture_lake`)
def test_fixtures_ingest_cleanly(fixture_lake):
    con = connect(lake_root=fixture_lake, serving_path="")
    lines = [json.loads(line) for f in FIXTURES for line in f.read_text().splitlines()]
    for table in ("runs", "train_steps", "eval_results"):
        n = sum(1 for r in lines if r["table"] == table)
        assert con.execute(f"select count(*) from {table}").fetchone()[0] == n, table
    assert "quarantine" not in {d.name for d in Path(fixture_lake).iterdir()}  # nothing rejected
    # one run per fixture, one row per step, exactly as the trainer wrote them
    assert con.execute("select count(*) from runs").fetchone()[0] == len(FIXTURES)
    assert con.execute("select count(*) from (select run_id, step from train_steps group by 1, 2 "
                       "having count(*) > 1)").fetchone()[0] == 0


@pytest.mark.slow  # every real-run fixture ingested (`fixture_lake`)
def test_measured_criteria_agree_with_the_labels(fixture_lake):
    by_name = {r["name"]: r for r in RUNS}
    have = {f.stem for f in FIXTURES}
    labeled = bench.labeled_matrix([by_name[n] for n in sorted(have)])
    twin_ids = {bench.run_id_of(by_name[n]): bench.run_id_of(by_name[by_name[n]["twin"]])
                for n in have if by_name[n].get("twin") in have}
    steps, val, runs = bench.telemetry(fixture_lake, [bench.run_id_of(by_name[n]) for n in sorted(have)])
    twin_ids = {k: v for k, v in twin_ids.items() if v in steps}
    measured = bench.measure(labeled, steps, val, runs, LABELS["criteria"], twin_ids,
                             tuple(LABELS.get("measured_on_matrix") or ()))
    assert len(measured) == len(have)
    assert bench.check_labels(labeled, measured) == []


def test_criteria_on_hand_made_series():
    params = LABELS["criteria"]
    flat = [{"step": i, "loss": 2.0 - 0.001 * i, "lr": 1e-3, "grad_norm": 0.5} for i in range(100)]
    met = {f for f, (ok, _) in bench.criteria(flat, [], params).items() if ok}
    assert met == {"underfitting"}  # 5 % lower after 100 logs: never learns
    spike = [{"step": i, "loss": 5.0 / (1 + i) ** 0.3, "lr": 1e-3, "grad_norm": 0.5} for i in range(100)]
    spike[60]["loss"] = 10.0
    assert {f for f, (ok, _) in bench.criteria(spike, [], params).items() if ok} == {"loss_spike"}
    spike[60]["loss"] = float("nan")
    assert bench.criteria(spike, [], params)["divergence"][0]
    climbing = [{"step": i, "loss": 5.0 / (1 + i) ** 0.3, "lr": 1e-4 * (1 + 2 * i / 99)} for i in range(100)]
    assert bench.criteria(climbing, [], params, warmup_steps=10)["lr_schedule"][0]  # a cosine that climbs
    assert not bench.criteria(climbing, [], params)["lr_schedule"][0]  # without its config: still warmup
    val = [(0, 3.0), (50, 1.0), (100, 1.5)]
    assert bench.criteria(spike[:59] + spike[61:], val, params)["overfitting"][0]
