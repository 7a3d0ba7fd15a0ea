"""Model Health Warehouse: the ``mhw`` command line and the telemetry client.

    import mhw
    with mhw.start_run("my-model") as run:
        run.log(step, loss=loss, lr=lr)

The client (mhw/client.py) and its integrations (``mhw.integrations.hf.MHWCallback`` for the HF
Trainer, ``mhw.integrations.lightning.MHWLogger`` for Lightning) are loaded when first used:
``import mhw`` alone imports nothing, so ``mhw query``'s start-up (bench/bench_startup.py) pays
nothing for them. The command line (mhw/cli.py) sits on top of every layer; the client imports only
``warehouse``.
"""
from __future__ import annotations

_CLIENT = ("start_run", "init", "Run")

__all__ = list(_CLIENT)


def __getattr__(name: str):
    if name in _CLIENT:
        from mhw import client

        value = getattr(client, name)
        globals()[name] = value  # later lookups are plain module attributes
        return value
    raise AttributeError(f"module 'mhw' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_CLIENT])
