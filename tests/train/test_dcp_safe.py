"""Sharded (DCP) checkpoints are read without arbitrary unpickling: its index by an unpickler that builds
only DCP's records, its non-tensor values with torch.load(weights_only=True)."""

import os
import warnings

import pytest
import torch

from preftune.train import dcp_safe
from tests.conftest import _Touch


def _state(seed):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optim_state}


def _save(state, folder):
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # "torch.distributed is not initialised: one process"
        dcp.save(state, checkpoint_id=str(folder))


def test_a_sharded_checkpoint_loads_back_exactly(tmp_path):
    saved = _state(0)
    _save(saved, tmp_path / "dcp")
    target = _state(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp_safe.load(target, tmp_path / "dcp")
    assert torch.equal(target["model"]["weight"], saved["model"]["weight"])
    assert target["optimizer"]["param_groups"][0]["lr"] == 0.01
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(target["optimizer"]["state"]["weight"][key], saved["optimizer"]["state"]["weight"][key])


def test_a_payload_in_the_index_runs_nothing_and_is_named(tmp_path):
    _save(_state(0), tmp_path / "dcp")
    marker = tmp_path / "payload-ran"
    import pickle

    (tmp_path / "dcp" / ".metadata").write_bytes(pickle.dumps(_Touch(marker)))
    with pytest.raises(dcp_safe.UnsafeCheckpoint, match=rf"{tmp_path / 'dcp' / '.metadata'}: not a checkpoint index "
                                                       r"\(UnpicklingError: posix.system is not part of"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp_safe.load(_state(1), tmp_path / "dcp")
    assert not marker.exists()


def test_a_payload_among_the_values_runs_nothing(tmp_path):
    # DCP's own planner would torch.load(weights_only=False) it, running the payload.
    marker = tmp_path / "payload-ran"
    _save({"extra": _Touch(marker)}, tmp_path / "dcp")
    assert not marker.exists()
    with pytest.raises(dcp_safe.UnsafeCheckpoint, match="sharded checkpoint value extra: refused"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp_safe.load({"extra": None}, tmp_path / "dcp")
    assert not marker.exists() and os.path.exists(tmp_path / "dcp" / ".metadata")
