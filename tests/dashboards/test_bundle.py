"""The dashboards' YAML bundle, checked without Superset: linked by UUID, no environment ids or
generated colour maps, metrics defined once on the datasets, every dataset reading a served cube,
the database read-only with no file access, and no machine's path committed."""
from __future__ import annotations

import json
import re
from pathlib import Path

import sqlglot
import yaml
import sqlglot.expressions as exp

from dashboards import bundle
from pipelines.models import load_models

REPO = Path(__file__).resolve().parents[2]
ASSETS = bundle.load()
DATABASES = bundle.by_kind(ASSETS, "databases")
DATASETS = bundle.by_kind(ASSETS, "datasets")
CHARTS = bundle.by_kind(ASSETS, "charts")
DASHBOARDS = bundle.by_kind(ASSETS, "dashboards")
# What `mhw build` serves (sql/cubes headers) plus the sketch's bucket table and the alerts table.
SERVED = {m.serve for m in load_models() if m.serve} | {"sketch_bounds", "alerts"}
# Keys that carry ids of one Superset's metadata DB: never committed.
ENV_KEYS = {"chartId", "slice_id", "datasource", "datasetId", "dashboards", "chartsInScope", "id"}


def walk(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield path + (k,), k, v
            yield from walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, path + (i,))


def test_bundle_is_an_assets_bundle():
    assert ASSETS["metadata.yaml"]["type"] == "assets"
    assert DATABASES and DATASETS and CHARTS
    assert sorted(d["slug"] for d in DASHBOARDS.values()) == ["audit-trail", "model-health"]


def test_uuids_are_unique_and_links_resolve():
    uuids = [d["uuid"] for n, d in ASSETS.items() if n != "metadata.yaml"]
    assert len(uuids) == len(set(uuids))
    for ds in DATASETS.values():
        assert ds["database_uuid"] in DATABASES, ds["table_name"]
    for ch in CHARTS.values():
        assert ch["dataset_uuid"] in DATASETS, ch["slice_name"]
    on_dashboard = [n["meta"]["uuid"] for dash in DASHBOARDS.values() for n in dash["position"].values()
                    if isinstance(n, dict) and n.get("type") == "CHART"]
    assert sorted(on_dashboard) == sorted(CHARTS), "every chart once on one dashboard, nothing else"
    for dash in DASHBOARDS.values():
        for f in dash["metadata"]["native_filter_configuration"]:
            for t in f["targets"]:
                assert not t or t["datasetUuid"] in DATASETS, f["name"]


class _UniqueKeys(yaml.SafeLoader):
    """A loader that refuses a key twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        twice = sorted({k for k in keys if keys.count(k) > 1}, key=str)
        assert not twice, f"{node.start_mark}: keys given twice: {twice}"
        return super().construct_mapping(node, deep)


def test_dashboard_layouts_are_one_tree_with_no_id_given_twice():
    """Two branches each adding a ``ROW-7`` merge cleanly as text and lose one row's charts."""
    for path in sorted((REPO / "dashboards" / "assets" / "dashboards").glob("*.yaml")):
        position = yaml.load(path.read_text(), Loader=_UniqueKeys)["position"]
        seen = []
        for key, node in position.items():
            if not isinstance(node, dict):
                continue
            assert node["id"] == key, (path.name, key)
            for child in node.get("children", []):
                assert child in position, (path.name, key, child)
                assert position[child]["parents"][-1] == key, (path.name, child, "names another parent")
                seen.append(child)
        assert len(seen) == len(set(seen)), (path.name, "a node placed twice")


def test_every_dataset_but_the_audit_trail_has_a_model_column():
    """Row-level security filters each team on ``model`` (dashboards/provision.py): a dataset
    without one is admin-only, and only the audit trail may be one."""
    no_model = sorted(ds["table_name"] for ds in DATASETS.values()
                      if "model" not in {c["column_name"] for c in ds["columns"]})
    assert no_model == ["audit_trail"]


def test_no_environment_ids_or_generated_colour_maps():
    for name, doc in ASSETS.items():
        for path, key, value in walk(doc):
            if name.startswith("dashboards/") and path[:1] == ("position",) and key == "id":
                continue  # layout node ids (CHART-x, ROW-1) are names, not database ids
            assert key not in ENV_KEYS or key == "id" and not isinstance(value, int), (name, path)
            if key in ("label_colors", "shared_label_colors", "map_label_colors", "color_scheme_domain"):
                assert not value, (name, path, "generated colour map")


def test_no_machine_path_is_committed():
    for p in bundle.ASSETS.rglob("*.yaml"):
        text = p.read_text()
        assert not re.search(r"(^|[\s'\"=])/(work|home|root|tmp|mnt|Users|var)/", text), p


def test_database_is_read_only_without_file_access():
    (db,) = DATABASES.values()
    uri = db["sqlalchemy_uri"]
    assert uri.startswith("duckdb:///" + bundle.SERVING_PLACEHOLDER + "?")
    for setting in ("access_mode=read_only", "enable_external_access=false", "lock_configuration=true"):
        assert setting in uri
    assert db["allow_dml"] is False and db["allow_csv_upload"] is False
    assert db["allow_ctas"] is False and db["allow_cvas"] is False


def test_rendering_fills_the_serving_path_from_config(monkeypatch, tmp_path):
    serving = tmp_path / "serving.duckdb"
    monkeypatch.setenv("MHW_SERVING", str(serving))
    rendered = bundle.render()
    (db,) = bundle.by_kind(rendered, "databases").values()
    assert db["sqlalchemy_uri"].startswith(f"duckdb:///{serving}?access_mode=read_only")
    for ch in bundle.by_kind(rendered, "charts").values():
        qc = json.loads(ch["query_context"])
        assert qc["form_data"] == ch["params"] and qc["queries"]


def test_metrics_are_defined_once_on_the_datasets():
    for ds in DATASETS.values():
        names = [m["metric_name"] for m in ds["metrics"]]
        assert len(names) == len(set(names)), ds["table_name"]
    for ch in CHARTS.values():
        p = ch["params"]
        ds_metrics = {m["metric_name"] for m in DATASETS[ch["dataset_uuid"]]["metrics"]}
        used = [p[k] for k in ("metric", "x", "y", "size", "timeseries_limit_metric",
                               "series_limit_metric") if k in p]
        used += p.get("metrics", [])
        if p.get("query_mode") == "raw":  # a list of rows (the alerts table): columns, no metrics
            assert p["all_columns"] and not used, ch["slice_name"]
            continue
        assert used, ch["slice_name"]
        for m in used:
            assert isinstance(m, str) and m in ds_metrics, (ch["slice_name"], m, "use a dataset metric")


def test_every_dataset_reads_a_served_cube():
    for ds in DATASETS.values():
        if ds["sql"]:
            tree = sqlglot.parse_one(ds["sql"], read="duckdb")
            ctes = {c.alias for c in tree.find_all(exp.CTE)}
            tables = {t.name for t in tree.find_all(exp.Table)} - ctes
        else:
            tables = {ds["table_name"]}
        assert tables and tables <= SERVED, (ds["table_name"], tables - SERVED)


def test_every_chart_has_a_query_context():
    for ch in CHARTS.values():
        assert ch["query_context"] and ch["query_context"]["queries"], (
            ch["slice_name"], "run dashboards.query_contexts (see its docstring)")


def test_bi_venv_duckdb_reads_what_the_core_venv_writes():
    """The serving file is written by the core venv's duckdb and read by .venv-bi's: same pin."""
    def pin(lock):
        return re.search(r"^duckdb==(\S+)", (REPO / "requirements" / lock).read_text(), re.M).group(1)
    assert pin("bi.lock") == pin("core.lock")
