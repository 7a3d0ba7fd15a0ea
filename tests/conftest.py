import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


@pytest.fixture
def lake_root(tmp_path, monkeypatch):
    """A fresh lake for one test; MHW_LAKE/MHW_SERVING point at it so CLI calls use it too."""
    root = tmp_path / "lake"
    monkeypatch.setenv("MHW_LAKE", str(root))
    monkeypatch.setenv("MHW_SERVING", str(tmp_path / "serving.duckdb"))
    return str(root)
