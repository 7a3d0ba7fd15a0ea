"""Simulated distributed jobs at scale: every rank's step timing (``rank_steps``) and heartbeats for jobs
of 8 to 1024 ranks on a pool of hosts, some of them planted slow, with ground truth. For the scale of
the fleet-reliability rules and cubes (straggler, straggler_host, run_hung, run_lost); their accuracy
is measured on real torchrun jobs (bench/bench_fleet.py), not here.

The model of a synchronous data-parallel step: each rank works ``base x host speed x noise`` ms (its
own compute and data), then waits in the all-reduce for the slowest rank; every rank's step time is
the slowest rank's work plus the transfer. A slow host's ranks work ``slowdown`` times longer in every
job they join (a failing device or link); a few jobs also have one slow rank on a healthy host (a job's
own skew, not the host's: a straggler, never a suspect host); every rank has rare single slow steps
(persistence must not be fooled by them). Some jobs are still running at ``now``; of those, some are
planted hung (alive, no step for 30 minutes) or lost (heartbeats stopped an hour ago).

Ground truth in ``<lake>/_ground_truth/fleet.parquet``: one row per planted fact: (kind, run_id, rank,
host, hardware) with kind straggler (a slow rank), slow_host, hung or lost.

    mhw simulate --rank-jobs 40 --out .mhw/lake      # beside (or instead of) the --rows fleet
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from warehouse.writer import Lake

HARDWARE = "h100-sxm-80gb-x8"
GPUS_PER_HOST = 8
SIZES = (8, 16, 32, 64, 128, 256, 512, 1024)
MODEL = "llama-7b"


def simulate_fleet(lake_root: str, jobs: int = 40, hosts: int = 160, slow_hosts: int = 4, steps: int = 200,
                   seed: int = 0, now: dt.datetime | None = None, sizes: tuple[int, ...] = SIZES,
                   slowdown: tuple[float, float] = (1.3, 2.0), live_jobs: int = 6) -> dict:
    """Write ``jobs`` jobs' rank_steps, runs and heartbeats; returns counts and the ground truth."""
    rng = np.random.default_rng(seed)
    now = (now or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0)
    lake = Lake(lake_root, durable=False)  # regenerable from the seed: no fsync per file
    host_names = [f"node-{i:04d}" for i in range(hosts)]
    speed = np.ones(hosts)
    slow = rng.choice(hosts, size=slow_hosts, replace=False)
    speed[slow] = rng.uniform(*slowdown, size=slow_hosts)
    truth = [{"kind": "slow_host", "run_id": None, "rank": None, "host": host_names[h], "hardware": HARDWARE}
             for h in sorted(slow)]
    n_rows = 0
    for j in range(jobs):
        world = int(sizes[j % len(sizes)])
        n_hosts = -(-world // GPUS_PER_HOST)
        placed = rng.choice(hosts, size=n_hosts, replace=False)
        rank_host = np.repeat(placed, GPUS_PER_HOST)[:world]
        run_id = f"sim-ddp-{seed}-{j:03d}-w{world}"
        base = rng.uniform(200, 400)  # ms of work per step on a healthy rank
        factor = speed[rank_host].copy()
        if j % 7 == 3:  # the job's own straggler: one rank, on a healthy host
            healthy = np.flatnonzero(speed[rank_host] == 1.0)
            if len(healthy):
                r = int(rng.choice(healthy))
                factor[r] = rng.uniform(*slowdown)
                truth.append({"kind": "straggler", "run_id": run_id, "rank": r, "host": host_names[rank_host[r]],
                              "hardware": HARDWARE})
        # a slow host's ranks straggle where the job has healthy hosts to be compared with
        for r in np.flatnonzero(speed[rank_host] > 1.0) if (speed[placed] == 1.0).any() else []:
            truth.append({"kind": "straggler", "run_id": run_id, "rank": int(r), "host": host_names[rank_host[r]],
                          "hardware": HARDWARE})
        live = j >= jobs - live_jobs
        hung, lost = live and j == jobs - 1, live and j == jobs - 2
        # a live job's last step: 10 seconds ago; a hung one's 30 minutes, a lost one's an hour ago
        end = now - (dt.timedelta(minutes=30) if hung else dt.timedelta(minutes=60) if lost else
                     dt.timedelta(seconds=10) if live else dt.timedelta(minutes=int(rng.integers(60, 6 * 24 * 60))))
        work = base * factor[None, :] * rng.lognormal(0, 0.03, (steps, world))
        spikes = rng.random((steps, world)) < 0.002  # rare single slow steps: not a straggler
        work[spikes] *= 3.0
        transfer = base * 0.05
        step_ms = work.max(axis=1, keepdims=True) + transfer
        comm = step_ms - work
        ts_end = np.datetime64(end.replace(tzinfo=None), "us")
        step_ts = ts_end - (np.cumsum(step_ms[::-1, 0])[::-1] * 1000).astype("timedelta64[us]")
        n = steps * world
        table = pa.table({
            "run_id": pa.array([run_id] * n), "step": np.repeat(np.arange(steps, dtype=np.int64), world),
            "ts": pa.array(np.repeat(step_ts, world), pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC")),
            "precision": pa.array(["bf16"] * n), "rank": np.tile(np.arange(world, dtype=np.int32), steps),
            "local_rank": np.tile((np.arange(world) % GPUS_PER_HOST).astype(np.int32), steps),
            "world_size": np.full(n, world, np.int32),
            "host": pa.array([host_names[h] for h in rank_host] * steps),
            "step_time_ms": np.repeat(step_ms[:, 0], world), "data_time_ms": np.full(n, 1.0),
            "compute_ms": (work - 1.0).ravel(), "comm_wait_ms": comm.ravel(),
            "gpu_util": np.clip(95 * work.ravel() / np.repeat(step_ms[:, 0], world), 0, 100),
            "model": pa.array([MODEL] * n), "hardware": pa.array([HARDWARE] * n),
        })
        lake.write("rank_steps", table, f"{run_id}-ranks")
        n_rows += n
        started = end - dt.timedelta(milliseconds=float(step_ms.sum()))
        status = "running" if live else "completed"
        lake.write("runs", pa.Table.from_pylist([{
            "run_id": run_id, "kind": "train", "model": MODEL, "hardware": HARDWARE, "precision": "bf16",
            "gpu_count": world, "started_at": started, "ended_at": None if live else end, "status": status,
            "source": "synthetic", "steps": steps}]), run_id)
        # heartbeats: one row per rank; the last live jobs are planted hung and lost
        state, beat_at = ("running", end if lost else now) if live else ("ended", end)
        if hung or lost:
            truth.append({"kind": "hung" if hung else "lost", "run_id": run_id, "rank": None, "host": None,
                          "hardware": HARDWARE})
        interval = float(np.median(step_ms)) / 1000
        lake.write("heartbeats", pa.Table.from_pylist([{
            "run_id": run_id, "attempt": f"sim-{j}", "rank": r, "local_rank": r % GPUS_PER_HOST, "world_size": world,
            "host": host_names[rank_host[r]], "pid": 1000 + r, "started_at": started, "ts": beat_at,
            "interval_s": 15.0, "state": state, "last_step": steps - 1, "last_step_at": end,
            "step_interval_s": interval, "checkpoint_step": (steps // 100) * 100, "source": "process",
            "model": MODEL, "hardware": HARDWARE} for r in range(world)]), f"{run_id}-hb")
    lake.put_table(f"{lake.root}/_ground_truth/fleet.parquet", pa.Table.from_pylist(
        truth, schema=pa.schema([("kind", pa.string()), ("run_id", pa.string()), ("rank", pa.int64()),
                                 ("host", pa.string()), ("hardware", pa.string())])))
    return {"jobs": jobs, "rank_rows": n_rows, "truth": truth, "now": now}
