"""preftune.device.pick_device: what each ``device`` setting means (CUDA presence simulated)."""

import pytest
import torch

from preftune.device import pick_device


@pytest.mark.parametrize(("cuda", "expected"), [(True, "cuda"), (False, "cpu")])
def test_auto_prefers_cuda_when_present(monkeypatch, cuda, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert pick_device("auto") == torch.device(expected)


def test_cuda_without_a_device_is_an_error_not_a_cpu_run(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        pick_device("cuda")


def test_other_names_are_torch_devices():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(RuntimeError):
        pick_device("not-a-device")
