"""Open a dashboard the way a person does, in a real headless Chromium (Debian's /usr/bin/chromium,
driven by Playwright), and report what the page showed. Runs in .venv-bi (the core venv's tests and
the bench call it by subprocess and read its JSON report).

    .venv-bi/bin/python -m dashboards.browser --url http://127.0.0.1:8088 --out DIR [--slug model-health]

Logs in through the login form, opens the dashboard, waits until every chart's data request has
answered and no chart is still loading, then writes DIR/dashboard.png (full page) and
DIR/report.json: per chart (slice_id) the request body the frontend built (its query context), the
status and row count of the answer and the time it took; every chart error shown in the page;
console errors; the wall time from navigation until the last chart rendered. ``--watch A,B`` also
reports, per chart, which of those strings (model names) its answer holds; ``--probe-sqllab`` whether
the page offers "Edit dashboard" and what opening SQL Lab shows (a team user or viewer must get no
editor).

Password: MHW_SUPERSET_PASSWORD (user 'admin' unless --user).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

CHROMIUM = os.environ.get("MHW_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]
# What Superset shows instead of a chart when its query or its rendering failed.
ERROR_SELECTORS = [".chart-container .alert-danger", "[data-test='chart-error']",
                   ".ant-alert-error", "[role='alert'].ant-alert-error", ".error-alert"]


# What SQL Lab shows when it opens: its editor.
SQLLAB_EDITOR = ".ace_editor, .ace_content, [data-test='sql-editor-tabs'], #ace-editor"


def log_in(page, url: str, user: str, password: str, out: Path, timeout_s: float) -> None:
    """Through the login form, as a person does. The form can take the keys before its script is
    ready (seen on a loaded machine: Enter did nothing): then fill it in and send it again."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.goto(f"{url}/login/", wait_until="domcontentloaded")
    tries = 3
    for attempt in range(tries):
        page.wait_for_selector("input[name='password'], #password", state="visible", timeout=timeout_s * 1000)
        page.fill("input[name='username'], #username", user)
        page.fill("input[name='password'], #password", password)
        page.keyboard.press("Enter")
        try:
            page.wait_for_url(lambda u: "/login" not in u, timeout=timeout_s * 1000 / tries)
            return
        except PlaywrightTimeout:
            page.screenshot(path=str(out / f"login-{attempt + 1}.png"), full_page=True)
    raise RuntimeError(f"login as {user!r} did not leave the login page ({tries} tries; see {out}/login-*.png)")


def open_dashboard(url: str, slug: str, user: str, password: str, out: Path,
                   timeout_s: float = 120.0, width: int = 1600, height: int = 1400,
                   watch: tuple[str, ...] = (), probe_sqllab: bool = False) -> dict:
    from playwright.sync_api import sync_playwright

    requests: dict[int, dict] = {}  # per slice_id: the chart data request and its answer
    console_errors: list[str] = []
    page_errors: list[str] = []

    def on_request(req):
        if req.method == "POST" and "/api/v1/chart/data" in req.url:
            try:
                body = json.loads(req.post_data or "{}")
            except json.JSONDecodeError:
                return
            sid = (body.get("form_data") or {}).get("slice_id")
            if sid is not None:
                requests[int(sid)] = {"query_context": body, "started": time.monotonic()}

    def on_response(resp):
        req = resp.request
        if req.method == "POST" and "/api/v1/chart/data" in req.url:
            try:
                sid = int((json.loads(req.post_data or "{}").get("form_data") or {}).get("slice_id"))
            except (TypeError, ValueError, json.JSONDecodeError):
                return
            entry = requests.setdefault(sid, {})
            entry["status"] = resp.status
            entry["seconds"] = time.monotonic() - entry.get("started", time.monotonic())
            try:
                body = resp.text()
                entry["watched"] = sorted(w for w in watch if w in body)
                data = json.loads(body)
                entry["rowcounts"] = [r.get("rowcount") for r in data.get("result", [])]
                entry["errors"] = [r.get("error") for r in data.get("result", []) if r.get("error")]
            except Exception as e:  # noqa: BLE001 - an unreadable answer is itself the finding
                entry["errors"] = [f"unreadable response: {e}"]

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.on("request", on_request)
            page.on("response", on_response)

            log_in(page, url, user, password, out, timeout_s)

            t0 = time.monotonic()
            page.goto(f"{url}/superset/dashboard/{slug}/", wait_until="domcontentloaded")
            page.wait_for_selector(".dashboard-component-chart-holder", timeout=timeout_s * 1000)
            n_charts = page.locator(".dashboard-component-chart-holder").count()
            deadline = t0 + timeout_s
            # Every chart holder has asked for its data and got an answer, and no spinner is left.
            while time.monotonic() < deadline:
                answered = sum(1 for r in requests.values() if "status" in r)
                loading = page.locator(".dashboard-component-chart-holder .loading").count()
                if answered >= n_charts and loading == 0:
                    break
                page.wait_for_timeout(200)
            load_s = time.monotonic() - t0
            page.wait_for_timeout(1500)  # let echarts finish its entry animation before the picture
            errors = []
            for sel in ERROR_SELECTORS:
                for el in page.locator(sel).all():
                    errors.append({"selector": sel, "text": el.inner_text()[:500]})
            rendered = page.locator(".dashboard-component-chart-holder canvas, "
                                    ".dashboard-component-chart-holder svg, "
                                    ".dashboard-component-chart-holder table, "
                                    ".dashboard-component-chart-holder .header-line").count()
            page.screenshot(path=str(out / "dashboard.png"), full_page=True)
            title = page.title()
            can_edit = page.get_by_text("Edit dashboard").count() > 0
            sqllab = None
            if probe_sqllab:
                page.goto(f"{url}/sqllab/", wait_until="domcontentloaded")
                until = time.monotonic() + 30  # the editor, or a refusal, whichever shows first
                while time.monotonic() < until and not page.locator(SQLLAB_EDITOR).count() \
                        and "403 Forbidden" not in (page.content() or ""):
                    page.wait_for_timeout(250)
                sqllab = {"url": page.url, "editor": page.locator(SQLLAB_EDITOR).count() > 0,
                          "forbidden": "403 Forbidden" in page.content()}
                page.screenshot(path=str(out / "sqllab.png"), full_page=True)
        finally:
            browser.close()

    report = {
        "title": title, "n_chart_holders": n_charts, "can_edit": can_edit, "sqllab": sqllab, "n_rendered_elements": rendered,
        "load_seconds": load_s, "chart_errors_in_page": errors,
        "console_errors": console_errors, "page_errors": page_errors,
        "charts": {str(k): {kk: vv for kk, vv in v.items() if kk != "started"} for k, v in requests.items()},
        "screenshot": str(out / "dashboard.png"),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8088")
    p.add_argument("--slug", default="model-health")
    p.add_argument("--user", default="admin")
    p.add_argument("--out", required=True, help="folder for dashboard.png and report.json")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--watch", default="", help="comma-separated strings to look for in each chart's answer")
    p.add_argument("--probe-sqllab", action="store_true", help="also open SQL Lab and report what it shows")
    args = p.parse_args(argv)
    password = os.environ.get("MHW_SUPERSET_PASSWORD")
    if not password:
        print("set MHW_SUPERSET_PASSWORD", file=sys.stderr)
        return 2
    report = open_dashboard(args.url, args.slug, args.user, password, Path(args.out), args.timeout,
                            watch=tuple(w for w in args.watch.split(",") if w), probe_sqllab=args.probe_sqllab)
    print(json.dumps({k: report[k] for k in ("title", "n_chart_holders", "load_seconds",
                                             "chart_errors_in_page")}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
