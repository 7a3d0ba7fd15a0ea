"""model/hf_callback.py is the HF callback's old path (mhw/integrations/hf.py, tested in
tests/mhw/integrations/test_hf.py): the same class, so scripts written against it keep working."""
from model.hf_callback import MHWCallback


def test_the_old_path_is_the_integration():
    from mhw.integrations.hf import MHWCallback as new

    assert MHWCallback is new
