"""A plain PyTorch training loop that sends its telemetry to the Model Health Warehouse.

    python docs/examples/plain_loop.py                       # into the lake of conf/mhw.yaml / $MHW_LAKE
    MHW_COLLECTOR=http://10.0.0.5:8765 MHW_COLLECTOR_TOKEN=... python docs/examples/plain_loop.py
    torchrun --nproc_per_node=2 docs/examples/plain_loop.py  # rank 0 writes, the others do nothing

The three lines that matter are marked ``# mhw``; the rest is an ordinary loop (a tiny MLP fitting a
noisy sine, on CPU, in seconds).
"""
import argparse
import math
import time

import torch

import mhw  # mhw

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=200)
ap.add_argument("--lr", type=float, default=3e-3)
ap.add_argument("--batch", type=int, default=64)
args = ap.parse_args()

torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(1, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
opt = torch.optim.AdamW(net.parameters(), lr=args.lr)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
x_val = torch.linspace(-3, 3, 256).unsqueeze(1)
y_val = torch.sin(x_val)

with mhw.start_run("sine-mlp", config=vars(args), dataset="noisy-sine",  # mhw
                   n_params=sum(p.numel() for p in net.parameters())) as run:
    for step in range(args.steps):
        t0 = time.perf_counter()
        x = torch.rand(args.batch, 1) * 6 - 3
        y = torch.sin(x) + 0.05 * torch.randn_like(x)
        loss = torch.nn.functional.mse_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        dt = time.perf_counter() - t0
        # standard columns (loss, lr, grad_norm, samples_per_s, step_time_ms) fill train_steps; any other
        # name (here weight_norm) is a step_metrics row. .item() is the loop's one sync point anyway.
        run.log(step, loss=loss.item(), lr=lr, grad_norm=grad_norm.item(), samples_per_s=args.batch / dt,  # mhw
                step_time_ms=dt * 1e3, weight_norm=net[0].weight.norm().item())
        if (step + 1) % 50 == 0 or step + 1 == args.steps:
            with torch.no_grad():
                val = torch.nn.functional.mse_loss(net(x_val), y_val).item()
            run.log_eval(step, {"mse": val, "rmse": math.sqrt(val)}, n=len(x_val))
print(f"run {run.run_id}: {args.steps} steps, last loss {loss.item():.4f}")
