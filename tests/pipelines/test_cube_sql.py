"""The SQL under sql/: headers, style (jaffle-shop: source CTEs first, `select * from final`, every
output cast), grouping sets within Spark's limit and shared by a cube and its sketch, and the
DuckDB -> Spark translation that lets one definition run on both engines (sqlglot validate_all style)."""
import re

import pytest
import sqlglot
from sqlglot import exp

from pipelines import sketch
from pipelines.models import AUDIT_KEYS, HEADER_KEYS, SQL_DIR, load_models, parse_header, to_spark

MODELS = load_models()
AUDITS = sorted((SQL_DIR / "audits").glob("*.sql"))
ALL_SQL = [m.path for m in MODELS] + AUDITS
UPPER_KEYWORD = re.compile(r"\b(SELECT|FROM|WHERE|GROUP BY|WITH|AS|CAST|AND|OR|JOIN|ON|CASE|WHEN|THEN|END)\b")


def code_lines(text: str) -> list[str]:
    return [re.sub(r"'[^']*'", "''", line.split("--")[0]) for line in text.splitlines()]


def ctes(tree: exp.Expression) -> dict[str, exp.Select]:
    return {c.alias: c.this for c in tree.find(exp.With).expressions}


def grouping_sets(select: exp.Select) -> list[tuple[str, ...]]:
    gs = select.args.get("group") and select.args["group"].find(exp.GroupingSets)

    def columns(s):
        if isinstance(s, exp.Paren):
            s = s.this
        return tuple(c.name for c in (s.expressions if isinstance(s, exp.Tuple) else [s]))
    return [columns(s) for s in gs.expressions] if gs else []


def test_the_build_runs_every_model_after_its_inputs():
    seen = set()
    for m in MODELS:
        assert all(s in seen or s not in {x.name for x in MODELS} for s in m.sources), m.name
        seen.add(m.name)
    assert {m.serve for m in MODELS if m.serve} == {
        "train_health", "train_step_time_sketch", "eval_health", "latency_health", "latency_sketch", "system_health",
        "alert_health", "alert_list", "loss_curve", "audit_trail", "serving_health", "repair_list",
        "repair_health"}


@pytest.mark.parametrize("path", ALL_SQL, ids=lambda p: p.stem)
def test_style(path):
    text = path.read_text()
    header = parse_header(text)
    keys = AUDIT_KEYS if path.parent.name == "audits" else HEADER_KEYS
    assert all(header.get(k) for k in keys), (path.name, header)
    assert not [line for line in code_lines(text) if UPPER_KEYWORD.search(line)], "lowercase SQL"
    assert text.rstrip().endswith("select * from final")
    tree = sqlglot.parse_one(text, read="duckdb")
    steps = ctes(tree)
    assert list(steps)[-1] == "final"
    for e in steps["final"].expressions:  # every output column cast, named
        assert isinstance(e, exp.Alias) and isinstance(e.this, exp.Cast), (path.name, e.sql())


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_source_ctes_come_first_and_read_only_declared_sources(model):
    steps = ctes(sqlglot.parse_one(model.sql, read="duckdb"))
    tables = {t.name for t in sqlglot.parse_one(model.sql, read="duckdb").find_all(exp.Table)} - set(steps)
    assert tables == set(model.sources), model.name
    first = next(iter(steps.values()))
    assert {t.name for t in first.find_all(exp.Table)} <= set(model.sources)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_grouping_sets_fit_spark_and_match_their_sketch(model):
    for select in sqlglot.parse_one(model.sql, read="duckdb").find_all(exp.Select):
        assert len(grouping_sets(select)) <= 64, "Spark 4 refuses more than 64 grouping sets in a query"
    if "_sketch_" not in model.name:
        return
    measures = {"train_step_time_sketch_daily": "train_health_daily", "train_step_time_sketch_window":
                "train_health_window", "latency_sketch_daily": "latency_health_daily",
                "latency_sketch_window": "latency_health_window"}[model.name]
    other = next(m for m in MODELS if m.name == measures)

    def sets(m, drop=()):
        return [tuple(c for c in s if c not in drop) for sel in sqlglot.parse_one(m.sql, read="duckdb").find_all(exp.Select)
                for s in grouping_sets(sel)]

    assert sets(model, drop=("bucket", "step_time_bucket", "latency_bucket")) == sets(other)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_sketch_constants_in_sql_are_those_of_the_sketch_module(model):
    if "when isnan(" not in model.sql or "bounds.lo" not in model.sql:
        return
    code = "\n".join(code_lines(model.sql))
    assert f"least(floor(ln(" in code and f"/ ln({sketch.GROWTH})), {sketch.B_MAX}), {sketch.B_MIN})" in code
    for const in (sketch.NAN, sketch.POS_INF, sketch.NEG_INF, sketch.ZERO, sketch.NEGATIVE_BASE):
        assert f"then {const}" in code or f"else {const} end" in code or f"else {const} - (" in code, const


@pytest.mark.parametrize("path", ALL_SQL, ids=lambda p: p.stem)
def test_every_file_translates_to_spark(path):
    spark = to_spark(path.read_text())  # raises on anything sqlglot cannot express in Spark SQL
    sqlglot.parse_one(spark, read="spark")
    assert "GROUPING_ID" not in spark, "Spark's grouping_id() must name every grouping column; spell the mask out"
    assert "IS_INF" not in spark and "ISFINITE" not in spark, "no such functions in Spark: compare with inf"


# validate_all, sqlglot's own pattern: the constructs the cubes rely on, in DuckDB, and the Spark SQL
# they must become. A sqlglot upgrade that changes one of them fails here, not in a cluster.
TRANSLATIONS = [
    ("count(*) filter (where is_ok)", "COUNT(*) FILTER(WHERE is_ok)"),
    ("min(struct_pack(ts := ts, run_id := r)).run_id", "MIN(STRUCT(ts AS ts, r AS run_id)).run_id"),
    ("cast(ts as timestamptz)", "CAST(ts AS TIMESTAMP)"),
    ("cast(s as varchar)", "CAST(s AS STRING)"),
    ("cast(i as integer)", "CAST(i AS INT)"),
    ("a is not distinct from b", "a IS NOT DISTINCT FROM b"),
    ("cast('Infinity' as double)", "CAST('Infinity' AS DOUBLE)"),
    ("isnan(x) or abs(x) = cast('Infinity' as double)", "ISNAN(x) OR ABS(x) = CAST('Infinity' AS DOUBLE)"),
    ("cast(greatest(least(floor(ln(x) / ln(1.02)), 1400), -1100) as integer)",
     "CAST(GREATEST(LEAST(FLOOR(LN(x) / LN(1.02)), 1400), -1100) AS INT)"),
    ("x / nullif(n, 0)", "x / NULLIF(n, 0)"),
    ("min(mid) filter (where n_cumulative >= 0.95 * n_ranked)",
     "MIN(mid) FILTER(WHERE n_cumulative >= 0.95 * n_ranked)"),
    ("coalesce(nullif(concat_ws(',', case when grouping(a) = 0 then 'a' end), ''), 'total')",
     "COALESCE(NULLIF(CONCAT_WS(',', CASE WHEN GROUPING(a) = 0 THEN 'a' END), ''), 'total')"),
]


@pytest.mark.parametrize("duckdb_sql,spark_sql", TRANSLATIONS)
def test_validate_all(duckdb_sql, spark_sql):
    assert sqlglot.transpile(f"select {duckdb_sql}", read="duckdb", write="spark")[0] == f"SELECT {spark_sql}"


def test_window_order_keeps_duckdb_null_ordering_on_spark():
    # DuckDB sorts nulls last, Spark first: the translation must say so explicitly
    spark = to_spark("select sum(n) over (partition by a order by b rows between unbounded preceding "
                     "and current row) from t")
    assert "ORDER BY b NULLS LAST" in spark


def test_the_repair_funnel_counts_alerts_repairs_and_verdicts(tmp_path):
    """repairs_daily (served as repair_health): per day, model, hardware and rule, the run alerts at
    warning or critical, the repairs, their attempts and final verdicts, from the writers' own rows."""
    import datetime as dt

    from cube_lake import write_repairs
    from pipelines.build import build
    from warehouse.query import connect
    from warehouse.writer import Lake

    want = write_repairs(Lake(str(tmp_path / "lake")))
    build(str(tmp_path / "lake"), str(tmp_path / "s.duckdb"), cubes_root=str(tmp_path / "cubes"))
    con = connect(lake_root=str(tmp_path / "lake"), serving_path=str(tmp_path / "s.duckdb"))
    rows = con.execute("select date, model, hardware, rule, n_alerts, n_repairs, n_attempts, n_healed, n_escalated, "
                       "n_advised, n_open, compute_s, samples, mean_s_to_verdict from repair_health").fetchall()
    got = {r[:4]: r[4:10] for r in rows}
    assert got == want
    by_rule = {(r[0], r[3]): r for r in rows}
    day0, day1 = dt.date(2026, 1, 1), dt.date(2026, 1, 2)
    assert by_rule[(day0, "divergence")][10:] == (0, 22.5, 200, 95.0)  # compute of both attempts, the final's time
    assert by_rule[(day1, "underfitting")][10] == 1  # still running: open
    assert con.execute("select count(*) from repair_list").fetchall() == [(6,)]
