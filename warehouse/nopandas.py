"""pyarrow imports pandas on its first conversion of Python values, only to recognise pandas objects
(0.25-0.3 s of CPU: a third of a small ``mhw ingest``, half of ``mhw alerts``); this project hands it
none. Inside ``arrow_without_pandas()``, in a process that has not imported pandas, that import fails
at once and pyarrow goes on without it (it tries again when pandas is asked for by name: ``to_pandas``,
``from_pandas``). The commands that use it (ingest, alerts) never need pandas."""
from __future__ import annotations

import contextlib
import importlib.abc
import sys


class _NoPandas(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("pandas is not imported while this command runs (warehouse/nopandas.py)")
        return None


@contextlib.contextmanager
def arrow_without_pandas():
    if "pandas" in sys.modules:
        yield
        return
    finder = _NoPandas()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
