"""How ``mhw`` commands print rows: an aligned table, CSV, or JSON lines. Stdlib only, so a command
that prints rows (``mhw query``, ``mhw alerts``) pays nothing for it at start-up."""
from __future__ import annotations

import csv
import json
import math


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep them visible rather than dropping them
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return v


def write_rows(cols, rows, fmt: str, out, max_rows: int = 200) -> None:
    if fmt == "csv":
        w = csv.writer(out)
        w.writerow(cols)
        w.writerows(rows)
    elif fmt == "json":
        for r in rows:
            out.write(json.dumps({c: _jsonable(v) for c, v in zip(cols, r)}) + "\n")
    else:
        shown = [["" if v is None else str(v) for v in r] for r in rows[:max_rows]]
        widths = [max([len(c)] + [len(r[i]) for r in shown]) for i, c in enumerate(cols)]
        out.write(" | ".join(c.ljust(w) for c, w in zip(cols, widths)) + "\n")
        out.write("-+-".join("-" * w for w in widths) + "\n")
        for r in shown:
            out.write(" | ".join(v.ljust(w) for v, w in zip(r, widths)) + "\n")
        more = f", {len(rows) - max_rows} not shown" if len(rows) > max_rows else ""
        out.write(f"({len(rows)} rows{more})\n")
