"""The same SQL on Spark (local[2], translated by sqlglot) and on DuckDB: the same cubes, counts and
bucket counts exactly, floats to 1e-9 relative. One SparkSession for the module."""
import pytest

from cube_lake import assert_tables_equal, make_lake, mutate, serving_tables, write_repairs
from pipelines.build import CubeStore, build
from pipelines.models import load_models
from warehouse.writer import Lake

pytestmark = [pytest.mark.spark, pytest.mark.timeout(600)]
# Small test data, busy cores: the JVM's quick C1 compiler alone starts and finishes sooner.
QUICK_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


@pytest.fixture(scope="module")
def spark_engine():
    from pipelines.engines.spark_engine import SparkEngine
    eng = SparkEngine(master="local[2]", conf={"spark.sql.shuffle.partitions": "2",
                                                "spark.driver.extraJavaOptions": QUICK_JVM})
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def builds(tmp_path_factory, spark_engine):
    root = tmp_path_factory.mktemp("engines")
    lake = make_lake(str(root / "lake"))
    write_repairs(Lake(lake))  # alerts and repairs: the repair cubes get rows on both engines
    duck = build(lake, str(root / "duckdb.duckdb"), cubes_root=str(root / "duckdb-cubes"))
    spark = build(lake, str(root / "spark.duckdb"), engine=spark_engine, cubes_root=str(root / "spark-cubes"))
    return root, duck, spark


def sorted_table(t):
    # exact columns first; then timestamps and doubles, which tell apart rows the others do not (an
    # hour, a bucket's bound) and never differ between the engines by less than their gaps
    kinds = [lambda f: not str(f.type).startswith(("double", "timestamp")), lambda f: str(f.type).startswith("timestamp"),
             lambda f: str(f.type).startswith("double")]
    keys = [f.name for kind in kinds for f in t.schema if kind(f)]
    return t.sort_by([(k, "ascending") for k in keys])


def test_spark_and_duckdb_serve_the_same_cubes(builds):
    root, duck, spark = builds
    assert spark.engine == "spark" and spark.full and spark.rebuilt == duck.rebuilt
    assert_tables_equal(serving_tables(str(root / "duckdb.duckdb")), serving_tables(str(root / "spark.duckdb")))


def test_every_model_output_is_the_same_on_both_engines(builds):
    """Base models too: the edge run's step-time buckets (every bucket edge and its neighbours) land
    in the same buckets on Spark as on DuckDB, whose buckets test_cube_sketch checks exactly."""
    root, _, _ = builds
    d, s = CubeStore(str(root / "duckdb-cubes")), CubeStore(str(root / "spark-cubes"))
    compared = 0
    for m in load_models():
        if m.name == "audit_entries":  # each build's trail holds that build: compared on one input below
            continue
        a, b = sorted_table(d.read(m)), sorted_table(s.read(m))
        assert_tables_equal({m.name: a}, {m.name: b})
        compared += a.num_rows > 0
    assert compared >= 20  # every model over the four fact tables, the alerts and the repairs has rows


def test_spark_incremental_build_equals_a_duckdb_full_build(builds, spark_engine, tmp_path):
    """After appends, rewrites and a deletion in the lake, Spark's incremental build (inputs
    restricted to the changed partitions, date files merged) serves what a DuckDB full build does."""
    root, _, _ = builds
    mutate(str(root / "lake"))
    inc = build(str(root / "lake"), str(root / "spark.duckdb"), engine=spark_engine,
                cubes_root=str(root / "spark-cubes"))
    assert not inc.full and inc.serving_mode == "patched" and inc.rebuilt["train_health_base"] == 9
    build(str(root / "lake"), str(tmp_path / "full.duckdb"), full=True, cubes_root=str(tmp_path / "full-cubes"))
    assert_tables_equal(serving_tables(str(tmp_path / "full.duckdb")), serving_tables(str(root / "spark.duckdb")))


def test_the_audit_trail_is_the_same_on_both_engines(builds, spark_engine):
    """The served audit trail (sql/cubes/audit_entries.sql) over one state of the audit log: the
    entries of both builds above, started and ended ones (nulls in their counts) alike."""
    from pipelines import lakefiles
    from pipelines.engines.duckdb_engine import DuckDBEngine
    from warehouse.schemas import TABLES
    from warehouse.writer import Lake

    root = builds[0]
    table_dir = str(root / "lake" / "audit_log")
    files = [f.path for fs_ in lakefiles.list_partitions(Lake(table_dir).fs, table_dir, ("date",)).values()
             for f in fs_]
    (model,) = [m for m in load_models() if m.name == "audit_entries"]
    out = {}
    duck = DuckDBEngine()
    for eng in (duck, spark_engine):
        session = eng.session()
        session.register_files("audit_log", files, TABLES["audit_log"].schema, ("date",), table_dir)
        out[eng.name] = sorted_table(session.query(model.sql))
    duck.close()
    assert out["duckdb"].num_rows >= 2 and {"build"} <= set(out["duckdb"].column("command").to_pylist())
    assert_tables_equal({"audit_entries": out["duckdb"]}, {"audit_entries": out["spark"]})

