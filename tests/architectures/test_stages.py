"""The architecture matrix, stages: sft, dpo, rm and online RL each take two steps with default settings
on every family; an MoE family logs its router loss as aux_loss in each and trains its router with it; the
reward model's folder loads
in plain transformers where transformers has a sequence-classification class for the family, and in
preftune's scorer everywhere (the same rewards both ways)."""

import math
import re

import pytest
import torch
from safetensors.torch import load_file

from preftune.data.collate import collate_completions
from preftune.modeling.reward_head import HEAD_FILE
from preftune.modeling.reward_model import RewardModelScorer
from preftune.tiny_architectures import tiny_config
from tests.architectures.matrix import ARCHS, PAIRS, VOCAB, run_stages, save_tiny

MOE = {"qwen3-moe", "qwen2-moe", "mixtral", "gpt-oss"}   # with output_router_logits and a coefficient
# Families transformers ships no AutoModelForSequenceClassification class for: preftune's own head.
OWN_HEAD = {"gemma4", "granite", "cohere", "cohere2", "lfm2", "mamba"}


def _plain_transformers_rewards(folder, scorer, prompts, completions):
    """What transformers alone computes from the saved folder: its sequence-classification model pooled at
    the last non-pad token, or — for a preftune head — AutoModel's hidden state there times the saved head."""
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoModelForSequenceClassification

    examples = [scorer.tokenize(p, c, f"row{i}") for i, (p, c) in enumerate(zip(prompts, completions))]
    batch = collate_completions(examples, list(range(len(examples))), pad_token_id=scorer.tokenizer.pad_token_id)
    with torch.no_grad():
        if (folder / HEAD_FILE).is_file():
            hidden = AutoModel.from_pretrained(folder).eval()(input_ids=batch.input_ids,
                                                               attention_mask=batch.attention_mask).last_hidden_state
            last = batch.attention_mask.sum(1) - 1
            head = load_file(str(folder / HEAD_FILE))["weight"]
            return (hidden[torch.arange(len(examples)), last] @ head.T).squeeze(-1)
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.squeeze(-1)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_stage_takes_two_steps(arch, tmp_path):
    results = run_stages(save_tiny(arch, tmp_path / "model"), tmp_path)
    for stage, result in results.items():
        assert [h["step"] for h in result.history] == [1, 2], stage
        loss_key = "reward" if stage == "rl" else "loss"
        assert all(math.isfinite(h[loss_key]) for h in result.history), stage
        if arch in MOE:
            assert all(math.isfinite(h["aux_loss"]) and h["aux_loss"] > 0 for h in result.history), stage
        else:
            assert "aux_loss" not in result.history[0], stage
    # The reward model: plain transformers reads the same rewards as preftune's scorer.
    folder = results["rm"].final_dir
    assert (folder / HEAD_FILE).is_file() == (arch in OWN_HEAD)
    scorer = RewardModelScorer(str(folder))
    prompts, completions = [p["prompt"] for p in PAIRS[:4]], ["good", "bad awful", "yes yes yes", ""]
    ours = torch.tensor(scorer(prompts, completions))
    theirs = _plain_transformers_rewards(folder, scorer, prompts, completions)
    assert torch.allclose(ours, theirs.float(), atol=1e-5), (ours, theirs)


@pytest.mark.parametrize("arch", sorted(OWN_HEAD))
def test_the_own_head_families_are_the_ones_transformers_cannot_classify(arch):
    from preftune.modeling.reward_head import has_sequence_classification

    assert not has_sequence_classification(tiny_config(arch, VOCAB))


def test_every_other_family_has_a_transformers_classification_class():
    from preftune.modeling.reward_head import has_sequence_classification

    assert all(has_sequence_classification(tiny_config(a, VOCAB)) for a in ARCHS if a not in OWN_HEAD)


@pytest.mark.parametrize("arch", sorted(MOE))
def test_every_stage_trains_the_router_with_its_loss(arch, tmp_path):
    # The same runs with router_aux_loss_coef=0 (and the same reward model for RL) differ in the routers'
    # weights only through the router loss: logged but left out of a stage's loss, they would be equal.
    model = save_tiny(arch, tmp_path / "model")
    on = run_stages(model, tmp_path / "on")
    off = run_stages(model, tmp_path / "off", "router_aux_loss_coef=0", reward=on["rm"].final_dir)
    for stage in on:
        assert "aux_loss" not in off[stage].history[0], stage
        a, b = (load_file(r[stage].final_dir / "model.safetensors") for r in (on, off))
        routers = [k for k in a if re.search(r"\.(gate|router)\.weight$", k)]
        assert routers and any(not torch.equal(a[k], b[k]) for k in routers), stage
