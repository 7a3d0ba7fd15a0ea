"""The dashboards as code: the YAML asset bundle under dashboards/assets (Superset's import/export
format: databases/, datasets/, charts/, dashboards/, linked by UUID), rendered for this machine.

The committed bundle holds no machine-specific value. Rendering fills in the one thing that is:
the serving DuckDB file's path, taken from warehouse/config.py (conf/mhw.yaml, MHW_SERVING) at
import time, into the database's ``sqlalchemy_uri`` template. Plain Python + PyYAML, so both venvs
use it: .venv-bi to import into Superset, the core venv's tests to check the bundle.
"""
from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

import yaml

ASSETS = Path(__file__).resolve().parent / "assets"
REPO_ROOT = ASSETS.parent.parent
SERVING_PLACEHOLDER = "{serving_path}"


def serving_path() -> str:
    """The serving file, from the warehouse's one config (conf/mhw.yaml, MHW_CONFIG, MHW_SERVING)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from warehouse import config  # imports only PyYAML: fine in .venv-bi too

    return config.load().serving_path


def load(assets: Path = ASSETS) -> dict[str, dict]:
    """Every asset file, by its path inside the bundle (``charts/loss_per_run.yaml``), parsed."""
    return {
        p.relative_to(assets).as_posix(): yaml.safe_load(p.read_text())
        for p in sorted(assets.rglob("*.yaml"))
    }


def render(assets: Path = ASSETS, serving: str | None = None) -> dict[str, dict]:
    """The bundle for this machine: database URIs point at the serving file (read-only, no
    external file access), chart ``query_context`` blocks serialized as Superset expects them."""
    serving = serving or serving_path()
    if "'" in serving or "?" in serving or "#" in serving:
        raise ValueError(f"serving path {serving!r} cannot go into a database URI")
    out: dict[str, dict] = {}
    for name, doc in load(assets).items():
        doc = dict(doc)
        if name.startswith("databases/"):
            uri = doc["sqlalchemy_uri"]
            if SERVING_PLACEHOLDER not in uri:
                raise ValueError(f"{name}: sqlalchemy_uri must contain {SERVING_PLACEHOLDER}")
            doc["sqlalchemy_uri"] = uri.replace(SERVING_PLACEHOLDER, serving)
        if name.startswith("charts/") and isinstance(doc.get("query_context"), dict):
            # Superset stores the query context as JSON with the form data inside; the importer
            # points its datasource at the dataset's id here.
            qc = {"datasource": {"id": 0, "type": "table"}, "force": False, **doc["query_context"],
                  "form_data": doc["params"]}
            doc["query_context"] = json.dumps(qc)
        if name.startswith("dashboards/"):
            _number_charts(doc)
        out[name] = doc
    return out


def _number_charts(dashboard: dict) -> None:
    """Superset's importer maps each layout chart's (exported) ``chartId`` to the id the chart gets
    here; the committed layout has no ids, so give each chart a placeholder one (1, 2, …)."""
    charts = [n for n in dashboard.get("position", {}).values()
              if isinstance(n, dict) and n.get("type") == "CHART"]
    for i, node in enumerate(charts, start=1):
        node["meta"] = {**node["meta"], "chartId": i}


def contents(assets: Path = ASSETS, serving: str | None = None) -> dict[str, str]:
    """The rendered bundle as Superset's importers take it: file name -> YAML text."""
    return {name: yaml.safe_dump(doc, sort_keys=False) for name, doc in render(assets, serving).items()}


def to_zip(assets: Path = ASSETS, serving: str | None = None, root: str = "model_health") -> bytes:
    """The rendered bundle as a ZIP, as /api/v1/assets/import takes it (one top folder)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in contents(assets, serving).items():
            z.writestr(f"{root}/{name}", text)
    return buf.getvalue()


def by_kind(bundle: dict[str, dict], kind: str) -> dict[str, dict]:
    """The assets of one kind (``databases``, ``datasets``, ``charts``, ``dashboards``), by UUID."""
    return {doc["uuid"]: doc for name, doc in bundle.items() if name.startswith(kind + "/")}
