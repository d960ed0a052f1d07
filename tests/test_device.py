"""select_device: auto order, explicit choices, clear errors for unavailable devices; the CPU thread setter."""

import pytest
import torch

from hhn.device import available_devices, select_device, set_cpu_threads
from hhn.errors import UserError


def _fake(monkeypatch, cuda: bool, mps: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


def test_cpu_is_always_available():
    assert select_device("cpu") == torch.device("cpu")
    assert available_devices()[-1] == "cpu"


@pytest.mark.parametrize(("cuda", "mps", "expected"), [(True, True, "cuda"), (False, True, "mps"),
                                                       (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    _fake(monkeypatch, cuda, mps)
    assert select_device("auto") == torch.device(expected)


def test_unavailable_device_names_what_is_available(monkeypatch):
    _fake(monkeypatch, False, True)
    with pytest.raises(UserError, match=r"'cuda' is not available here; available: mps, cpu"):
        select_device("cuda")


def test_unknown_name_is_rejected():
    with pytest.raises(UserError, match="unknown device 'tpu'"):
        select_device("tpu")


def test_indexed_and_torch_device_inputs(monkeypatch):
    _fake(monkeypatch, True, False)
    assert select_device("cuda:1") == torch.device("cuda:1")
    assert select_device(torch.device("cpu")) == torch.device("cpu")
    _fake(monkeypatch, False, False)
    with pytest.raises(UserError):
        select_device(torch.device("cuda", 0))


def test_thread_count_is_set_and_checked():
    before = torch.get_num_threads()
    try:
        set_cpu_threads(None)
        assert torch.get_num_threads() == before
        set_cpu_threads(1)
        assert torch.get_num_threads() == 1
        with pytest.raises(UserError, match="at least 1"):
            set_cpu_threads(0)
    finally:
        torch.set_num_threads(before)
