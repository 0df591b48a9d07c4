"""Trainer state without pickles: tensors in safetensors, the rest in JSON, every value restored exactly."""

import random

import numpy as np
import pytest
import torch

from preftune.train.tensor_tree import StateFileError, load_tree, save_tree
from tests.conftest import pickle_payload


def _adam_state() -> dict:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return optimizer.state_dict()


def test_optimizer_rng_and_odd_values_round_trip_exactly(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    tree = {"optimizer": _adam_state(), "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                                                "torch": torch.get_rng_state()},
            "nan": float("nan"), "inf": float("-inf"), "int_keys": {0: "a", 1: None}, "tuple": (1, [2.5, "x"]),
            "$tensor": "a key that looks like a tag"}
    save_tree(tree, tmp_path, "state")
    back = load_tree(tmp_path, "state")
    opt = back["optimizer"]
    assert opt["param_groups"] == tree["optimizer"]["param_groups"]          # tuples (betas) stay tuples
    for key, value in tree["optimizer"]["state"][0].items():
        assert torch.equal(opt["state"][0][key], value)
    assert back["rng"]["python"] == tree["rng"]["python"]
    random.setstate(back["rng"]["python"])
    np.random.set_state(back["rng"]["numpy"])
    torch.set_rng_state(back["rng"]["torch"])
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    random.setstate(tree["rng"]["python"])
    np.random.set_state(tree["rng"]["numpy"])
    torch.set_rng_state(tree["rng"]["torch"])
    assert draws == (random.random(), np.random.rand(), torch.rand(1).item())
    assert np.isnan(back["nan"]) and back["inf"] == float("-inf")
    assert back["int_keys"] == {0: "a", 1: None} and back["tuple"] == (1, [2.5, "x"])
    assert back["$tensor"] == "a key that looks like a tag"


@pytest.mark.parametrize("name", ["state.json", "state.safetensors"])
def test_a_pickle_payload_in_either_file_runs_nothing_and_the_error_names_the_file(tmp_path, name):
    save_tree({"step": 1, "w": torch.ones(2)}, tmp_path, "state")
    marker = tmp_path / "payload-ran"
    (tmp_path / name).write_bytes(pickle_payload(marker))
    with pytest.raises(StateFileError, match=str(tmp_path / name)):
        load_tree(tmp_path, "state")
    assert not marker.exists()


def test_a_value_json_cannot_hold_is_refused_when_saving(tmp_path):
    with pytest.raises(TypeError, match=r"state.bad: cannot store a object"):
        save_tree({"bad": object()}, tmp_path, "state")
