"""Values pasted into SQL text. Every path or name that goes into a DuckDB statement as a string goes
through ``literal``: a lake or serving path with a ``'`` in it broke ``mhw query`` and ``mhw audit``
when each caller wrote ``f"'{path}'"``. Stdlib only (.venv-bi imports it too)."""
from __future__ import annotations


def literal(value: str) -> str:
    """A SQL string literal: ``it's`` -> ``'it''s'`` (DuckDB strings have no backslash escapes)."""
    return "'" + str(value).replace("'", "''") + "'"
