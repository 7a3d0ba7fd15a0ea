"""The two engines a build can run on. Both take the same DuckDB SQL text (Spark translates it with
sqlglot), the same inputs (Parquet files or small Arrow tables) and hand back Arrow tables; nothing
else differs between them.

    engine.register_files(name, files, schema, partition_cols)  # a view over Parquet files
    engine.register_arrow(name, table)                           # a small table (sketch bounds)
    engine.register_view(name, sql)                              # a view over the others
    engine.materialize(name, sql)                                # computed once, read by many queries
    engine.query(sql) -> pyarrow.Table                           # DuckDB SQL
    engine.session() -> engine                                   # own temp views, shared resources
"""
from __future__ import annotations

import pyarrow as pa

ENGINES = ("duckdb", "spark")


def open_engine(kind: str = "duckdb", master: str | None = None, conf: dict[str, str] | None = None,
                filesystem=None):
    if kind == "duckdb":
        from pipelines.engines.duckdb_engine import DuckDBEngine
        return DuckDBEngine(filesystem=filesystem)
    if kind == "spark":
        from pipelines.engines.spark_engine import SparkEngine
        return SparkEngine(master=master, conf=conf)
    raise ValueError(f"unknown engine {kind!r}; choose one of {ENGINES}")


def normalize(table: pa.Table) -> pa.Table:
    """One Arrow form for both engines' results: plain strings, UTC timestamps, nullable fields."""
    fields = []
    for f in table.schema:
        t = f.type
        if pa.types.is_large_string(t) or pa.types.is_string_view(t):
            t = pa.string()
        elif pa.types.is_timestamp(t):
            t = pa.timestamp("us", tz="UTC") if t.tz else pa.timestamp("us")
        elif pa.types.is_decimal(t):
            t = pa.float64()
        fields.append(pa.field(f.name, t, nullable=True))
    schema = pa.schema(fields)
    if schema == table.schema:
        return table
    return table.cast(schema)
