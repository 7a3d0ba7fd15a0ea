"""What does per-step telemetry cost the training loop?

The same tiny training run (gpt2-tiny, same seed, same steps) with telemetry on and off, in
interleaved repetitions (off/on, then on/off, ...) so drift on a shared machine hits both arms alike.
"Off" still does the loop's one CPU-GPU sync per step (loss and grad norm are needed for the NaN
check either way); "on" adds what telemetry adds: the step row, the buffered writer (blocks written
on its background thread during the run), the system sampler thread and the runs row.

Two measures, per arm:
- wall: the time from one step's start to the next (logging included), leaving out each run's first
  steps (warm-up); the arm's figure is the median over all its steps. On a shared machine other
  processes' load swings this by tens of percent between runs, far more than the effect measured.
- CPU: the process's CPU time (all threads: loop, writer and sampler) and the main thread's alone,
  for S steps minus that of a 0-step run of the same arm (set-up and tear-down cancel out), per step.
  CPU time is what telemetry actually spends, and other processes barely perturb it.
Plus the direct cost of one ``telemetry.step`` call, timed alone.

    .venv/bin/python bench/bench_telemetry_overhead.py [--steps 300] [--reps 4]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from model import train  # noqa: E402
from warehouse.telemetry import Telemetry  # noqa: E402


def one_run(steps: int, telemetry: bool, lake: str, out: str, seed: int) -> tuple[list[float], float, float]:
    """(per-step wall ms, process CPU s, main-thread CPU s) of one run."""
    cfg = train.build_config("configs/gpt2-tiny.yaml", {
        "trainer.max_steps": steps, "trainer.batch_size": 16, "trainer.eval_interval": 0, "trainer.ckpt_interval": 0, "trainer.keep_last": 1,
        "trainer.log_interval": 0, "trainer.seed": seed, "trainer.out_dir": out, "telemetry.enabled": telemetry,
        "telemetry.lake": lake, "telemetry.flush_rows": 100,  # blocks are written during the run, not only at the end
        "telemetry.system_interval_s": 1.0,
    })
    p0, t0 = time.process_time(), time.thread_time()
    iter_ms = train.train(cfg)["iter_ms"]
    return iter_ms, time.process_time() - p0, time.thread_time() - t0


def direct_cost_us(lake: str, n: int = 5000) -> float:
    """Microseconds the loop spends per step on telemetry.step (row build + buffered append; block
    writes happen on the writer thread), measured alone so machine noise does not swamp it."""
    tel = Telemetry(lake, "bench-direct", "gpt2-tiny", "bench-box", "fp32", block_rows=100, system_interval_s=None)
    sysinfo = {"cpu_util": 100.0, "host_mem_gb": 0.5, "gpu_util": None}
    t0 = time.perf_counter()
    for step in range(n):
        tel.step(step, epoch=step / 1000, loss=2.5, lr=1e-3, grad_norm=0.3, tokens_per_s=6e4, samples_per_s=1e3,
                 step_time_ms=15.0, data_time_ms=0.1, loss_scale=None, mfu=None, gpu_util=sysinfo.get("gpu_util"),
                 gpu_mem_gb=None, gpu_mem_total_gb=None, cpu_util=sysinfo.get("cpu_util"),
                 host_mem_gb=sysinfo.get("host_mem_gb"))
    dt = time.perf_counter() - t0
    tel.close()
    return dt / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--warmup-steps", type=int, default=20, help="first steps of each run left out")
    args = ap.parse_args()
    torch.set_num_threads(1)  # one thread: less scheduler noise from the other processes on the box
    tmp = tempfile.mkdtemp(prefix="mhw-bench-")
    arms = {"off": [], "on": []}
    rep_wall = {"off": [], "on": []}  # per rep: median wall ms/step
    cpu = {"off": [], "on": []}  # per rep: (process CPU ms/step, main-thread CPU ms/step)
    print(f"gpt2-tiny on {train.hardware.fingerprint()}, {args.steps} steps x {args.reps} reps per arm, "
          f"torch threads 1, first {args.warmup_steps} steps of each run dropped; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    t_start = time.time()
    for arm in ("off", "on"):  # one-time costs (lazy imports, first Parquet write, git rev-parse) go here
        one_run(5, arm == "on", f"{tmp}/lake", f"{tmp}/out-warmup-{arm}", seed=1337)
    for r in range(args.reps):
        order = ("off", "on") if r % 2 == 0 else ("on", "off")
        for arm in order:
            _, p_base, t_base = one_run(0, arm == "on", f"{tmp}/lake", f"{tmp}/out-{arm}-{r}-0", seed=1337)
            ms, p_all, t_all = one_run(args.steps, arm == "on", f"{tmp}/lake", f"{tmp}/out-{arm}-{r}", seed=1337)
            ms = ms[args.warmup_steps:]
            arms[arm] += ms
            rep_wall[arm].append(statistics.median(ms))
            cpu[arm].append(((p_all - p_base) / args.steps * 1e3, (t_all - t_base) / args.steps * 1e3))
            print(f"rep {r} {arm:>3}: wall median {statistics.median(ms):7.3f} ms/step, mean {statistics.fmean(ms):7.3f}, "
                  f"p90 {sorted(ms)[int(0.9 * len(ms))]:7.3f} ({len(ms)} steps) | CPU process {cpu[arm][-1][0]:7.3f} "
                  f"ms/step, main thread {cpu[arm][-1][1]:7.3f}")
    off, on = statistics.median(arms["off"]), statistics.median(arms["on"])
    off_mean, on_mean = statistics.fmean(arms["off"]), statistics.fmean(arms["on"])
    print(f"all  off: median {off:.3f} ms/step, mean {off_mean:.3f}")
    print(f"all   on: median {on:.3f} ms/step, mean {on_mean:.3f}")
    print(f"wall overhead: median {100 * (on - off) / off:+.2f} %, mean {100 * (on_mean - off_mean) / off_mean:+.2f} % "
          f"(target < 1 %)")
    for i, what in ((0, "process"), (1, "main thread")):
        c_off = statistics.median(c[i] for c in cpu["off"])
        c_on = statistics.median(c[i] for c in cpu["on"])
        print(f"CPU {what}: off {c_off:.3f} ms/step, on {c_on:.3f} ms/step, overhead {100 * (c_on - c_off) / c_off:+.2f} % "
              f"(median over reps)")
    # paired: each rep's on/off runs ran back to back, so their ratio cancels most of the load drift
    for what, pairs in (("wall", zip(rep_wall["on"], rep_wall["off"])),
                        ("CPU process", ((a[0], b[0]) for a, b in zip(cpu["on"], cpu["off"])))):
        ratios = sorted(100 * (a / b - 1) for a, b in pairs)
        print(f"paired {what} overhead per rep: median {statistics.median(ratios):+.2f} %, "
              f"range {ratios[0]:+.2f} .. {ratios[-1]:+.2f} %")
    print(f"wall time of the benchmark {time.time() - t_start:.0f} s, load average now {os.getloadavg()[0]:.1f}")
    us = direct_cost_us(f"{tmp}/lake-direct")
    print(f"direct cost of telemetry.step in the loop: {us:.1f} us/step = {100 * us / 1e3 / off:.3f} % of a "
          f"{off:.2f} ms step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
