"""The sampler: exact samples of the tempered, truncated distribution, each row a function of its own
seed only (not of its neighbours, the batch size or the padding), stopping at EOS."""

import pytest
import torch

from preftune.modeling.generation import HFSampler, SamplingSettings, row_seed
from preftune.modeling.logprobs import SequenceLogprobModel
from preftune.stages.online import make_rows
from preftune.testing import tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def lm_and_tokenizer():
    tokenizer = tiny_tokenizer()
    return tiny_llama(len(tokenizer)).eval(), tokenizer


def sampler(lm, tokenizer, **settings):
    return HFSampler(lm, tokenizer.eos_token_id, tokenizer.pad_token_id, SamplingSettings(**settings),
                     torch.device("cpu"))


def test_a_rows_sample_depends_on_its_seed_alone(lm_and_tokenizer):
    lm, tok = lm_and_tokenizer
    prompts = [tok("Review number 1:")["input_ids"], tok("A good movie with a great story")["input_ids"],
               tok("no")["input_ids"], tok("yes")["input_ids"]]
    seeds = [row_seed(0, i) for i in range(4)]
    s = sampler(lm, tok, max_new_tokens=10)
    together = s.generate(prompts, seeds)
    reordered = s.generate(prompts[::-1], seeds[::-1])
    for i in range(4):
        alone = s.generate([prompts[i]], [seeds[i]])
        assert alone.completion_ids[0] == together.completion_ids[i] == reordered.completion_ids[3 - i]
    assert s.generate(prompts, seeds).completion_ids == together.completion_ids       # same seeds, same samples
    other = s.generate(prompts, [row_seed(1, i) for i in range(4)])
    assert other.completion_ids != together.completion_ids


def test_samples_follow_the_tempered_truncated_distribution(lm_and_tokenizer):
    """4,000 first tokens, top_k=6 at temperature 0.7, against the model's own softmax: a chi-square
    with 5 degrees of freedom far below its 1e-6 quantile (~36) (sampling at temperature 1 instead fails it)."""
    _, tok = lm_and_tokenizer
    lm = tiny_llama(len(tok), seed=2).eval()
    with torch.no_grad():   # a random model's logits are nearly flat: sharpen them so the temperature matters
        lm.lm_head.weight.mul_(40)
    prompt = tok("The quick brown fox")["input_ids"]
    with torch.no_grad():
        logits = lm(torch.tensor([prompt])).logits[0, -1] / 0.7
    top = logits.topk(6)
    expected = torch.softmax(top.values, -1) * 4000
    out = sampler(lm, tok, max_new_tokens=1, temperature=0.7, top_k=6).generate([prompt] * 4000,
                                                                               [row_seed(7, i) for i in range(4000)])
    first = torch.tensor([c[0] for c in out.completion_ids])
    assert set(first.tolist()) <= set(top.indices.tolist())
    counts = torch.stack([(first == t).sum() for t in top.indices]).float()
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 20, (counts, expected)


def test_sampler_log_probs_are_the_trainers_and_greedy_is_argmax(lm_and_tokenizer):
    lm, tok = lm_and_tokenizer
    prompts = [tok("Review number 3:")["input_ids"], tok("hello, how are you?")["input_ids"]]
    out = sampler(lm, tok, max_new_tokens=6, temperature=0.8).generate(prompts, [1, 2])
    rows = make_rows([tuple(p) for p in prompts], out.completion_ids, tok.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        tokens = SequenceLogprobModel(lm, temperature=0.8)(rows.input_ids, rows.attention_mask, rows.loss_mask,
                                                           per_token=True).tokens
    for i, lp in enumerate(out.logprobs):
        assert torch.allclose(tokens[i][rows.loss_mask[i]], torch.tensor(lp), atol=1e-5)
    greedy = sampler(lm, tok, max_new_tokens=6, greedy=True).generate(prompts, [0, 0])
    with torch.no_grad():
        for p, c in zip(prompts, greedy.completion_ids):
            hf = lm.generate(torch.tensor([p]), do_sample=False, max_new_tokens=6, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)[0, len(p):].tolist()
            assert c == hf[:len(c)]


def test_a_completion_ends_at_its_first_eos(lm_and_tokenizer):
    lm, tok = lm_and_tokenizer
    eos = tok.eos_token_id
    biased = tiny_llama(len(tok), seed=1).eval()
    with torch.no_grad():   # make EOS likely, so some rows stop early and others run to the limit
        biased.lm_head.weight[eos] += 3 * biased.lm_head.weight.std()
        biased.lm_head.weight[eos] += 0.5 * biased.model.norm.weight.sign()
    out = sampler(biased, tok, max_new_tokens=12).generate([tok("yes")["input_ids"]] * 64, list(range(64)))
    assert any(out.ended) and not all(out.ended)
    for ids, ended, lp in zip(out.completion_ids, out.ended, out.logprobs):
        assert ids.count(eos) == int(ended) and len(lp) == len(ids)
        assert (ids[-1] == eos) == ended and (ended or len(ids) == 12)
