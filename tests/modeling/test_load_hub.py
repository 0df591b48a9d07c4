"""Models and tokenizers by Hub id, resolved by the real huggingface_hub code from a cache the test writes."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from preftune.errors import ConfigError
from preftune.modeling.load import load_causal_lm, load_tokenizer, resolve_model_path
from preftune.testing import save_to_hub_cache, tiny_llama, tiny_tokenizer

REPO = "tiny-org/tiny-llama"


def test_a_hub_id_resolves_from_the_cache_offline(tiny_model_dir, offline_hub):
    snapshot = save_to_hub_cache(tiny_model_dir, REPO, offline_hub)
    assert resolve_model_path(REPO) == str(snapshot)
    tokenizer = load_tokenizer(REPO)
    assert tokenizer.get_vocab() == tiny_tokenizer().get_vocab()
    model = load_causal_lm(REPO)
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for (name, a), (_, b) in zip(model.state_dict().items(), original.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_revision_picks_its_own_snapshot(tiny_model_dir, tmp_path, offline_hub):
    main = save_to_hub_cache(tiny_model_dir, REPO, offline_hub)
    other = tmp_path / "v2"
    tokenizer = tiny_tokenizer()
    tiny_llama(len(tokenizer), seed=7).save_pretrained(other)
    tokenizer.save_pretrained(other)
    v2 = save_to_hub_cache(other, REPO, offline_hub, revision="v2")
    assert v2 != main
    assert resolve_model_path(REPO, revision="v2") == str(v2)
    assert resolve_model_path(REPO) == str(main)
    # A commit hash is a revision too.
    assert resolve_model_path(REPO, revision=v2.name) == str(v2)


def test_an_uncached_id_offline_says_where_it_looked_and_why_nothing_was_downloaded(offline_hub):
    with pytest.raises(ConfigError) as e:
        resolve_model_path("nobody/nothing")
    message = str(e.value)
    assert "model 'nobody/nothing': not a local folder" in message
    assert str(offline_hub / "models--nobody--nothing") in message and "not there" in message
    assert "HF_HUB_OFFLINE=1" in message


def test_an_unknown_revision_offline_is_explained(tiny_model_dir, offline_hub):
    save_to_hub_cache(tiny_model_dir, REPO, offline_hub)
    with pytest.raises(ConfigError, match="no complete snapshot of that revision.*HF_HUB_OFFLINE=1"):
        resolve_model_path(REPO, revision="v9")


def test_an_unreachable_hub_names_the_connection_error(offline_hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(ConfigError) as e:
        resolve_model_path("nobody/nothing")
    message = str(e.value)
    assert "could not be downloaded" in message and "HF_HUB_OFFLINE" not in message
    assert "not there" in message


def test_an_unreachable_hub_falls_back_to_the_cache(tiny_model_dir, offline_hub, monkeypatch):
    from huggingface_hub import constants

    snapshot = save_to_hub_cache(tiny_model_dir, REPO, offline_hub)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    assert resolve_model_path(REPO) == str(snapshot)


def test_a_missing_local_path_is_not_sent_to_the_hub(offline_hub):
    with pytest.raises(ConfigError, match="no such folder, and not a Hugging Face Hub id"):
        resolve_model_path("runs/sft/final")
    with pytest.raises(ConfigError, match="no such folder"):
        resolve_model_path("./final")


def test_local_folders_and_the_embedded_name_still_work(tiny_model_dir):
    assert resolve_model_path(str(tiny_model_dir)) == str(tiny_model_dir)
    with pytest.raises(ConfigError, match="local folder, so revision 'v2' cannot apply"):
        resolve_model_path(str(tiny_model_dir), revision="v2")


def test_a_reward_model_by_hub_id_loads_from_the_cache(tiny_model_dir, offline_hub):
    from preftune.modeling.reward_model import RewardModelScorer
    from preftune.rewards import load_reward

    save_to_hub_cache(tiny_model_dir, REPO, offline_hub)
    scorer = load_reward(REPO)
    assert isinstance(scorer, RewardModelScorer)
    assert len(scorer(["hi"], ["good"])) == 1
