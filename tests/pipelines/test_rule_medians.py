"""loss_spike reads its per-window medians from ranks (one partitioned sort) instead of median()
(a sort per window, the bulk of a full diagnose at 10 M rows). The two must agree bit for bit: the
rule as shipped against the same rule with its medians written as median(), on a simulated fleet
with spikes planted (bench/RESULTS.md: also equal on the 10 M-row lake)."""
from __future__ import annotations

import dataclasses
import re

import pyarrow as pa
import pytest

from pipelines import diagnose as d
from pipelines.engines.duckdb_engine import DuckDBEngine
from warehouse.simulate import simulate

MEDIAN_FORM = """window_levels as (
    select
        run_id,
        window_no,
        median(loss) as loss_median,
        median(step_change) as change_median,
        max(loss) as loss_max,
        count(*) as n_logs,
        min(step) as first_step,
        max(step) as last_step
    from windows
    group by run_id, window_no
),"""


def with_median(rule: d.Rule) -> d.Rule:
    text = re.sub(r"ranked as \(.*?\n\),\n\nwindow_levels as \(.*?\n\),", MEDIAN_FORM, rule.sql, flags=re.S)
    assert text != rule.sql and "median(loss)" in text and "loss_rank" not in text
    return dataclasses.replace(rule, sql=text)


def alerts_of(lake: str, rule: d.Rule, window_logs: int | None = None) -> pa.Table:
    rules = d.load_rules()
    cfg = d.load_config(rules=rules)
    if window_logs:
        cfg.rules["loss_spike"].params["window_logs"] = window_logs
    scope = d.find_scope(lake, d.definition_hash(rules, cfg), True)
    out, _ = d.run_rules(DuckDBEngine(), lake, {"loss_spike": rule}, cfg, scope)
    return out["loss_spike"].sort_by("run_id")


@pytest.mark.parametrize("window_logs", [None, 4])  # the default, and short windows with even counts
def test_rank_medians_equal_median_on_a_simulated_fleet(tmp_path, window_logs):
    lake = str(tmp_path / "lake")
    simulate(lake, 200_000, seed=4, incident_rate=0.9, magnitude=2.0)
    shipped = d.load_rules()["loss_spike"]
    new, old = alerts_of(lake, shipped, window_logs), alerts_of(lake, with_median(shipped), window_logs)
    assert new.num_rows >= 3
    assert new.equals(old)
