"""The HF Trainer callback's old path, kept working: it lives in ``mhw.integrations.hf`` now, where a
training repository with a ``model`` package of its own can import it (``from mhw.integrations.hf
import MHWCallback``)."""
from mhw.integrations.hf import MHWCallback  # noqa: F401
