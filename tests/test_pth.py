"""Tests of the safe ``.pth`` reader: it reads what torch.save writes, in both formats, and refuses
(without running anything) a pickle that names anything a tensor state dict does not need."""
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from advseg_utils.pth import UnsafePickleError, read_pth
from pth_writer import Global, write_pickle_in_place_of_state, write_state_dict

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("name", ["tiny_state_zip.pth", "tiny_state_legacy.pth"])
def test_reads_what_torch_save_wrote_in_either_format(name):
    """The fixtures were written by torch.save (tests/fixtures/make_efficientnet_lite_reference.py)."""
    state = read_pth(FIXTURES / name)
    grid = np.arange(24, dtype=np.float32).reshape(4, 6)
    assert list(state) == ["columns", "transposed", "count", "half", "flags"]
    np.testing.assert_array_equal(state["columns"], grid[:, 2:5])  # a view at an offset into a shared storage
    np.testing.assert_array_equal(state["transposed"], grid.T)  # non-contiguous strides
    assert state["count"].dtype == np.int64 and state["count"].shape == () and state["count"] == 7
    assert state["half"].dtype == np.float16 and state["half"].tolist() == [0.5, -2.0]
    assert state["flags"].dtype == np.bool_ and state["flags"].tolist() == [True, False]


class _RunsCode:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("where", ["state", "header"])
def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path, where):
    marker, path = tmp_path / "marker", tmp_path / "evil.pth"
    write_pickle_in_place_of_state(path, {"weight": _RunsCode(marker)}, header_payload=where == "header")
    with pytest.raises(UnsafePickleError, match=rf"{path} names the global (posix|os)\.system"):
        read_pth(path)
    assert not marker.exists()
    with open(path, "rb") as file:  # the file really does run code when unpickled without the allow-list
        for _ in range(4):
            pickle.load(file)
    assert marker.exists()


def test_a_zip_pth_naming_a_disallowed_global_is_refused(tmp_path):
    path = tmp_path / "evil_zip.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"weight": _RunsCode(tmp_path / "marker")}, protocol=2))
    with pytest.raises(UnsafePickleError, match="system"):
        read_pth(path)
    assert not (tmp_path / "marker").exists()


def test_torch_globals_outside_the_allow_list_are_refused(tmp_path):
    """E.g. a whole pickled module (torch.save(model)) names its classes: not a state dict."""
    path = tmp_path / "module.pth"
    write_pickle_in_place_of_state(path, Global("torch.nn.modules.conv", "Conv2d"))
    with pytest.raises(UnsafePickleError, match=r"torch\.nn\.modules\.conv\.Conv2d"):
        read_pth(path)


def test_a_file_that_is_not_a_state_dict_of_tensors_is_named(tmp_path):
    path = tmp_path / "numbers.pth"
    write_pickle_in_place_of_state(path, {"weight": 3})
    with pytest.raises(ValueError, match=f"{path} is not a state dict of tensors"):
        read_pth(path)
    not_torch = tmp_path / "plain.pth"
    not_torch.write_bytes(pickle.dumps({"weight": 3}))
    with pytest.raises(ValueError, match=f"{not_torch} is not a PyTorch file"):
        read_pth(not_torch)


def test_a_truncated_storage_is_named(tmp_path):
    path = tmp_path / "truncated.pth"
    write_state_dict(path, {"weight": np.arange(10, dtype=np.float32)})
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ValueError, match=f"{path}: storage 0 is truncated"):
        read_pth(path)
