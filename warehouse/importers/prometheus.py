"""Prometheus text exposition of an inference server -> canonical serving samples.

vLLM, Text Generation Inference and Triton name the same few things differently; the lake keeps one
vocabulary (``serving_scrapes.metric``) so one cube reads all three:

    canonical            vLLM                                  TGI                                   Triton
    requests{status}     request_success_total{finished_reason} tgi_request_success / _failure{err}   nv_inference_request_success / _failure{reason}
                         + http_requests_total{status=4xx|5xx}
                           on inference handlers
    e2e_seconds_*        e2e_request_latency_seconds           tgi_request_duration                  nv_inference_request_duration_us (sum only)
    ttft_seconds_*       time_to_first_token_seconds           -                                     nv_inference_first_response_histogram_ms
    itl_seconds_*        inter_token_latency_seconds           tgi_request_mean_time_per_token_duration -
                         (else time_per_output_token_seconds)
    prompt_tokens        prompt_tokens_total                   tgi_request_input_length_sum          -
    output_tokens        generation_tokens_total               tgi_request_generated_tokens_sum      -
    queue_depth          num_requests_waiting                  tgi_queue_size                        nv_inference_pending_request_count
    running              num_requests_running                  tgi_batch_current_size                -
    cache_usage          kv_cache_usage_perc (0..1)            -                                     -
                         (else gpu_cache_usage_perc)

Histograms keep the server's own buckets (``le`` in seconds; Triton's ms buckets are converted), as
cumulative counts: the cube takes per-interval deltas of each bucket and interpolates percentiles
within them. vLLM counts 2xx answers in ``request_success`` already, so only its 4xx/5xx answers
come from ``http_requests_total`` (requests that never finished in the engine). Summaries (Triton's
optional ``*_summary_us``) are not kept: their quantiles cover the server's own sliding window and
merge with nothing. Every other family is skipped and counted in ``Scrape.skipped``.

The text is parsed by prometheus_client's maintained parser; this module only maps names and labels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from warehouse.importers import SourceError

SERVERS = ("vllm", "tgi", "triton")
INFERENCE_HANDLERS = ("/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/generate", "/invocations",
                      "/v1/responses", "/pooling", "/classify", "/score")
# labels that name the model rather than a series (the target's model comes from them when not given)
MODEL_LABELS = ("model_name", "model")
HISTOGRAMS = {  # family -> (canonical prefix, factor that turns its unit into seconds)
    "vllm:e2e_request_latency_seconds": ("e2e_seconds", 1.0),
    "vllm:time_to_first_token_seconds": ("ttft_seconds", 1.0),
    "vllm:inter_token_latency_seconds": ("itl_seconds", 1.0),
    "tgi_request_duration": ("e2e_seconds", 1.0),
    "tgi_request_mean_time_per_token_duration": ("itl_seconds", 1.0),
    "nv_inference_first_response_histogram_ms": ("ttft_seconds", 1e-3),
}
# older names, read only when the newer family is absent
FALLBACK_HISTOGRAMS = {"vllm:time_per_output_token_seconds": "vllm:inter_token_latency_seconds"}
GAUGES = {
    "vllm:num_requests_waiting": "queue_depth", "vllm:num_requests_running": "running",
    "vllm:kv_cache_usage_perc": "cache_usage",
    "tgi_queue_size": "queue_depth", "tgi_batch_current_size": "running",
    "nv_inference_pending_request_count": "queue_depth",
}
FALLBACK_GAUGES = {"vllm:gpu_cache_usage_perc": "vllm:kv_cache_usage_perc"}
TOKEN_COUNTERS = {"vllm:prompt_tokens": "prompt_tokens", "vllm:generation_tokens": "output_tokens"}
TOKEN_HISTOGRAM_SUMS = {"tgi_request_input_length": "prompt_tokens", "tgi_request_generated_tokens": "output_tokens"}
OK_STATUSES = {"ok", "success", "stop", "length", "completed", "finished"}
CLIENT_ERRORS = {"validation", "bad_request", "invalid", "invalid_request"}


def status_class(status) -> str | None:
    """ok | client_error | server_error | error for a status as servers and logs write it: an HTTP code
    (``200``, ``503``) or class (``2xx``), a finish reason (stop, length, abort), a word (ok, error,
    timeout). One mapping for scrapes and per-request logs, so their error rates mean the same."""
    if status is None:
        return None
    s = str(status).strip().lower()
    if s[:1].isdigit():
        return {"2": "ok", "1": "ok", "3": "ok", "4": "client_error", "5": "server_error"}.get(s[0], "error")
    if s in OK_STATUSES:
        return "ok"
    if s in CLIENT_ERRORS:
        return "client_error"
    return "error"  # abort, error, timeout, cancelled, an engine's own failure reason


@dataclass
class Sample:
    """One canonical series value of a scrape (a serving_scrapes row without target, time and prev)."""

    metric: str
    value: float
    model: str | None  # from the server's labels (None: the target's --model decides)
    status: str | None = None
    status_class: str | None = None
    le: float | None = None
    labels: str = ""
    created_at: float | None = None  # epoch seconds
    source_metric: str = ""

    @property
    def series(self) -> tuple:
        """What identifies the series across scrapes of one target."""
        return (self.model, self.metric, self.status, self.le, self.labels)


@dataclass
class Scrape:
    server: str  # vllm | tgi | triton | unknown
    samples: list[Sample] = field(default_factory=list)
    process_start: float | None = None  # epoch seconds (process_start_time_seconds)
    families: int = 0
    skipped: int = 0  # families that carry nothing the serving cube reads


def _labels(labels: dict, drop=("le", "quantile")) -> tuple[str | None, str]:
    model = next((labels[k] for k in MODEL_LABELS if labels.get(k)), None)
    rest = sorted((k, v) for k, v in labels.items() if k not in drop and k not in MODEL_LABELS)
    return model, ",".join(f"{k}={v}" for k, v in rest)


def _created_key(name: str, labels: dict) -> tuple:
    return name, tuple(sorted((k, v) for k, v in labels.items() if k not in ("le", "quantile")))


def parse(text: str, where: str = "scrape") -> Scrape:
    """The canonical samples of one exposition. ``where`` names it in errors (a URL or a file)."""
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError) as e:
        raise SourceError(f"{where}: not Prometheus text exposition: {e}") from e
    names = {f.name for f in families}
    server = next((s for s, p in (("vllm", "vllm:"), ("tgi", "tgi_"), ("triton", "nv_inference_"))
                   if any(n.startswith(p) for n in names)), "unknown")
    created: dict[tuple, float] = {}
    out = Scrape(server=server, families=len(families))
    for f in families:
        if f.name.endswith("_created"):  # a counter's or histogram's start, beside it as a gauge family
            for s in f.samples:
                created[_created_key(f.name[: -len("_created")], s.labels)] = s.value
        elif f.name == "process_start_time_seconds" and f.samples:
            out.process_start = f.samples[0].value
    for f in families:
        for s in f.samples:  # the text format also puts _created samples inside their own family
            if s.name.endswith("_created"):
                created[_created_key(s.name[: -len("_created")], s.labels)] = s.value
    for f in families:
        got = _map(f, names, created)
        if got is None:
            out.skipped += 1
        else:
            out.samples += got
    return out


def _start(created: dict, name: str, labels: dict) -> float | None:
    return created.get(_created_key(name, labels))


def _map(f, names: set[str], created: dict) -> list[Sample] | None:
    # a counter exposed without its TYPE line (or typed under its bare name) parses as an untyped
    # family named with _total: the same family
    name = f.name[: -len("_total")] if f.type == "unknown" and f.name.endswith("_total") else f.name
    if name in FALLBACK_HISTOGRAMS and FALLBACK_HISTOGRAMS[name] in names:
        return None
    if name in FALLBACK_GAUGES and FALLBACK_GAUGES[name] in names:
        return None
    if name in HISTOGRAMS or name in FALLBACK_HISTOGRAMS:
        prefix, factor = HISTOGRAMS[FALLBACK_HISTOGRAMS.get(name, name)]
        return _histogram(f, prefix, factor, created)
    if name in GAUGES or name in FALLBACK_GAUGES:
        metric = GAUGES[FALLBACK_GAUGES.get(name, name)]
        out = []
        for s in f.samples:
            model, labels = _labels(s.labels)
            out.append(Sample(metric, s.value, model, labels=labels, source_metric=s.name))
        return out
    if name in TOKEN_COUNTERS:
        return [_counter(s, TOKEN_COUNTERS[name], name, created) for s in f.samples if s.name.endswith("_total")]
    if name in TOKEN_HISTOGRAM_SUMS:
        return [_counter(s, TOKEN_HISTOGRAM_SUMS[name], name, created) for s in f.samples if s.name.endswith("_sum")]
    if name == "vllm:request_success":
        return [_counter(s, "requests", name, created, s.labels.get("finished_reason", "success"))
                for s in f.samples if s.name.endswith("_total")]
    if name == "http_requests_total" or name == "http_requests":
        if not any(n.startswith("vllm:") for n in names):
            return None  # only vLLM's instrumentator is known to count what request_success leaves out
        return [_counter(s, "requests", "http_requests", created, s.labels.get("status"))
                for s in f.samples if s.name.endswith("_total") and s.labels.get("handler") in INFERENCE_HANDLERS
                and status_class(s.labels.get("status")) not in ("ok", None)] or []
    if name in ("tgi_request_success", "nv_inference_request_success"):
        return [_counter(s, "requests", name, created, "success") for s in f.samples if not s.name.endswith("_created")]
    if name in ("tgi_request_failure", "nv_inference_request_failure"):
        return [_counter(s, "requests", name, created, s.labels.get("err") or s.labels.get("reason") or "failure",
                         drop=("err", "reason"))
                for s in f.samples if not s.name.endswith("_created")]
    if name == "nv_inference_request_duration_us":
        return [_counter(s, "e2e_seconds_sum", name, created, factor=1e-6) for s in f.samples
                if not s.name.endswith("_created")]
    return None


def _counter(s, metric: str, family: str, created: dict, status=None, factor: float = 1.0,
             drop: tuple = ()) -> Sample:
    model, labels = _labels({k: v for k, v in s.labels.items() if k not in drop},
                            drop=("le", "quantile", "finished_reason", "status"))
    return Sample(metric, s.value * factor, model, status=None if status is None else str(status),
                  status_class=status_class(status) if status is not None else None, labels=labels,
                  created_at=_start(created, family, s.labels), source_metric=s.name)


def _histogram(f, prefix: str, factor: float, created: dict) -> list[Sample]:
    out = []
    for s in f.samples:
        part = s.name[len(f.name):]  # _bucket, _count, _sum (_created handled apart)
        if part not in ("_bucket", "_count", "_sum"):
            continue
        model, labels = _labels(s.labels)
        le = None
        if part == "_bucket":
            le = float(s.labels["le"])
            le = le if math.isinf(le) else le * factor
        value = s.value * factor if part == "_sum" else s.value
        out.append(Sample(f"{prefix}{part}", value, model, le=le, labels=labels,
                          created_at=_start(created, f.name, s.labels), source_metric=s.name))
    return out
