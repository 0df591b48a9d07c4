"""Slow tier: the prompt-prefix invariant on SmolLM2's real tokenizer and chat template.

Beyond "prompt ids are a prefix" (true by construction here: prompt and completion are tokenized
separately and concatenated), these check that nothing is lost at the boundary: the ids decode back
to the rendered conversation. Tokenizing the whole conversation in one go gives the very same ids
unless the completion starts with whitespace, which byte-level BPE merges with the template's
trailing newline; the concatenated form is the one generation produces (prompt ids, then sampled
tokens), so it is the right one to train on.
"""

import pytest

from preftune.data.collate import collate_preferences
from preftune.data.dataset import DataSettings, build_preference_dataset
from preftune.modeling.load import load_tokenizer
from tests.data.test_dataset import VARIED, varied_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return load_tokenizer(str(smollm2_dir))


def test_special_tokens(tokenizer):
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert tokenizer.pad_token_id == 0 and tokenizer.chat_template


@pytest.mark.parametrize("settings", [DataSettings(max_length=None, max_prompt_length=None),
                                      DataSettings(max_length=40, max_prompt_length=30)])
def test_prompt_prefix_invariant_on_smollm2(tokenizer, settings):
    rows = varied_rows()
    built = build_preference_dataset(rows, tokenizer, settings)
    assert len(built) == len(VARIED) and not built.dropped
    B = len(built)
    batch = collate_preferences(built.examples, range(B), pad_token_id=tokenizer.pad_token_id)
    for i, ex in enumerate(built.examples):
        n = len(ex.prompt_ids)
        for row, completion in ((i, ex.chosen_ids), (B + i, ex.rejected_ids)):
            assert batch.input_ids[row, :n].tolist() == list(ex.prompt_ids)
            assert batch.loss_mask[row].nonzero().flatten().tolist() == list(range(n, n + len(completion)))
    if settings.max_length is not None:
        return
    for ex, row in zip(built.examples, rows):
        for field, ids in (("chosen", ex.chosen_ids), ("rejected", ex.rejected_ids)):
            conv = row[field] if "prompt" not in row else [
                {"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row[field]}]
            full = tokenizer.apply_chat_template(conv, tokenize=False)
            full = full[: full.rindex("<|im_end|>") + len("<|im_end|>")]
            assert tokenizer.decode(list(ex.prompt_ids) + list(ids)) == full
            joint = tokenizer(full, add_special_tokens=False).input_ids
            completion_text = full[len(tokenizer.decode(list(ex.prompt_ids))):]
            if not completion_text[:1].isspace():
                assert joint == list(ex.prompt_ids) + list(ids), (row, field)
            else:
                assert joint[: len(ex.prompt_ids) - 1] == list(ex.prompt_ids)[:-1]
            assert ids[-1] == tokenizer.eos_token_id
            assert list(ids).count(tokenizer.eos_token_id) == 1
