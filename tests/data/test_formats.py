"""Published row formats mapped onto render's fields: column mapping (orca), UltraFeedback, layout hints."""

from __future__ import annotations

import pytest

from preftune.data.dataset import DataSettings, build_preference_dataset, build_ranking_dataset
from preftune.data.formats import RowFormat, prepare
from preftune.data.load import Record
from preftune.data.render import render_preference
from preftune.errors import ConfigError, DataError, SkipExample

ORCA = RowFormat(prompt_field="question", system_field="system")


def orca_row(system: str = "", question: str = "What is 2+2?") -> dict:
    """Intel/orca_dpo_pairs: system, question, chosen, rejected (all strings)."""
    return {"system": system, "question": question, "chosen": "4.", "rejected": "5."}


def test_orca_rows_map_question_to_the_prompt(chat_tok):
    out = render_preference(prepare(Record(orca_row(), "row 1"), ORCA, "preference", 0), chat_tok)
    assert out.prompt == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert (out.chosen, out.rejected) == ("4.<|im_end|>", "5.<|im_end|>")


def test_a_non_empty_system_text_becomes_the_system_message(chat_tok):
    record = prepare(Record(orca_row("You are terse."), "row 1"), ORCA, "preference", 0)
    assert render_preference(record, chat_tok).prompt == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")


def test_a_system_message_without_a_chat_template_is_an_error(plain_tok):
    record = prepare(Record(orca_row("You are terse."), "row 3"), ORCA, "preference", 0)
    with pytest.raises(DataError, match="^row 3: field 'system' \\(system_field\\) becomes a system message, which "
                                        "needs a chat template"):
        render_preference(record, plain_tok)


def test_errors_name_the_mapped_column(chat_tok):
    row = orca_row()
    del row["question"]
    record = prepare(Record(row, "orca.jsonl:4"), ORCA, "preference", 0)
    # No 'question': the pair has no prompt, and its strings share no start.
    with pytest.raises(DataError, match="^orca.jsonl:4: no field 'prompt'"):
        render_preference(record, chat_tok)
    fmt = RowFormat(chosen_field="response_j", rejected_field="response_k")
    record = prepare(Record({"prompt": "p", "response_j": "a", "response_k": ""}, "se.jsonl:2"), fmt, "preference", 0)
    with pytest.raises(DataError, match="^se.jsonl:2: field 'response_k' is empty$"):
        render_preference(record, chat_tok)


def test_a_system_column_is_used_only_when_system_field_names_it(chat_tok):
    record = prepare(Record({"system": "Be kind.", "prompt": "hi", "chosen": "a", "rejected": "b"}, "r"),
                     RowFormat(), "preference", 0)
    assert "system" not in render_preference(record, chat_tok).prompt


@pytest.mark.parametrize("row, hint", [
    ({"prompt": "p", "completion": "c", "label": True}, "unpaired \\(KTO\\) data: train on it with loss_type=kto"),
    ({"prompt": "p", "completions": ["a", "b"]}, "a ranked list: train on it with loss_type=plackett_luce"),
    ({"messages": [{"role": "user", "content": "x"}]}, "SFT data .*`preftune sft`"),
])
def test_rows_of_another_layout_name_it_and_the_setting(row, hint):
    with pytest.raises(DataError, match=f"^kto.jsonl:1: missing field 'chosen'; .*{hint}"):
        prepare(Record(row, "kto.jsonl:1"), RowFormat(), "preference", 0)


def rating(value) -> dict:
    return {"Rating": str(value), "Rationale": "..."}


def uf_completion(response: str, ratings: tuple, overall: float) -> dict:
    """One completion of an openbmb/UltraFeedback row, as published (ratings are strings, "N/A" allowed)."""
    help_, honest, follow, truth = ratings
    return {"model": "m", "principle": "helpfulness", "custom_system_prompt": "", "critique": "...",
            "response": response, "overall_score": overall,
            "fine-grained_score": None,
            "annotations": {"helpfulness": rating(help_), "honesty": rating(honest),
                            "instruction_following": rating(follow), "truthfulness": rating(truth)}}


def uf_row() -> dict:
    return {"source": "evol_instruct", "instruction": "Name a colour.", "models": ["a", "b", "c", "d"],
            "correct_answers": ["None"], "incorrect_answers": ["None"],
            "completions": [
                uf_completion("Blue.", (5, 5, 4, 5), 6.0),        # mean 4.75
                uf_completion("Purple, maybe.", (3, "N/A", 3, 4), 9.0),  # mean of 3, 3, 4 = 3.333
                uf_completion("Seven.", (1, 2, 1, 1), 2.0),       # mean 1.25
                uf_completion("Red.", (4, 4, 4, 4), 7.0),         # mean 4
            ]}


def pair(fmt: RowFormat, index: int = 0) -> tuple[str, str, dict]:
    record = prepare(Record(uf_row(), "uf.jsonl:1"), fmt, "preference", index)
    return record.fields["chosen"], record.fields["rejected"], dict(record.labels)


def test_ultrafeedback_best_vs_worst_by_mean_aspect_rating():
    chosen, rejected, labels = pair(RowFormat(ultrafeedback_pairs="best_vs_worst"))
    assert (chosen, rejected) == ("Blue.", "Seven.")
    assert labels == {"prompt": "instruction", "chosen": "completions[0].response",
                      "rejected": "completions[2].response"}


def test_ultrafeedback_overall_score_and_one_aspect():
    assert pair(RowFormat(ultrafeedback_score="overall_score", ultrafeedback_pairs="best_vs_worst"))[:2] == (
        "Purple, maybe.", "Seven.")
    assert pair(RowFormat(ultrafeedback_score="honesty", ultrafeedback_pairs="best_vs_worst"))[:2] == (
        "Blue.", "Seven.")  # Purple's honesty is N/A: it takes no part


def test_ultrafeedback_best_vs_random_is_seeded_per_row_and_always_worse():
    fmt = RowFormat()
    rejected = {pair(fmt, index)[1] for index in range(40)}
    assert rejected == {"Purple, maybe.", "Seven.", "Red."}  # every strictly worse one, never the best
    assert [pair(fmt, i)[1] for i in range(10)] == [pair(fmt, i)[1] for i in range(10)]
    assert [pair(fmt, i)[1] for i in range(10)] != [pair(RowFormat(seed=1), i)[1] for i in range(10)]


def test_ultrafeedback_ties_and_unscored_rows_are_skipped_with_a_reason():
    row = uf_row()
    for c in row["completions"]:
        c["annotations"] = {"helpfulness": rating(3)}
    with pytest.raises(SkipExample, match="completions all tie"):
        prepare(Record(row, "r"), RowFormat(), "preference", 0)
    for c in row["completions"]:
        c["annotations"] = {"helpfulness": rating("N/A")}
    with pytest.raises(SkipExample, match="fewer than 2 scored completions"):
        prepare(Record(row, "r"), RowFormat(), "preference", 0)


def test_an_ultrafeedback_rating_that_is_no_number_names_its_field():
    row = uf_row()
    row["completions"][1]["annotations"]["truthfulness"]["Rating"] = "high"
    with pytest.raises(DataError, match="^uf.jsonl:1: field 'completions\\[1\\].annotations.truthfulness.Rating' "
                                        "must be a number \\(or \"N/A\"\\), got 'high'"):
        prepare(Record(row, "uf.jsonl:1"), RowFormat(), "preference", 0)


def test_ultrafeedback_rows_build_pairs_and_rankings(tmp_path, chat_tok):
    rows = [uf_row(), uf_row()]
    for c in rows[1]["completions"]:
        c["annotations"] = {"helpfulness": rating(2)}  # all tied: dropped and counted
    pairs = build_preference_dataset(rows, chat_tok, DataSettings(row_format=RowFormat(ultrafeedback_pairs="best_vs_worst")))
    assert len(pairs) == 1 and pairs.dropped == {"UltraFeedback row whose completions all tie": 1}
    ranked = build_ranking_dataset([uf_row()], chat_tok, DataSettings())
    order = [chat_tok.decode(ids) for ids in ranked.examples[0].completion_ids]
    assert order == ["Blue.<|im_end|>", "Red.<|im_end|>", "Purple, maybe.<|im_end|>", "Seven.<|im_end|>"]


def test_row_format_settings_are_checked():
    with pytest.raises(ConfigError, match="ultrafeedback_score must be one of mean_aspect"):
        RowFormat(ultrafeedback_score="best")
    with pytest.raises(ConfigError, match="ultrafeedback_pairs must be one of"):
        RowFormat(ultrafeedback_pairs="all")
