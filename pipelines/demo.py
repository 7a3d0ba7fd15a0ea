"""The main job on the embedded defaults: fill the lake, then ask it the questions the project exists
to answer. ``make demo`` runs this.

    .venv/bin/python -m pipelines.demo [--rows N]
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import time

from warehouse import cli, config
from warehouse.query import connect, write_rows
from warehouse.simulate import simulate

QUESTIONS = {
    "Fleet: runs, steps and throughput by model and hardware (top 12 by steps)": """
        select model, hardware, count(distinct run_id) as runs, count(*) as steps,
               round(median(tokens_per_s)) as median_tokens_per_s,
               count(*) filter (where isnan(loss) or isinf(loss)) as nan_inf_steps
        from train_steps group by all order by steps desc limit 12""",
    "The imported fine-tune: loss by epoch, and its evals": """
        select 'train' as kind, floor(epoch) as epoch, round(min(loss), 4) as best, count(*) as points
        from train_steps where run_id = 'lora-imdb-distilbert' group by all
        union all
        select 'eval ' || metric, checkpoint_step, round(value, 4), n
        from eval_results where train_run_id = 'lora-imdb-distilbert' and metric = 'loss'
        order by kind, epoch""",
    "Runs that did not complete": """
        select status, count(*) as runs, string_agg(distinct model, ', ' order by model) as models
        from runs where status != 'completed' group by all order by runs desc""",
    "GPU under-use: runs whose mean GPU utilization was below 60 %": """
        select run_id, model, hardware, round(avg(gpu_util), 1) as mean_gpu_util
        from train_steps group by all having avg(gpu_util) < 60 order by mean_gpu_util limit 8""",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=500_000, help="simulated train_steps rows")
    args = ap.parse_args(argv)
    settings = config.load()
    t0 = time.perf_counter()
    totals = simulate(settings.lake_root, args.rows, seed=0)
    print(f"[1/3] simulated {sum(totals.values()):,} telemetry rows into {settings.lake_root} "
          f"in {time.perf_counter() - t0:.1f} s")
    sample = config.REPO_ROOT.parent / "shared" / "data" / "hf_trainer_state" / "lora-imdb-distilbert.trainer_state.json"
    if sample.exists():  # a real fine-tune's log, as a team would bring it
        print(f"[2/3] importing a real Hugging Face Trainer log: {sample.name}")
        started = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)).isoformat(timespec="seconds")
        cli.main(["ingest", str(sample), "--model", "distilbert/lora-imdb", "--hardware", "t4-16gb-x1",
                  "--precision", "fp16", "--run-id", "lora-imdb-distilbert", "--started-at", started])
    else:
        print(f"[2/3] no sample log at {sample}: skipping the import step")
    con = connect()
    print("\n[3/3] what the lake says:\n")
    for title, sql in QUESTIONS.items():
        cur = con.execute(sql)
        print(f"## {title}")
        write_rows([d[0] for d in cur.description], cur.fetchall(), "table", sys.stdout)
        print()
    print(f'Ask your own: .venv/bin/mhw query "select * from runs limit 5"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
