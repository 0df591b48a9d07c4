"""The reward model: one scalar per sequence at its last completion token, the same numbers as plain
transformers, LoRA that trains the head, and a scorer that renders like training does."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from preftune.data.collate import collate_completions, collate_preferences
from preftune.data.dataset import DataSettings, build_preference_dataset
from preftune.modeling.load import load_tokenizer
from preftune.modeling.reward_model import (
    RewardModelScorer,
    apply_reward_lora,
    load_reward_model,
    read_reward_settings,
    score_head,
    sequence_rewards,
    write_reward_settings,
)
from tests.conftest import separable_rows


def _right_padded(vocab: int, pad: int):
    """Three rows of different lengths, right-padded with ``pad``; completions at positions 4.. ."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (3, 10), generator=g)
    lengths = [10, 7, 5]
    attention = torch.zeros_like(ids)
    loss_mask = torch.zeros_like(ids, dtype=torch.bool)
    for r, n in enumerate(lengths):
        ids[r, n:] = pad
        attention[r, :n] = 1
        loss_mask[r, 4:n] = True
    return ids, attention, loss_mask, lengths


def test_load_reward_model_has_one_label_fp32_and_the_tokenizers_pad_id(tiny_model_dir):
    model = load_reward_model(str(tiny_model_dir))
    tokenizer = load_tokenizer(str(tiny_model_dir))
    assert model.config.num_labels == 1 and model.score.out_features == 1 and model.score.bias is None
    assert model.config.pad_token_id == tokenizer.pad_token_id == 3
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_reward_is_the_head_at_the_last_completion_token(tiny_model_dir):
    model = load_reward_model(str(tiny_model_dir)).eval()
    ids, attention, loss_mask, lengths = _right_padded(model.config.vocab_size, pad=3)
    with torch.no_grad():
        rewards = sequence_rewards(model, ids, attention, loss_mask)
        for r, n in enumerate(lengths):   # each row alone, unpadded: w · h_{n-1}
            hidden = model.model(input_ids=ids[r:r + 1, :n]).last_hidden_state[0, -1]
            assert rewards[r].item() == pytest.approx((model.score.weight[0] @ hidden).item(), abs=1e-5)
        # What the padding holds cannot matter: other pad ids give the same rewards.
        other = ids.masked_fill(attention == 0, 7)
        assert torch.allclose(sequence_rewards(model, other, attention, loss_mask), rewards, atol=1e-6)
    assert rewards.shape == (3,) and rewards.dtype == torch.float32
    with pytest.raises(ValueError, match="no completion token"):
        sequence_rewards(model, ids, attention, torch.zeros_like(loss_mask))


def test_saved_folder_gives_the_same_rewards_with_plain_transformers(tiny_model_dir, tmp_path):
    model = load_reward_model(str(tiny_model_dir)).eval()
    model.save_pretrained(tmp_path)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert plain.config.pad_token_id == 3
    ids, attention, loss_mask, _ = _right_padded(model.config.vocab_size, pad=3)
    with torch.no_grad():
        ours = sequence_rewards(model, ids, attention, loss_mask)
        theirs = plain(input_ids=ids, attention_mask=attention).logits.squeeze(-1)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_lora_keeps_the_head_trainable_and_scores_like_the_merged_model(tiny_model_dir):
    torch.manual_seed(0)
    peft_model = apply_reward_lora(load_reward_model(str(tiny_model_dir)), 4, 8, 0.0, ["all-linear"])
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any("score.modules_to_save" in n for n in trainable)      # the new head is trained in full
    assert not any("score" in n and "lora_" in n for n in trainable)  # ... and carries no adapter
    assert any("q_proj.lora_A" in n for n in trainable)
    with torch.no_grad():  # make the adapters and the head's trainable copy non-trivial
        for n, p in peft_model.named_parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    ids, attention, loss_mask, _ = _right_padded(peft_model.config.vocab_size, pad=3)
    peft_model.eval()
    with torch.no_grad():
        wrapped = sequence_rewards(peft_model, ids, attention, loss_mask)
        head = score_head(peft_model)
        assert type(head).__name__ == "ModulesToSaveWrapper"
        merged = peft_model.merge_and_unload()
        assert torch.allclose(sequence_rewards(merged, ids, attention, loss_mask), wrapped, atol=1e-5)


def test_gradients_reach_the_head_and_the_decoder(tiny_model_dir):
    model = load_reward_model(str(tiny_model_dir))
    ids, attention, loss_mask, _ = _right_padded(model.config.vocab_size, pad=3)
    sequence_rewards(model, ids, attention, loss_mask).sum().backward()
    assert model.score.weight.grad.abs().sum() > 0
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


@pytest.fixture
def rm_folder(tiny_model_dir, tmp_path):
    model = load_reward_model(str(tiny_model_dir))
    model.save_pretrained(tmp_path / "rm")
    load_tokenizer(str(tiny_model_dir)).save_pretrained(tmp_path / "rm")
    write_reward_settings(tmp_path / "rm", {"max_length": 48, "max_prompt_length": 16, "use_chat_template": True})
    return tmp_path / "rm"


def test_scorer_renders_and_truncates_like_training(rm_folder):
    rows = separable_rows(6, seed=3)
    scorer = RewardModelScorer(str(rm_folder), "cpu", batch_size=4)
    assert (scorer.max_length, scorer.max_prompt_length, scorer.use_chat_template) == (48, 16, True)
    got = scorer([r["prompt"] for r in rows] * 2, [r["chosen"] for r in rows] + [r["rejected"] for r in rows])
    # The training pipeline's own pairs, scored in one padded batch.
    tokenizer = load_tokenizer(str(rm_folder))
    data = build_preference_dataset(rows, tokenizer, DataSettings(48, 16, True))
    batch = collate_preferences(data.examples, list(range(len(rows))), pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        expected = sequence_rewards(scorer.model, batch.input_ids, batch.attention_mask, batch.loss_mask)
    assert got == pytest.approx(expected.tolist(), abs=1e-5)
    assert all(isinstance(v, float) for v in got)


def test_scorer_takes_message_prompts_and_empty_completions(rm_folder):
    scorer = RewardModelScorer(str(rm_folder))
    as_text = scorer(["Review number 1:"], ["good great"])
    as_messages = scorer([[{"role": "user", "content": "Review number 1:"}]], ["good great"])
    assert as_messages == pytest.approx(as_text, abs=1e-6)
    # An empty completion is its lone EOS after the prompt (a policy may stop at once).
    empty = scorer.tokenize("Review number 1:", "", "x")
    assert empty.completion_ids == (scorer.tokenizer.eos_token_id,)
    assert len(scorer(["Review number 1:"], [""])) == 1
    with pytest.raises(ValueError, match="2 prompts but 1"):
        scorer(["a", "b"], ["c"])


def test_scorer_without_settings_file_uses_the_training_defaults_and_overrides_win(rm_folder):
    (rm_folder / "preftune_reward.json").unlink()
    assert read_reward_settings(rm_folder) == {}
    default = RewardModelScorer(str(rm_folder))
    assert (default.max_length, default.max_prompt_length, default.use_chat_template) == (512, 256, None)
    scorer = RewardModelScorer(str(rm_folder), max_length=10, max_prompt_length=4, use_chat_template=False)
    text = scorer.tokenize("Review number 1:", "good great good great good great", "x")
    assert len(text.prompt_ids) == 4 and len(text.prompt_ids) + len(text.completion_ids) == 10
    assert text.completion_ids[-1] != scorer.tokenizer.eos_token_id   # cut from the right, as in training
    assert collate_completions([text], [0], pad_token_id=3).input_ids.shape == (1, 10)


def test_packed_rewards_and_gradients_equal_the_padded_ones(tiny_model_dir):
    padded_model = load_reward_model(str(tiny_model_dir))
    packed_model = load_reward_model(str(tiny_model_dir))
    packed_model.load_state_dict(padded_model.state_dict())   # the new head is initialised at random
    ids, attention, loss_mask, _ = _right_padded(padded_model.config.vocab_size, 0)
    a = sequence_rewards(padded_model, ids, attention, loss_mask)
    b = sequence_rewards(packed_model, ids, attention, loss_mask, padding_free=True, prefix_sharing="false")
    assert torch.allclose(a, b, atol=1e-5)
    a.sum().backward()
    b.sum().backward()
    for (name, p), q in zip(padded_model.named_parameters(), packed_model.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), name
