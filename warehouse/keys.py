"""What names a file in the lake: slugs (partition values and file keys) and the block keys of
buffered writers. Kept apart from the writer (which needs pyarrow) so that a process that only names
things, such as the telemetry client posting to a collector, imports nothing heavy.

- A partition value or file key is a slug: it can never name a path outside its partition.
- A buffered writer's rows belong to numbered blocks; a block's file key is ``<prefix>-b<block>``
  and a row's block is ``step // flush_rows`` (or its hour, for tables without a step). A run
  resumed from a checkpoint logs its steps again into the same blocks, so it rewrites them instead
  of adding rows. The lake writer and the collector's client compute blocks here, the same way.
"""
from __future__ import annotations

import hashlib
import re

from warehouse.schemas import SLUG_CHARS, TABLES

SLUG = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._+-]{{0,{SLUG_CHARS - 1}}}$")
# A free-form name longer than a slug keeps its head and a hash of the whole name, so two long names
# that share their first characters stay two names (truncating them made them one).
NAME_HASH_HEX = 16


class PartitionError(ValueError):
    """A partition value or key that is not a safe slug (e.g. ``../../etc`` or ``a/b``)."""


def _shown(value) -> str:
    """``value`` for an error message: a long string is cut, never repeated whole."""
    return repr(value[:60] + "...") if isinstance(value, str) and len(value) > 60 else repr(value)


def check_slug(what: str, value) -> str:
    if isinstance(value, str) and SLUG.match(value):
        return value
    if isinstance(value, str) and len(value) > SLUG_CHARS:
        raise PartitionError(f"{what}={_shown(value)} is too long: {len(value):,} characters, at most {SLUG_CHARS}")
    raise PartitionError(
        f"{what}={_shown(value)} is not allowed: use 1-{SLUG_CHARS} letters, digits and . _ + -, starting with a "
        f"letter or digit (no '/', '=', spaces or '..' paths)"
    )


def slugify(value: str, limit: int = SLUG_CHARS) -> str:
    """Turn a free-form name (``org/model name``) into a partition-safe slug (``org--model-name``).
    A slug over ``limit`` keeps its first characters and a visible hash of all of it (``<111
    chars>-<16 hex>``): distinct names stay distinct. A name with no letters or digits (``..``, ``/``)
    is an error, never a made-up name. A smaller ``limit`` leaves room for what a caller appends."""
    s = re.sub(r"[^A-Za-z0-9._+-]+", "-", value.replace("/", "--")).strip("-._+")
    if not s:
        raise PartitionError(f"{_shown(value)} has no letters or digits to make a name of")
    if len(s) > min(limit, SLUG_CHARS):
        digest = hashlib.sha1(s.encode()).hexdigest()[:NAME_HASH_HEX]
        s = f"{s[:min(limit, SLUG_CHARS) - NAME_HASH_HEX - 1]}-{digest}"
    return check_slug("name", s)


def block_key(prefix: str, block: int) -> str:
    """The file key of block ``block`` of a buffered writer's ``prefix``."""
    return f"{prefix}-b{block:09d}"


def block_of(table: str, row: dict, flush_rows: int) -> int:
    """The block a row belongs to: its step's, else the hour of its time column."""
    if row.get("step") is not None:
        return int(row["step"]) // flush_rows
    ts = row.get(TABLES[table].time_column)
    return int(ts.timestamp() // 3600) if ts is not None else 0
