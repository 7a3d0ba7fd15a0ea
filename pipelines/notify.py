"""Notifiers for new alerts: a log line each, an HTTP webhook (JSON POST), or any class named in
config. ``mhw diagnose`` hands them the alerts not notified yet; an alert is marked notified only when
every notifier took it, so a failed webhook is retried on the next run and a delivered one never
repeats.

    notify:
      - {type: log, min_severity: info}
      - {type: webhook, url: "${MHW_ALERT_WEBHOOK}", min_severity: warning, timeout_s: 5}
      - {type: "mypackage.pager:PagerNotifier", min_severity: critical, any_other_key: …}

A notifier is any object with ``send(alerts: list[dict]) -> None`` that raises when delivery failed.
"""
from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
import math
import os
import re
from typing import Protocol

SEVERITIES = ("info", "warning", "critical")
_LOG_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.CRITICAL}
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
log = logging.getLogger("mhw.alerts")


class Notifier(Protocol):
    min_severity: str

    def send(self, alerts: list[dict]) -> None: ...


def rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else 0


def jsonable(value):
    """JSON has no NaN/inf and no timestamps: keep both visible as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return value


def alert_json(alert: dict) -> dict:
    return {k: jsonable(v) for k, v in alert.items()}


class LogNotifier:
    """One line per alert on the ``mhw.alerts`` logger, at the alert's severity."""

    def __init__(self, min_severity: str = "info", logger: str = "mhw.alerts"):
        self.min_severity = min_severity
        self.log = logging.getLogger(logger)

    def send(self, alerts: list[dict]) -> None:
        for a in alerts:
            where = "/".join(str(x) for x in (a.get("model"), a.get("hardware"), a.get("precision")) if x)
            subject = a.get("run_id") or where
            self.log.log(_LOG_LEVELS.get(a.get("severity"), logging.WARNING),
                         "[%s] %s %s: %s | action: %s (alert %s)", a.get("severity"), a.get("rule"), subject,
                         a.get("message"), a.get("action"), a.get("alert_id"))


class WebhookNotifier:
    """POST ``{"alerts": [...], "summary": {...}}`` as JSON to ``url``; an HTTP error or a timeout
    raises, so the alerts stay pending and are retried on the next run."""

    def __init__(self, url: str, min_severity: str = "warning", timeout_s: float = 5.0,
                 headers: dict[str, str] | None = None):
        if not re.match(r"^https?://", url):
            raise ValueError(f"webhook url must start with http:// or https://, got {url!r}")
        self.url, self.min_severity, self.timeout_s = url, min_severity, float(timeout_s)
        self.headers = {"Content-Type": "application/json", "User-Agent": "mhw-diagnose",
                        **{str(k): str(v) for k, v in (headers or {}).items()}}

    def send(self, alerts: list[dict]) -> None:
        import urllib.request  # here, not at the top: `mhw alerts` imports this module (~30 ms of start-up)

        by_severity: dict[str, int] = {}
        for a in alerts:
            by_severity[a.get("severity")] = by_severity.get(a.get("severity"), 0) + 1
        body = json.dumps({"alerts": [alert_json(a) for a in alerts],
                           "summary": {"n_alerts": len(alerts), "by_severity": by_severity}}).encode()
        req = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # raises on 4xx/5xx
            resp.read()


def expand_env(value):
    """``${VAR}`` in strings (recursively in lists and dicts) from the environment; unset is empty."""
    if isinstance(value, str):
        return _ENV.sub(lambda m: os.environ.get(m.group(1), ""), value)
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    return value


def build_notifiers(specs: list[dict]) -> list[Notifier]:
    """Notifiers from the ``notify`` config list. A webhook whose url expands to nothing is off."""
    out: list[Notifier] = []
    for raw in specs or []:
        spec = expand_env(dict(raw))
        kind = spec.pop("type", None)
        severity = spec.get("min_severity", "info")
        if severity not in SEVERITIES:
            raise ValueError(f"notify: min_severity must be one of {SEVERITIES}, got {severity!r}")
        if kind == "log":
            out.append(LogNotifier(**spec))
        elif kind == "webhook":
            if not spec.get("url"):
                continue
            out.append(WebhookNotifier(**spec))
        elif isinstance(kind, str) and ":" in kind:
            module, _, name = kind.partition(":")
            out.append(getattr(importlib.import_module(module), name)(**spec))
        else:
            raise ValueError(f"notify: unknown type {kind!r} (log, webhook or 'module:Class')")
    return out


def send_all(notifiers: list[Notifier], alerts: list[dict]) -> list[str]:
    """Hand each notifier the alerts at or above its min_severity. Returns the errors (empty: every
    notifier took its alerts); a failing notifier does not stop the others."""
    errors = []
    for n in notifiers:
        mine = [a for a in alerts if rank(a.get("severity")) >= rank(getattr(n, "min_severity", "info"))]
        if not mine:
            continue
        try:
            n.send(mine)
        except Exception as e:  # noqa: BLE001 - any delivery failure leaves the alerts pending
            errors.append(f"{type(n).__name__}: {e}")
            log.warning("notifier %s failed, %d alert(s) stay pending: %s", type(n).__name__, len(mine), e)
    return errors
