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
    assert cli.main(["query", "selec 1"]) == 2  # a syntax error is a message and exit 2, not a traceback
    assert "syntax error" in capsys.readouterr().err


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


# --- read-only where promised: `mhw query` on a real lake and serving file -----------------------

import hashlib  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

from warehouse import readonly  # noqa: E402
from warehouse.sqltext import literal  # noqa: E402


@pytest.fixture(scope="module")
def warehouse_root(tmp_path_factory):
    """A simulated lake and its built serving file, under a folder whose name has a quote and a space
    (paths pasted into SQL used to break on it)."""
    from pipelines.build import build
    from warehouse.simulate import simulate

    root = tmp_path_factory.mktemp("query") / "it's a warehouse"
    lake, serving = root / "lake", root / "serv'ing file.duckdb"
    simulate(str(lake), 3000, seed=5, days=2)
    build(str(lake), str(serving))
    return root


def paths(root: Path) -> dict[str, str]:
    lake = root / "lake"
    part = next((lake / "train_steps").glob("model=*/hardware=*/date=*"))
    serving = root / "serv'ing file.duckdb"
    return {"lake": str(lake), "serving": str(serving), "wal": f"{serving}.wal",
            "evil_parquet": str(part / "evil.parquet"), "export_dir": str(lake / "exported")}


def tree_hashes(root: Path) -> dict[str, str]:
    """Every file under the warehouse folder (lake, serving file, anything written beside them)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def mhw_query(root: Path, sql: str, capsys, fmt: str = "json"):
    p = paths(root)
    rc = cli.main(["query", "--lake", p["lake"], "--serving", p["serving"], "--format", fmt, sql])
    out = capsys.readouterr()
    return rc, out.out, out.err


ESCAPE = "/tmp/mhw-query-escape.csv"

# (attack, SQL with {placeholders} filled in as SQL literals, what the refusal names)
WRITES = [
    ("copy rows into the lake", "copy (select * from train_steps limit 5) to {evil_parquet}", "COPY statement"),
    ("copy into the serving file's WAL", "copy (select 1) to {wal}", "COPY statement"),
    ("copy over the serving file", "copy (select 1) to {serving} (use_tmp_file false)", "COPY statement"),
    ("copy out of the lake", f"copy (select 1) to '{ESCAPE}'", "COPY statement"),
    ("copy from a host file", "copy train_steps from '/etc/passwd'", "COPY statement"),
    ("copy inside a WITH", "with w as (copy (select 1 as x) to {evil_parquet}) select 1", "COPY inside a SELECT"),
    ("delete inside a WITH", "with d as (delete from serving.train_health_daily returning *) "
                             "select count(*) from d", "DELETE inside a SELECT"),
    ("detach, attach, delete", "detach serving; attach {serving} as w; delete from w.train_health_daily",
     "DETACH statement"),
    ("attach the serving file read-write", "attach {serving} as w", "ATTACH statement"),
    ("insert", "insert into serving.train_health_daily select * from serving.train_health_daily",
     "INSERT statement"),
    ("update", "update serving.train_health_daily set n_steps = 0", "UPDATE statement"),
    ("delete", "delete from serving.train_health_daily", "DELETE statement"),
    ("truncate", "truncate serving.train_health_daily", "TRUNCATE (DELETE) statement"),
    ("create a table", "create table t as select 1", "CREATE statement"),
    ("replace a lake view", "create or replace view train_steps as select 1 as run_id", "CREATE statement"),
    ("drop a lake view", "drop view train_steps", "DROP statement"),
    ("alter a view", "alter view train_steps rename to x", "ALTER statement"),
    ("turn external access on", "set enable_external_access = true", "SET statement"),
    ("reset the allowed directories", "reset allowed_directories", "RESET (SET) statement"),
    ("use another catalog", "use serving", "USE (SET) statement"),
    ("pragma", "pragma enable_profiling", "PRAGMA statement"),
    ("install an extension", "install httpfs", "INSTALL (LOAD) statement"),
    ("load an extension", "load httpfs", "LOAD statement"),
    ("update extensions", "update extensions", "UPDATE (a kind this check does not know) statement"),
    ("export the database", "export database {export_dir}", "EXPORT statement"),
    ("import a database", "import database {lake}", "IMPORT (PRAGMA) statement"),
    ("checkpoint", "checkpoint serving", "CHECKPOINT (CALL) statement"),
    ("call", "call force_checkpoint('serving')", "CALL statement"),
    ("vacuum", "vacuum", "VACUUM statement"),
    ("explain analyze runs a copy", "explain analyze copy (select 1) to {evil_parquet}", "COPY statement"),
    ("a read, then a copy", "select 1; copy (select 1) to {evil_parquet}", "COPY statement"),
    ("prepare", "prepare p as select 1", "PREPARE statement"),
    ("a transaction", "begin transaction", "BEGIN (TRANSACTION) statement"),
    ("a persistent secret", "create persistent secret s (type s3, key_id 'k', secret 'v')", "CREATE statement"),
    ("SQL in a string", "select * from query('select 1')", "query() refused"),
    ("a serialized copy", "select * from json_execute_serialized_sql(json_serialize_sql({copy_in_with}))",
     "json_execute_serialized_sql() refused"),
    ("no statement at all", "/* nothing */", "no statement to run"),
]

# SELECTs that read host files: the statement check lets them through, DuckDB's settings refuse them.
HOST_READS = [
    "select * from read_csv('/etc/passwd')",
    "select * from read_csv_auto('/etc/passwd', header = false)",
    "select * from read_text('/etc/passwd')",
    "select * from read_blob('/etc/passwd')",
    "select * from read_json('/etc/passwd')",
    "select * from sniff_csv('/etc/passwd')",
    "select * from glob('/etc/*')",
    "select * from read_text({lake} || '/../../../../../../../../etc/passwd')",
    "select * from read_csv({up})",
]


def fill(sql: str, root: Path) -> str:
    p = paths(root)
    lits = {k: literal(v) for k, v in p.items()}
    lits["copy_in_with"] = literal(f"with w as (copy (select 1 as x) to {lits['evil_parquet']}) select 1")
    lits["up"] = literal(p["lake"] + "/../../../../../../../../etc/passwd")
    return sql.format(**lits)


@pytest.mark.parametrize("attack, sql, named", WRITES, ids=[w[0] for w in WRITES])
def test_query_refuses_every_write(warehouse_root, capsys, attack, sql, named):
    before = tree_hashes(warehouse_root)
    rc, out, err = mhw_query(warehouse_root, fill(sql, warehouse_root), capsys)
    assert rc == 2, (attack, out, err)
    assert err.startswith("mhw query: ") and named in err, err
    assert out == ""
    assert tree_hashes(warehouse_root) == before  # the lake and the serving file, byte for byte
    assert not os.path.exists(ESCAPE)


@pytest.mark.parametrize("sql", HOST_READS)
def test_query_reads_no_host_file(warehouse_root, capsys, sql):
    before = tree_hashes(warehouse_root)
    rc, out, err = mhw_query(warehouse_root, fill(sql, warehouse_root), capsys)
    assert rc == 2 and "Permission Error" in err, (out, err)  # refused by DuckDB's locked settings
    assert "root:" not in out + err
    assert tree_hashes(warehouse_root) == before


def test_the_attacks_are_real_without_the_lock(warehouse_root, tmp_path):
    """The same SQL on the same connection unlocked (no settings, no statement check) does write the
    lake and the serving file and read host files: the refusals above are the lock's doing."""
    root = tmp_path / "it's a warehouse"
    shutil.copytree(warehouse_root, root)
    p = paths(root)
    con = connect(p["lake"], p["serving"], locked=False)
    n_steps = con.execute("select count(*) from train_steps").fetchone()[0]
    assert con.execute("select count(*) from read_csv('/etc/passwd', header = false)").fetchone()[0] > 0
    con.execute(fill(WRITES[0][1], root))  # copy rows into the lake
    con.execute(fill(WRITES[1][1], root))  # a WAL beside the serving file
    assert os.path.exists(p["wal"])
    os.unlink(p["wal"])  # (one of CSV text; the serving tests plant a real one)
    con.execute(fill("detach serving; attach {serving} as w; delete from w.train_health_daily", root))
    con.close()
    con = connect(p["lake"], p["serving"])
    assert con.execute("select count(*) from train_steps").fetchone()[0] == n_steps + 5  # planted rows
    assert con.execute("select count(*) from train_health_daily").fetchone()[0] == 0  # served rows gone
    con.close()
    # A data-modifying WITH is a SELECT to DuckDB's statement types: only the parse-tree walk sees it.
    con = connect(p["lake"], p["serving"], locked=False)
    assert [s.type.name for s in duckdb.extract_statements(fill(WRITES[5][1], root))] == ["SELECT"]
    os.unlink(p["evil_parquet"])
    con.execute(fill(WRITES[5][1], root))
    assert os.path.exists(p["evil_parquet"])
    con.close()


def test_query_still_reads_views_cubes_and_the_lake_files(warehouse_root, capsys):
    before = tree_hashes(warehouse_root)
    lake_glob = literal(paths(warehouse_root)["lake"] + "/train_steps/**/*.parquet")

    def one(sql):
        rc, out, err = mhw_query(warehouse_root, sql, capsys)
        assert rc == 0, (sql, err)
        return [json.loads(line) for line in out.splitlines()]

    n = one("select count(*) as n from train_steps")[0]["n"]
    assert n > 0
    assert one(f"select count(*) as n from read_parquet({lake_glob}, hive_partitioning = true)")[0]["n"] == n
    assert one("select n_steps from train_health where agg_level = 'total'")[0]["n_steps"] == n
    assert one("with runs_per_model as (select model, count(*) as n from runs group by all) "
               "select sum(n) as n from runs_per_model")[0]["n"] > 0
    assert {r["name"] for r in one("show tables")} >= {"train_steps", "train_health", "build_info"}
    assert [r["column_name"] for r in one("describe train_steps")][:2] == ["run_id", "step"]
    rc, out, err = mhw_query(warehouse_root, "summarize select loss, step from train_steps", capsys, "csv")
    assert rc == 0 and len(out.splitlines()) == 3, err  # header + one row per column (csv: JSON has no Decimal)
    assert one("explain select count(*) from train_steps")
    assert one("explain analyze select count(*) from train_steps")
    assert one("pivot (select 'a' as k, 1 as v) on k in ('a', 'b') using sum(v)") == [{"a": 1, "b": None}]
    assert one("select 1 as a; select 2 as b") == [{"b": 2}]  # several reads: the last one's rows
    assert one(f"select count(*) > 0 as listed from glob({lake_glob})") == [{"listed": True}]
    assert tree_hashes(warehouse_root) == before


def test_paths_with_a_quote_and_a_space(warehouse_root, capsys):
    """`mhw query` and `mhw audit` on a lake and serving file whose paths hold `'` and ` `."""
    assert "'" in str(warehouse_root) and " " in str(warehouse_root)
    rc, out, err = mhw_query(warehouse_root, "select count(*) as n from train_health_daily", capsys)
    assert rc == 0 and json.loads(out)["n"] > 0, err
    p = paths(warehouse_root)
    assert cli.main(["audit", "--lake", p["lake"], "--serving", p["serving"]]) == 0
    assert "mhw audit: ok" in capsys.readouterr().out


def test_the_lock_is_one_handle_for_other_connections(tmp_path):
    """readonly.lock_down on any connection: reads inside the allowed folder, nothing outside, and no
    setting changes afterwards (Superset's connections get the same settings, superset_config.py)."""
    inside = tmp_path / "inside"
    inside.mkdir()
    (inside / "a.csv").write_text("x\n1\n")
    (tmp_path / "outside.csv").write_text("x\n2\n")
    con = duckdb.connect()
    readonly.lock_down(con, directories=[str(inside)])
    assert con.execute(f"select x from read_csv({literal(str(inside / 'a.csv'))})").fetchall() == [(1,)]
    with pytest.raises(duckdb.PermissionException):
        con.execute(f"select x from read_csv({literal(str(tmp_path / 'outside.csv'))})")
    with pytest.raises(duckdb.InvalidInputException, match="locked"):
        con.execute("set enable_external_access = true")
    assert readonly.LOCKED_CONFIG["lock_configuration"] == "true"
    assert readonly.LOCKED_CONFIG["enable_external_access"] == "false"
