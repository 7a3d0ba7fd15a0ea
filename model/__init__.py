"""Training and evaluation jobs that emit telemetry into the lake.

- ``train``: ``mhw train`` -- the training loop (one file, top to bottom), its default config, DDP
- ``evaluate``: ``mhw eval`` -- quality, robustness, latency, errors and precision suites
- ``hf_callback``: the old path of ``mhw.integrations.hf.MHWCallback`` (HF ``Trainer`` users)
- ``config``, ``data``, ``models``, ``metrics``, ``checkpoint``: what those jobs share

Their telemetry writers (``warehouse.telemetry``) and hardware fingerprint (``warehouse.hardware``)
live in ``warehouse/``, which the telemetry client (``mhw``) shares without importing this package.
"""
