"""Prefix-shared rows: the layout by hand, the attention pattern, exactness of log-probs and gradients
against the unshared rows (pairs, rankings, RL groups with values, reward-model pairs), a mask broken on
purpose, and the fallback where a model cannot run the layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from preftune.errors import ConfigError
from preftune.modeling import prefix_sharing as ps
from preftune.modeling.logprobs import SequenceLogprobModel
from preftune.modeling.prefix_sharing import (
    Segment,
    dense_mask,
    plan_sharing,
    sharing_error,
    use_prefix_sharing,
)
from preftune.testing import tiny_llama

CPU = torch.device("cpu")


def _rows(seqs: list[list[int]], prompts: list[int], pad: int = 0):
    """Right-padded rows; ``prompts[r]`` tokens of row r are its prompt (loss mask False)."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attention = torch.zeros_like(ids)
    loss = torch.zeros_like(ids, dtype=torch.bool)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = torch.tensor(s)
        attention[r, :len(s)] = 1
        loss[r, prompts[r]:len(s)] = True
    return ids, attention, loss


P, Q = [5, 6, 7], [11, 12]
BY_HAND = [P + [8, 9], P + [10], Q + [13, 14, 15], P + [8, 4], P + [8, 9]]


def test_layout_by_hand():
    layout = plan_sharing(*_rows(BY_HAND, [3, 3, 2, 3, 3]))
    # Prompt P once, then the three different completions of P, then Q's row; the fifth row is the first again.
    assert layout.source.tolist() == [0, 1, 2, 3, 4, 8, 18, 19, 10, 11, 12, 13, 14]
    assert layout.position_ids.tolist() == [0, 1, 2, 3, 4, 3, 3, 4, 0, 1, 2, 3, 4]
    assert layout.where.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 5, 0], [8, 9, 10, 11, 12], [0, 1, 2, 6, 7],
                                     [0, 1, 2, 3, 4]]
    assert layout.segments == [Segment(0, 5), Segment(5, 6, 0, 3), Segment(6, 8, 0, 3), Segment(8, 13)]
    assert (layout.tokens, layout.padded_tokens, layout.groups) == (13, 24, 2)


def test_identical_rows_are_computed_once_and_prompts_extend_to_the_common_prefix():
    layout = plan_sharing(*_rows([P + [8, 9], P + [8, 9], P + [8, 4]], [3, 3, 3]))
    # The second row is the first again; the shared part is P + [8], common to all three.
    assert layout.source.tolist() == [0, 1, 2, 3, 4, 14]
    assert layout.segments == [Segment(0, 5), Segment(5, 6, 0, 4)]
    assert layout.where.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [0, 1, 2, 3, 5]]
    # Hidden states depend on the tokens alone: the same tokens under another loss mask are the same row.
    assert plan_sharing(*_rows([P + [8, 9], P + [8, 9]], [3, 4])).tokens == 5


def test_left_padding_is_refused():
    with pytest.raises(ValueError, match="right-padded"):
        plan_sharing(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 1]]), torch.tensor([[False, False, True]]))


def test_dense_mask_by_hand():
    allowed = dense_mask(plan_sharing(*_rows(BY_HAND[:2], [3, 3])))
    # Tokens: P P P c1 c1 | c2 — c2 (index 5) sees P and itself, never c1.
    assert allowed.int().tolist() == [[1, 0, 0, 0, 0, 0],
                                      [1, 1, 0, 0, 0, 0],
                                      [1, 1, 1, 0, 0, 0],
                                      [1, 1, 1, 1, 0, 0],
                                      [1, 1, 1, 1, 1, 0],
                                      [1, 1, 1, 0, 0, 1]]


def _random_rows(vocab: int, seed: int = 0, groups=((6, (5, 3, 7)), (4, (6,)), (9, (2, 4)))):
    """Groups of (prompt length, completion lengths): prompt + each completion, shuffled across the batch."""
    g = torch.Generator().manual_seed(seed)
    seqs, prompts = [], []
    for prompt_len, lens in groups:
        prompt = torch.randint(3, vocab, (prompt_len,), generator=g).tolist()
        for n in lens:
            seqs.append(prompt + torch.randint(3, vocab, (n,), generator=g).tolist())
            prompts.append(prompt_len)
    order = torch.randperm(len(seqs), generator=g).tolist()
    return _rows([seqs[i] for i in order], [prompts[i] for i in order])


def test_segment_attention_equals_sdpa_with_the_4d_block_mask():
    model = tiny_llama(96, num_key_value_heads=2).eval()
    batch = _random_rows(96)
    layout = plan_sharing(*batch)
    packed = batch[0].reshape(-1)[layout.source].unsqueeze(0)
    with torch.no_grad():
        dense = model.model(input_ids=packed, position_ids=layout.position_ids.unsqueeze(0),
                            attention_mask=dense_mask(layout)[None, None], use_cache=False).last_hidden_state[0]
        assert use_prefix_sharing(model, model.model, "true", CPU)
        flat, _ = ps.shared_hidden(model.model, *batch)
    assert (flat - dense).abs().max() < 1e-5


def _pair(**kw):
    a = tiny_llama(96, num_key_value_heads=2, **kw)
    b = tiny_llama(96, num_key_value_heads=2, **kw)
    b.load_state_dict(a.state_dict())
    return a, b


def assert_exact(unshared: SequenceLogprobModel, shared: SequenceLogprobModel, batch, tol: float = 1e-5) -> None:
    """Log-probs, per-token log-probs, values and every gradient of the two within ``tol`` (fp32; for a
    gradient tensor whose entries exceed 1, ``tol`` times its largest entry: fp32 keeps ~7 digits)."""
    a = unshared(*batch, per_token=True)
    b = shared(*batch, per_token=True)
    assert (a.logps - b.logps).abs().max() <= tol
    assert (a.tokens - b.tokens).abs().max() <= tol
    assert torch.equal(a.lengths, b.lengths)
    loss_a, loss_b = a.logps.sum(), b.logps.sum()
    if a.values is not None:
        assert (a.values - b.values).abs().max() <= tol
        loss_a, loss_b = loss_a + a.values.square().sum(), loss_b + b.values.square().sum()
    loss_a.backward()
    loss_b.backward()
    for (name, p), q in zip(unshared.named_parameters(), shared.parameters()):
        assert (p.grad - q.grad).abs().max() <= tol * max(1.0, p.grad.abs().max().item()), name


@pytest.mark.parametrize("padding_free", [False, True], ids=["vs-padded", "vs-packed"])
def test_logps_values_and_gradients_equal_the_unshared_rows(padding_free):
    a, b = _pair()
    head_a, head_b = nn.Linear(32, 1), nn.Linear(32, 1)
    head_b.load_state_dict(head_a.state_dict())
    unshared = SequenceLogprobModel(a, chunk_size=4, value_head=head_a, padding_free=padding_free)
    lines = []
    shared = SequenceLogprobModel(b, chunk_size=4, value_head=head_b, padding_free=True, prefix_sharing="true",
                                  log=lines.append)
    assert_exact(unshared, shared, _random_rows(96))
    assert lines == ["prefix sharing: on (each prompt computed once for all of its completions; checked against "
                     "padded rows)"]


def test_rl_groups_with_identical_samples_and_the_first_token_read_from_the_shared_prompt():
    """G completions of one prompt, two of them identical, one of a single token: each first completion token
    is predicted from the prompt's last hidden state, which all of them share."""
    a, b = _pair()
    prompt = [4, 9, 17, 33, 2]
    seqs = [prompt + c for c in ([40, 41, 42], [40, 41, 42], [50], [40, 60, 61, 62], [70, 71])]
    batch = _rows(seqs, [5] * 5)
    layout = plan_sharing(*batch)
    assert layout.tokens == 5 + 3 + 1 + 4 + 2   # the duplicate adds nothing
    unshared = SequenceLogprobModel(a, chunk_size=3)
    shared = SequenceLogprobModel(b, chunk_size=3, padding_free=True, prefix_sharing="true")
    assert_exact(unshared, shared, batch)


def test_gradient_checkpointing_recomputes_the_same_segments():
    from preftune.stages.policy import enable_gradient_checkpointing

    a, b = _pair()
    enable_gradient_checkpointing(b)
    shared = SequenceLogprobModel(b, chunk_size=4, padding_free=True, prefix_sharing="true").train()
    assert_exact(SequenceLogprobModel(a, chunk_size=4), shared, _random_rows(96, seed=3))


def test_a_sliding_window_model_is_exact_beyond_its_window():
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=3,
                           max_position_embeddings=64)
    torch.manual_seed(0)
    a = MistralForCausalLM(config)
    b = MistralForCausalLM(config)
    b.load_state_dict(a.state_dict())
    assert_exact(SequenceLogprobModel(a, chunk_size=4),
                 SequenceLogprobModel(b, chunk_size=4, padding_free=True, prefix_sharing="true"), _random_rows(96))


def test_eager_attention_is_wrapped_too():
    a, b = _pair(attn_implementation="eager")
    shared = SequenceLogprobModel(b, chunk_size=4, padding_free=True, prefix_sharing="true")
    assert_exact(SequenceLogprobModel(a, chunk_size=4), shared, _random_rows(96, seed=1))
    assert b.config._attn_implementation == "preftune_shared_eager"


def test_reward_model_pairs_equal_the_unshared_rewards_and_gradients():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from preftune.modeling.reward_model import sequence_rewards

    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=0)
    torch.manual_seed(0)
    a, b = LlamaForSequenceClassification(config), LlamaForSequenceClassification(config)
    b.load_state_dict(a.state_dict())
    batch = _random_rows(96, seed=2, groups=((7, (4, 6)), (5, (3, 3)), (8, (2, 9))))
    ra = sequence_rewards(a, *batch)
    rb = sequence_rewards(b, *batch, padding_free=True, prefix_sharing="true")
    assert (ra - rb).abs().max() <= 1e-5
    ra.square().sum().backward()
    rb.square().sum().backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert (p.grad - q.grad).abs().max() <= 1e-5 * max(1.0, p.grad.abs().max().item()), name


def _sees_its_sibling(monkeypatch):
    """The guarantee broken on purpose: every later completion also sees the completions before it."""
    plan = ps.plan_sharing

    def broken(*args):
        layout = plan(*args)
        layout.segments = [Segment(s.start, s.end, s.prefix_start, s.start) if s.prefix_length else s
                           for s in layout.segments]
        return layout

    monkeypatch.setattr(ps, "plan_sharing", broken)


def test_a_mask_that_lets_a_completion_see_its_sibling_fails_the_exactness_test(monkeypatch):
    a, b = _pair()
    _sees_its_sibling(monkeypatch)
    shared = SequenceLogprobModel(b, chunk_size=4, padding_free=True, prefix_sharing="auto")
    ps._DECIDED[b] = (True, False)   # past the probe, which would refuse it (next test)
    ps.install(b)
    with pytest.raises(AssertionError):
        assert_exact(SequenceLogprobModel(a, chunk_size=4), shared, _random_rows(96))


def test_the_probe_refuses_a_mask_that_lets_a_completion_see_its_sibling(monkeypatch):
    model = tiny_llama(96)
    ps.install(model)
    assert sharing_error(model.model, 96, CPU) < 1e-5
    _sees_its_sibling(monkeypatch)
    assert sharing_error(model.model, 96, CPU) > 1e-3
    with pytest.raises(ConfigError, match="prefix_sharing=true.*does not keep completions apart"):
        use_prefix_sharing(model, model.model, "true", CPU)


class _DropsKeywords(nn.Module):
    """A decoder that does not pass its keyword arguments on: its attention never sees the layout."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, **kwargs):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=use_cache)


def test_a_model_that_cannot_run_the_layout_falls_back_to_separate_packing():
    a, b = _pair()
    wrapped = _DropsKeywords(b.model)
    b.get_decoder = lambda: wrapped
    lines = []
    shared = SequenceLogprobModel(b, chunk_size=4, padding_free=True, prefix_sharing="auto", log=lines.append)
    assert_exact(SequenceLogprobModel(a, chunk_size=4), shared, _random_rows(96))
    assert len(lines) == 1 and lines[0].startswith("prefix sharing: off, _DropsKeywords does not keep completions")
    assert b.config._attn_implementation == "sdpa"   # the wrapper is taken off again
    with pytest.raises(ConfigError, match="prefix_sharing=true"):
        c = tiny_llama(96)
        c.get_decoder = lambda: _DropsKeywords(c.model)
        SequenceLogprobModel(c, padding_free=True, prefix_sharing="true")(*_random_rows(96))


def test_softcapped_attention_is_not_run_in_the_layout():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, attn_logit_softcapping=50.0,
                          sliding_window=4, attn_implementation="eager")
    lm = Gemma2ForCausalLM(config)
    lines = []
    assert not use_prefix_sharing(lm, lm.model, "auto", CPU, lines.append)
    assert "softcap" in lines[0]


def test_off_means_off():
    model = tiny_llama(96)
    assert not use_prefix_sharing(model, model.model, "false", CPU)
    assert model.config._attn_implementation == "sdpa"


def test_the_config_key():
    from preftune.config import DPOConfig, EvalConfig
    from preftune.modeling.prefix_sharing import sharing_mode

    base = {"model_name_or_path": "m", "train_file": "t.jsonl"}
    assert DPOConfig(**base).prefix_sharing == "auto"
    assert DPOConfig(**base, prefix_sharing="true").prefix_sharing is True      # YAML/CLI text read as a boolean
    assert sharing_mode(DPOConfig(**base, prefix_sharing=False).prefix_sharing) == "false"
    assert sharing_mode(DPOConfig(**base).prefix_sharing) == "auto"
    with pytest.raises(ConfigError) as e:
        DPOConfig(**base, prefix_sharing="sometimes", padding_free=False, torch_compile=True)
    assert "prefix_sharing must be auto, true or false, got 'sometimes'" in str(e.value)
    with pytest.raises(ConfigError, match="prefix_sharing=true needs padding_free=true"):
        DPOConfig(**base, prefix_sharing=True, padding_free=False)
    with pytest.raises(ConfigError, match="prefix_sharing=true with torch_compile=true"):
        DPOConfig(**base, prefix_sharing=True, torch_compile=True)
    assert EvalConfig(model_name_or_path="m", ref_model_name_or_path="r", eval_file="e",
                      prefix_sharing=False).prefix_sharing is False


def test_a_dpo_run_shares_prompts_by_default_and_matches_a_run_without(tiny_model_dir, tmp_path, capsys):
    """The whole stage: default settings log that sharing is on; losses and rewards equal those with it off."""
    from preftune.config import DPOConfig
    from preftune.stages.dpo import run_dpo
    from tests.conftest import pre_trl, separable_rows

    rows = separable_rows(24)
    common = {**dict(s.split("=", 1) for s in pre_trl([], held_out=True)),
              **dict(model_name_or_path=str(tiny_model_dir), max_length=48, max_prompt_length=16, max_steps=3,
                     per_device_train_batch_size=4, learning_rate=1e-3, logging_steps=1, progress_bar=False,
                     report_to="none", threads=1, eval_size=8)}
    on = run_dpo(DPOConfig(**common, output_dir=str(tmp_path / "on")), train_data=rows)
    assert "prefix sharing: on" in capsys.readouterr().out
    off = run_dpo(DPOConfig(**common, output_dir=str(tmp_path / "off"), prefix_sharing=False), train_data=rows)
    assert "prefix sharing" not in capsys.readouterr().out
    for a, b in zip(on.history, off.history):
        assert abs(a["loss"] - b["loss"]) < 1e-5
    for key in ("loss", "rewards/margins"):
        assert abs(on.eval_after[key] - off.eval_after[key]) < 1e-5
