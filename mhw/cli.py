"""``mhw``: the command line of the Model Health Warehouse.

Each subcommand lives in the module that owns its job; that module exposes ``add_arguments(parser)``
and ``run(args) -> int``. This file only wires them together, from above: it is the one module that
knows every layer (warehouse/, pipelines/, model/), and none of them imports it.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Modules are imported only when their command runs, so
# `mhw query` never pays for importing torch or Spark.
COMMANDS: dict[str, tuple[str, str]] = {
    "ingest": ("warehouse.ingest", "load JSONL, HF Trainer, TensorBoard, MLPerf, lm-eval or MLflow logs into the lake"),
    "build": ("pipelines.build", "build the cubes (DuckDB or Spark, incremental) and swap in the serving file"),
    "audit": ("pipelines.audit", "check that the served cubes equal the raw lake, partition by partition"),
    "audit-log": ("pipelines.audit_log", "list the audit trail: who changed the lake, when, with which counts"),
    "diagnose": ("pipelines.diagnose", "compute health alerts (training runs, fleet) incrementally and notify new ones"),
    "alerts": ("pipelines.alerts", "list health alerts (--since, --rule, --severity; table or json)"),
    "repair": ("pipelines.repair", "repair flagged training runs: plan, --apply (retrain, judge, until healed or escalated)"),
    "collect": ("warehouse.collector", "receive telemetry over HTTP from nodes without lake access (token, 127.0.0.1 by default)"),
    "query": ("warehouse.query", "run SQL over the lake (and the serving file) with DuckDB"),
    "simulate": ("warehouse.simulate", "generate realistic fleet telemetry with planted incidents"),
    "watch": ("warehouse.watchdog", "run a training command under a watchdog: heartbeats from outside, a hung job killed, a lost one failed"),
    "train": ("model.train", "train a GPT-2 / BERT model from configs/*.yaml, with telemetry into the lake"),
    "eval": ("model.evaluate", "evaluate a checkpoint (quality, robustness, latency, errors, precision)"),
    "serve": ("model.serve", "serve a checkpoint over HTTP on 127.0.0.1, with Prometheus /metrics (vLLM's families)"),
    "scrape": ("warehouse.scrape", "land inference servers' Prometheus /metrics (vLLM, TGI, Triton) in the lake"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="mhw", description="Model Health Warehouse")
    parser.add_argument("--config", help="config file (default: conf/mhw.yaml or $MHW_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Only the chosen command's module is imported; the rest are listed by name and help alone.
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == chosen:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    args = parser.parse_args(argv)
    from warehouse.commit import LakeLocked  # the standard library only
    try:
        return int(args._run(args) or 0)
    except LakeLocked as e:  # a stopped process holds the lake: say who, and fail instead of hanging
        print(f"mhw {args.command}: {e}", file=sys.stderr)
        return 75  # EX_TEMPFAIL


if __name__ == "__main__":
    sys.exit(main())
