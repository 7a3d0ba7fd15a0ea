"""Keep each chart's ``query_context`` in the bundle equal to what Superset's own frontend builds.

A chart's ``params`` (form data) is what a person edits; the ``query_context`` (the queries that
fetch its data) is what /api/v1/chart/{id}/data runs, and only the frontend's JavaScript
(each plugin's buildQuery) derives one from the other. So it is generated, like a lock file:

    .venv-bi/bin/python -m dashboards.browser --url URL --out DIR      # opens the dashboard
    .venv-bi/bin/python -m dashboards.query_contexts --url URL DIR/report.json

rewrites the ``query_context`` block of every chart YAML with the queries the dashboard sent
(no filter applied, environment ids dropped). tests/dashboards checks the committed blocks still
equal what the frontend sends, so a changed ``params`` without a refresh fails the tests.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import yaml

from dashboards.bundle import ASSETS

# Keys of a captured request that are per-environment or per-request, not part of the chart.
VOLATILE_QUERY_KEYS = ("url_params", "custom_params", "custom_form_data")


def normalize(query_context: dict) -> dict:
    """The part of a frontend-built query context that defines the chart's data."""
    queries = []
    for q in query_context.get("queries", []):
        queries.append({k: v for k, v in q.items() if k not in VOLATILE_QUERY_KEYS})
    return {"queries": queries,
            "result_format": query_context.get("result_format", "json"),
            "result_type": query_context.get("result_type", "full")}


def chart_files(assets: Path = ASSETS) -> dict[str, Path]:
    """Chart YAML files by chart uuid."""
    return {yaml.safe_load(p.read_text())["uuid"]: p for p in sorted((assets / "charts").glob("*.yaml"))}


def write_query_context(path: Path, query_context: dict) -> None:
    """Replace the file's top-level ``query_context`` block, keeping its comments and key order."""
    text = path.read_text()
    block = yaml.safe_dump({"query_context": query_context}, sort_keys=False, width=100)
    pattern = re.compile(r"^query_context:.*?(?=^\S)", re.S | re.M)
    if not pattern.search(text):
        raise ValueError(f"{path}: no top-level query_context key")
    path.write_text(pattern.sub(lambda _: block, text, count=1))


def main(argv: list[str] | None = None) -> int:
    import requests

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", help="report.json written by dashboards.browser")
    p.add_argument("--url", default="http://127.0.0.1:8088", help="the Superset that served the report")
    p.add_argument("--user", default="admin")
    args = p.parse_args(argv)

    s = requests.Session()
    token = s.post(f"{args.url}/api/v1/security/login", json={
        "username": args.user, "password": os.environ["MHW_SUPERSET_PASSWORD"], "provider": "db"}).json()
    s.headers["Authorization"] = f"Bearer {token['access_token']}"
    report = json.loads(Path(args.report).read_text())
    files = chart_files()
    for slice_id, entry in sorted(report["charts"].items()):
        uuid = s.get(f"{args.url}/api/v1/chart/{slice_id}").json()["result"].get("uuid")
        if uuid is None:  # older API answers: look it up in the list
            uuid = next(c["uuid"] for c in s.get(f"{args.url}/api/v1/chart/", params={
                "q": json.dumps({"columns": ["id", "uuid"], "page_size": 100})}).json()["result"]
                if str(c["id"]) == str(slice_id))
        write_query_context(files[uuid], normalize(entry["query_context"]))
        print(f"{files[uuid].relative_to(ASSETS)}: query_context from the frontend")
    return 0


if __name__ == "__main__":
    sys.exit(main())
