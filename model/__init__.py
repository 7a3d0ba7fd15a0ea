"""Training and evaluation jobs that emit telemetry into the lake.

- ``train``: ``mhw train`` -- the training loop (one file, top to bottom), its default config, DDP
- ``evaluate``: ``mhw eval`` -- quality, robustness, latency, errors and precision suites
- ``hf_callback``: ``MHWCallback`` -- the same telemetry for HF ``Trainer`` users
- ``telemetry``: runs / train_steps / eval_results / system_samples writers and the system sampler
- ``config``, ``data``, ``models``, ``metrics``, ``checkpoint``, ``hardware``: what those jobs share
"""
