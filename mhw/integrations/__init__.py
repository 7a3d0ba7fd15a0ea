"""Telemetry from the training frameworks' own hooks, on top of ``mhw.start_run``:

- ``mhw.integrations.hf``: ``MHWCallback``, a ``transformers.TrainerCallback``
- ``mhw.integrations.lightning``: ``MHWLogger``, a ``lightning.pytorch`` logger

Each imports its framework; this package imports nothing.
"""
