"""``mhw scrape``: land an inference server's Prometheus /metrics in the lake (``serving_scrapes``).

    mhw scrape http://127.0.0.1:8000/metrics --model llama-8b --hardware h100-80gb-x1 --precision bf16
    mhw scrape http://10.0.0.5:8000/metrics --hardware a100-40gb-x1     # model from the model_name label
    mhw scrape saved_metrics.txt --hardware cpu --at 2026-01-05T10:00:00Z  # a saved exposition

Counters and histogram buckets are cumulative since the server started; the cube wants what happened
in each interval between two scrapes. Every row therefore carries, beside its value, the same series'
value in the target's previous landed scrape (``prev_value``, ``prev_scraped_at``) and when the
series started (``created_at``: its ``_created`` sample, else the process start), and the delta is a
row-local computation in SQL (sql/cubes/serving_scrape_base.sql): the value minus the previous one,
or the value itself after a restart (the value fell, or the series started after the previous
scrape). Why this, rather than a window over consecutive scrapes in the cube: the cube is
recomputed one (model, hardware, date) partition at a time, and the first scrape of a day would find
its predecessor in another partition.

The previous scrape is per target state, ``<lake>/_scrape/<target id>.json`` (the series' last
values), read and rewritten in the same lake transaction (warehouse/commit.py) that writes the
scrape's rows: both commit or neither, and scrapes of one target take turns. So:

- a failed scrape (server down, timeout, garbage) lands an ``up = 0`` row and leaves the state alone:
  the next successful scrape's deltas span the gap, and nothing is lost;
- a retried or repeated scrape is a new scrape (a new time): its deltas start where the landed one
  ended, so nothing is counted twice; a scrape older than the target's last landed one (a slow
  retry overtaken by a newer scrape) is refused, its counts being inside the newer one's;
- a restart resets the server's counters: the first scrape after it counts from zero. What the old
  process served after its last scrape and before it stopped is unknowable from /metrics (as in
  Prometheus); per-request logs (``serving_requests``) have it.

A target's first scrape counts everything since its series started when the server says when that
was (prometheus_client's ``_created``, vLLM's, ``process_start_time_seconds``), else it is a baseline
only. Each scrape is one file keyed by target and time, so a write retried with the same key replaces
its own file.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pyarrow as pa

from warehouse import audit
from warehouse.importers import SourceError
from warehouse.importers.prometheus import Scrape, parse
from warehouse.schemas import TABLES
from warehouse.writer import Lake, PartitionError, check_slug, slugify

STATE_DIR = "_scrape"  # under the lake root; names starting with _ are not lake data
MAX_BYTES = 32 << 20  # a /metrics body over this is refused unread (vLLM's is ~50 KB)
UTC = dt.timezone.utc


class ScrapeError(RuntimeError):
    """The target could not be scraped (unreachable, HTTP error, not Prometheus text)."""


@dataclass
class ScrapeResult:
    target: str
    scraped_at: dt.datetime
    up: bool
    server: str | None = None
    rows: int = 0
    files: list[str] = field(default_factory=list)
    error: str | None = None
    stale: bool = False  # older than the target's last landed scrape: not landed
    seconds: dict[str, float] = field(default_factory=dict)  # fetch, parse, land

    def as_dict(self) -> dict:
        return {"target": self.target, "scraped_at": self.scraped_at.isoformat(), "up": self.up,
                "server": self.server, "rows": self.rows, "error": self.error, "stale": self.stale,
                "seconds": {k: round(v, 6) for k, v in self.seconds.items()}}


def target_id(target: str) -> str:
    """A file-safe id of a target URL: readable host and port, and a hash of the whole URL."""
    parts = urlsplit(target)
    head = slugify(parts.netloc or parts.path or "target", 48)
    return f"{head}-{hashlib.sha1(target.encode()).hexdigest()[:12]}"


def fetch(url: str, timeout_s: float = 5.0) -> str:
    """The body of GET ``url`` as text; ScrapeError on any failure."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise ScrapeError(f"{url}: not an http(s) URL")
    req = urllib.request.Request(url, headers={"Accept": "text/plain;version=0.0.4"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            body = r.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as e:
        raise ScrapeError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise ScrapeError(f"{url}: unreachable: {getattr(e, 'reason', e)}") from None
    if len(body) > MAX_BYTES:
        raise ScrapeError(f"{url}: response over {MAX_BYTES >> 20} MiB: not a /metrics page")
    return body.decode("utf-8", errors="replace")


def _key(series: tuple) -> str:
    return json.dumps(list(series), allow_nan=True)


class _State:
    """The target's last landed scrape: its time and every series' value."""

    def __init__(self, lake: Lake, target: str):
        self.lake, self.target = lake, target
        self.path = f"{lake.root}/{STATE_DIR}/{target_id(target)}.json"

    def read(self) -> tuple[dt.datetime | None, dict[str, float]]:
        try:
            with self.lake.fs.open_input_stream(self.path) as f:
                doc = json.loads(f.read().decode())
        except (FileNotFoundError, OSError):
            return None, {}
        return dt.datetime.fromisoformat(doc["scraped_at"]), doc["values"]

    def write(self, scraped_at: dt.datetime, values: dict[str, float]) -> None:
        doc = {"target": self.target, "scraped_at": scraped_at.isoformat(), "values": values}
        self.lake.put_bytes(self.path, json.dumps(doc, allow_nan=True).encode())


def _ts(epoch: float | None) -> dt.datetime | None:
    if epoch is None or not math.isfinite(epoch) or epoch <= 0:
        return None
    return dt.datetime.fromtimestamp(epoch, UTC)


def _model_slug(given: str | None, labeled: str | None, where: str) -> str:
    name = given or labeled
    if not name:
        raise SourceError(f"{where}: the scrape does not name its model (no model_name/model label); pass --model")
    try:
        return slugify(name)
    except PartitionError as e:
        raise SourceError(f"{where}: model {e}") from None


def rows_of(scrape: Scrape, target: str, scraped_at: dt.datetime, hardware: str, precision: str | None,
            model: str | None, prev_at: dt.datetime | None, prev: dict[str, float]) -> tuple[list[dict], dict]:
    """The serving_scrapes rows of one scrape, each with its series' previous value; and the values
    to keep as the target's state."""
    started = _ts(scrape.process_start)
    rows, values, models = [], {}, set()
    labeled = {s.model for s in scrape.samples if s.model}
    # a series without a model label (http_requests_total) is the server's one model's, when it has one
    default = model or (labeled.pop() if len(labeled) == 1 else None)
    for s in scrape.samples:
        m = _model_slug(model, s.model or default, target)
        models.add(m)
        key = _key((m, *s.series[1:]))
        values[key] = s.value
        rows.append({"target": target, "scraped_at": scraped_at, "precision": precision, "server": scrape.server,
                     "metric": s.metric, "status": s.status, "status_class": s.status_class, "le": s.le,
                     "labels": s.labels, "value": s.value, "created_at": _ts(s.created_at) or started,
                     "prev_scraped_at": prev_at, "prev_value": prev.get(key), "source_metric": s.source_metric,
                     "model": m, "hardware": hardware})
    if default:
        models.add(_model_slug(default, None, target))
    for m in sorted(models):  # one `up` row per model served: the interval the scrape closes
        key = _key((m, "up", None, None, ""))
        values[key] = 1.0
        rows.append({"target": target, "scraped_at": scraped_at, "precision": precision, "server": scrape.server,
                     "metric": "up", "labels": "", "value": 1.0, "created_at": started, "prev_scraped_at": prev_at,
                     "prev_value": prev.get(key), "source_metric": "up", "model": m, "hardware": hardware})
    return rows, values


def land(lake: Lake, target: str, scrape: Scrape | None, scraped_at: dt.datetime, hardware: str,
         precision: str | None = None, model: str | None = None, error: str | None = None) -> ScrapeResult:
    """Write one scrape (or, with ``scrape`` None, a failed one: an ``up = 0`` row) and move the
    target's state on, in one lake transaction."""
    check_slug("hardware", hardware)
    result = ScrapeResult(target, scraped_at, up=scrape is not None, server=scrape.server if scrape else None,
                          error=error)
    key = f"scrape-{target_id(target)}-{scraped_at.strftime('%Y%m%dT%H%M%S%f')}"
    t = time.perf_counter()
    with lake.transaction():
        state = _State(lake, target)
        prev_at, prev = state.read()
        if prev_at is not None and scraped_at <= prev_at:
            result.stale = True
            result.error = (f"scraped at {scraped_at.isoformat()}, not after the target's last landed scrape "
                            f"({prev_at.isoformat()}): not landed, its counts are in that one")
            return result
        if scrape is None:
            if not model:  # a failed scrape names no model: it can only be placed by --model
                return result
            rows = [{"target": target, "scraped_at": scraped_at, "precision": precision, "metric": "up",
                     "labels": "", "value": 0.0, "prev_scraped_at": prev_at, "source_metric": "up",
                     "model": _model_slug(model, None, target), "hardware": hardware}]
            values = None
        else:
            rows, values = rows_of(scrape, target, scraped_at, hardware, precision, model, prev_at, prev)
        table = pa.Table.from_pylist(rows, schema=TABLES["serving_scrapes"].schema.remove(
            TABLES["serving_scrapes"].schema.get_field_index("date")))
        res = lake.write("serving_scrapes", table, key)
        if values is not None:
            state.write(scraped_at, values)
    result.rows, result.files = res.rows, res.files
    result.seconds["land"] = time.perf_counter() - t
    return result


@audit.audited("scrape", counts=lambda r: {"rows_in": r.rows, "up": bool(r.up)})
def scrape(target: str, hardware: str, precision: str | None = None, model: str | None = None,
           lake_root: str | None = None, timeout_s: float = 5.0, text: str | None = None,
           at: dt.datetime | None = None) -> ScrapeResult:
    """Scrape ``target`` (or take ``text``, a saved exposition, as its scrape) and land it."""
    if lake_root is None:
        from warehouse import config

        lake_root = config.load().lake_root
    lake = Lake(lake_root)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    error, parsed = None, None
    try:
        body = text if text is not None else fetch(target, timeout_s)
        seconds["fetch"] = time.perf_counter() - t
        scraped_at = at or dt.datetime.now(UTC)
        t = time.perf_counter()
        parsed = parse(body, target)
        seconds["parse"] = time.perf_counter() - t
    except (ScrapeError, SourceError) as e:
        scraped_at = at or dt.datetime.now(UTC)
        error = str(e)
    result = land(lake, target, parsed, scraped_at, hardware, precision, model, error)
    result.seconds = {**seconds, **result.seconds}
    return result


@audit.audited("scrape", counts=lambda out: {"targets": len(out)})
def scrape_targets(targets: list[dict], lake_root: str | None = None, timeout_s: float = 5.0) -> list[dict]:
    """Scrape each configured target (``{url, hardware, precision, model}``); one failing target
    never stops the others (an unreachable one lands up = 0; one whose scrape cannot be placed, no
    model named anywhere, is reported). Returns each one's result as a dict."""
    out = []
    for t in targets:
        try:
            out.append(scrape(t["url"], t["hardware"], t.get("precision"), t.get("model"), lake_root,
                              float(t.get("timeout_s", timeout_s))).as_dict())
        except SourceError as e:
            out.append({"target": t["url"], "up": None, "rows": 0, "error": str(e)})
    return out


def configured_targets(settings=None) -> tuple[list[dict], float]:
    """The targets and timeout of conf/mhw.yaml's ``scrape`` section, checked."""
    if settings is None:
        from warehouse import config

        settings = config.load()
    section = settings.section("scrape")
    targets = []
    for i, t in enumerate(section.get("targets") or []):
        where = f"scrape.targets[{i}]"
        if not isinstance(t, dict) or not t.get("url") or not t.get("hardware"):
            raise ValueError(f"{where}: needs url and hardware (and model, precision), got {t!r}")
        targets.append({k: t.get(k) for k in ("url", "hardware", "precision", "model", "timeout_s") if t.get(k)})
    return targets, float(section.get("timeout_s", 5))


def _at(value: str) -> dt.datetime:
    d = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="+", metavar="URL",
                   help="/metrics URL of a vLLM, TGI or Triton server (or mhw serve); a file: a saved exposition")
    p.add_argument("--model", help="model name (default: the model_name/model label of each series)")
    p.add_argument("--hardware", required=True, help="hardware fingerprint, e.g. h100-80gb-x1")
    p.add_argument("--precision", help="fp32 | bf16 | fp16 | int8 | fp8")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each target")
    p.add_argument("--at", type=_at, help="a saved exposition's scrape time (default: now)")
    p.add_argument("--lake", help="lake root (default from config)")
    p.add_argument("--format", choices=("table", "json"), default="table")


def run(args: argparse.Namespace) -> int:
    try:
        hardware = slugify(args.hardware)
    except PartitionError as e:
        print(f"mhw scrape: --hardware {e}", file=sys.stderr)
        return 2
    failed = 0
    for target in args.targets:
        text, name = None, target
        if "://" not in target:
            if not os.path.isfile(target):
                print(f"mhw scrape: {target}: not a URL and no such file", file=sys.stderr)
                failed += 1
                continue
            with open(target, "rb") as f:
                text = f.read(MAX_BYTES).decode("utf-8", errors="replace")
            name = f"file://{os.path.abspath(target)}"
        try:
            r = scrape(name, hardware, args.precision, args.model, args.lake, args.timeout, text, args.at)
        except SourceError as e:
            print(f"mhw scrape: {e}", file=sys.stderr)
            failed += 1
            continue
        if args.format == "json":
            print(json.dumps(r.as_dict()))
        else:
            took = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in r.seconds.items())
            state = "up" if r.up else "DOWN"
            print(f"{r.target}: {state} ({r.server or '-'}), {r.rows} rows landed ({took})"
                  + (f"; {r.error}" if r.error else ""))
        failed += (not r.up) or r.stale
    return 1 if failed else 0
