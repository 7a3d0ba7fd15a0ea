import json

import duckdb
import pytest

from warehouse import cli
from warehouse.query import connect
from warehouse.schemas import TABLES


def test_every_table_is_a_typed_view_even_when_empty(lake_root):
    con = connect()
    for name, table in TABLES.items():
        cols = con.execute(f"describe {name}").fetchall()
        assert [c[0] for c in cols] == table.schema.names
        assert con.execute(f"select count(*) from {name}").fetchall() == [(0,)]


def test_query_formats_and_errors(lake_root, capsys):
    assert cli.main(["query", "select 1 as a, 'x' as b, 'nan'::double as c", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"a": 1, "b": "x", "c": "nan"}
    assert cli.main(["query", "select 1 as a"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "(1 rows)"
    assert cli.main(["query", "select * from no_such_table"]) == 2
    assert "no_such_table" in capsys.readouterr().err


def test_serving_file_is_attached_read_only(lake_root, tmp_path):
    serving = tmp_path / "serving.duckdb"
    w = duckdb.connect(str(serving))
    w.execute("create table training_health as select 42 as n")
    w.close()
    con = connect(serving_path=str(serving))
    assert con.execute("select n from training_health").fetchall() == [(42,)]
    with pytest.raises(duckdb.Error):
        con.execute("insert into serving.training_health values (1)")


def test_nan_is_found_even_in_files_with_float_statistics(lake_root):
    """NaN stays visible through the views for files other tools wrote with float statistics."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    part = os.path.join(lake_root, "train_steps", "model=m", "hardware=h", "date=2026-11-01")
    os.makedirs(part)
    # Written by another tool, with min/max statistics on the float columns (which leave NaN out).
    from warehouse.schemas import TRAIN_STEPS
    from warehouse.writer import conform

    rows = conform(TRAIN_STEPS, pa.table({
        "run_id": ["r"] * 3, "step": [0, 1, 2], "loss": [1.0, float("nan"), 2.0], "model": ["m"] * 3,
        "hardware": ["h"] * 3, "ts": pa.array([1_793_000_000_000_000] * 3, pa.timestamp("us", tz="UTC"))}))
    pq.write_table(rows.select(TRAIN_STEPS.file_schema.names), os.path.join(part, "other.parquet"),
                   write_statistics=True)
    con = connect(serving_path="")
    n_nan, n_finite, top = con.execute("select count(*) filter (where isnan(loss)), "
                                       "count(*) filter (where abs(loss) < 'inf'::double), max(loss) "
                                       "from train_steps").fetchall()[0]
    assert (n_nan, n_finite) == (1, 2)
    assert top != top  # NaN sorts above every number in DuckDB: the max is NaN, not 2.0
