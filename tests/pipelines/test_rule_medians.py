"""loss_spike's per-window medians: the shipped rule takes median() over run_steps (the shared pass, its
places counted from bitmaps), the reference rule (before issue 14) took ranks over its own row_number()
of raw rows, (lo + hi) / 2 of the middle value(s), which is what median() returns. The two must agree
bit for bit, not just to the 1e-9 of test_diagnose_equal: on a simulated fleet with spikes planted, at
the default window and at short windows with even counts."""
from __future__ import annotations

import pyarrow as pa
import pytest

from diagnose_reference import reference_rules
from pipelines import diagnose as d
from pipelines.engines.duckdb_engine import DuckDBEngine
from warehouse.simulate import simulate


def config(window_logs: int | None):
    rules = d.load_rules()
    cfg = d.load_config(rules=rules)
    if window_logs:
        cfg.rules["loss_spike"].params["window_logs"] = window_logs
    return rules, cfg


def shipped(lake: str, window_logs: int | None) -> pa.Table:
    rules, cfg = config(window_logs)
    scope = d.find_scope(lake, d.definition_hash(rules, cfg), True)
    out, _ = d.run_rules(DuckDBEngine(), lake, {"loss_spike": rules["loss_spike"]}, cfg, scope)
    return out["loss_spike"].select(d.CONTRACT.names).sort_by("run_id")  # less the host and rank it names none of


def reference(lake: str, window_logs: int | None) -> pa.Table:
    _, cfg = config(window_logs)
    eng = DuckDBEngine()
    eng.con.execute(f"create view train_steps as select * from read_parquet('{lake}/train_steps/**/*.parquet', "
                    "hive_partitioning = true, hive_types = {'model': 'VARCHAR', 'hardware': 'VARCHAR'})")
    eng.con.execute("create view diagnose_runs as select distinct run_id from train_steps")
    rule = reference_rules()["loss_spike"]
    return eng.query(d.render(rule, cfg.rules["loss_spike"].params)).cast(d.CONTRACT).sort_by("run_id")


@pytest.mark.parametrize("window_logs", [None, 4])  # the default, and short windows with even counts
def test_window_medians_equal_the_rank_medians_bit_for_bit(tmp_path, window_logs):
    lake = str(tmp_path / "lake")
    simulate(lake, 200_000, seed=4, incident_rate=0.9, magnitude=2.0)
    new, old = shipped(lake, window_logs), reference(lake, window_logs)
    assert new.num_rows >= 3
    assert new.equals(old)
