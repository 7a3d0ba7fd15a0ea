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
