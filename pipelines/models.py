"""The SQL models under sql/: each file is one model, its header says what it reads, how it is
partitioned and where it is served; the build runs them in dependency order.

A header is the leading ``-- key: value`` comment lines of a file (sqlmesh-style, before the first
SELECT); a line that does not start a known key continues the previous one. The SQL below it is
DuckDB SQL, lowercase, ``select * from final`` last. Spark runs the same text translated by sqlglot.
"""
from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import sqlglot

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
HEADER_KEYS = ("model", "purpose", "grain", "time column", "partitions", "sources", "serve", "audits")
AUDIT_KEYS = ("audit", "purpose", "grain", "sources", "tolerance")  # sql/audits/*.sql


@dataclass(frozen=True)
class Model:
    name: str
    path: Path
    sql: str
    header: dict[str, str]
    partitions: tuple[str, ...]  # output partition columns; () = one unpartitioned file
    sources: tuple[str, ...]  # lake tables, other models, or sketch_bounds
    serve: str | None  # serving table it lands in (models sharing one are unioned), None if not served

    @property
    def stored_by(self) -> tuple[str, ...]:
        """The partition columns of the output's files: one file per date, whatever finer grain a
        model is recomputed at (a file per lake partition would be thousands of tiny files)."""
        return ("date",) if "date" in self.partitions else self.partitions

    @functools.cached_property
    def spark_sql(self) -> str:
        return to_spark(self.sql)


def to_spark(sql: str) -> str:
    """The mechanical DuckDB -> Spark translation: the only place Spark SQL comes from."""
    return sqlglot.transpile(sql, read="duckdb", write="spark",
                             unsupported_level=sqlglot.ErrorLevel.RAISE)[0]


def parse_header(text: str, keys=(*HEADER_KEYS, *AUDIT_KEYS)) -> dict[str, str]:
    """The leading ``-- key: value`` lines of a SQL file (sql/cubes, sql/audits, sql/diagnostics). A
    ``--`` line that starts no known key continues the last; a blank ``--`` line ends the keys (prose
    follows)."""
    key_line = re.compile(r"^--\s*(" + "|".join(re.escape(k) for k in keys) + r")\s*:\s*(.*)$")
    header: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        m = key_line.match(line)
        if m:
            key = m.group(1)
            header[key] = m.group(2).strip()
        elif not line.strip("- ").strip():
            key = None
        elif key is not None:
            header[key] += " " + line.lstrip("-").strip()
    return header


def _names(value: str) -> tuple[str, ...]:
    value = value.split("(")[0]  # "model, hardware, date (one file per lake partition)"
    if value.strip().lower() in ("", "none", "-"):
        return ()
    return tuple(v.strip() for v in value.split(",") if v.strip())


def load_model(path: Path) -> Model:
    text = path.read_text()
    header = parse_header(text)
    missing = [k for k in HEADER_KEYS if k not in header]
    if missing:
        raise ValueError(f"{path}: header lacks {missing}")
    if header["model"] != path.stem:
        raise ValueError(f"{path}: header names model {header['model']!r}, file is {path.stem!r}")
    serve = header["serve"].split("(")[0].strip()
    return Model(
        name=header["model"], path=path, sql=text, header=header,
        partitions=_names(header["partitions"]), sources=_names(header["sources"]),
        serve=None if serve.lower() in ("", "none", "no", "-") else serve,
    )


def load_models(sql_dir: Path = SQL_DIR) -> list[Model]:
    """Every model under sql/cubes, in an order where each comes after the models it reads."""
    models = {m.name: m for m in (load_model(p) for p in sorted((sql_dir / "cubes").glob("*.sql")))}
    ordered: list[Model] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise ValueError(f"sql models form a cycle: {' -> '.join(chain + (name,))}")
        state[name] = "visiting"
        for s in models[name].sources:
            if s in models:
                visit(s, chain + (name,))
        state[name] = "done"
        ordered.append(models[name])

    for name in models:
        visit(name, ())
    return ordered


def definition_hash(models: list[Model], extra: str = "") -> str:
    """Changes whenever any model's SQL (or the sketch's bounds) changes: then a build is full."""
    h = hashlib.sha256(extra.encode())
    for m in sorted(models, key=lambda m: m.name):
        h.update(m.name.encode() + b"\0" + m.sql.encode() + b"\0")
    return h.hexdigest()[:16]
