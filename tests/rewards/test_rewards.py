"""Loading and calling reward functions: both conventions, None, weights, models by folder or Hub id."""

import math
import sys

import pytest
import torch

from preftune.errors import ConfigError
from preftune.rewards import RewardSet, call_reward, import_callable, load_reward, score
from preftune.rewards.verifiable import exact_answer


def test_an_installed_module_wins_over_a_same_named_file_in_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "colorsys.py").write_text("def rgb_to_hls(*a):\n    return 'shadow'\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    fn = import_callable("colorsys:rgb_to_hls")
    assert fn(1.0, 1.0, 1.0) != "shadow"


def test_a_module_next_to_the_working_directory_is_found(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_for_test.py").write_text("def length(prompts, completions):\n"
                                                     "    return [float(len(c)) for c in completions]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert import_callable("my_rewards_for_test:length")(["p"], ["abc"]) == [3.0]
    (tmp_path / "broken_rewards_for_test.py").write_text("import no_such_dependency_xyz\n")
    with pytest.raises(ConfigError, match="importing 'broken_rewards_for_test' failed.*no_such_dependency_xyz"):
        import_callable("broken_rewards_for_test:f")


def test_load_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module_xyz'"):
        load_reward("no_such_module_xyz:f")
    with pytest.raises(ConfigError, match="has no callable 'nope'"):
        load_reward("tests.stages.rl_rewards:nope")
    with pytest.raises(ConfigError, match="not a folder, not 'module:function', not a built-in"):
        load_reward(str(tmp_path / "missing"))
    assert load_reward("exact_answer") is exact_answer


def positional(p, c):
    return [float(len(x)) for x in c]


def trl_style(completions, **kwargs):
    assert kwargs["trainer_state"].global_step == 5 and kwargs["completion_ids"] == [[1, 2], [3]]
    return [1.0 if c == a else 0.0 for c, a in zip(completions, kwargs["answer"])]


def named(prompts, completions, answer):
    return [float(p == a) for p, a in zip(prompts, answer)]


def needs_a_column(completions, solution):
    return [0.0] * len(completions)


def test_both_calling_conventions_are_accepted():
    args = (["x", "y"], ["7", "no"], [[1, 2], [3]], {"answer": ["7", "3"], "topic": ["a", "b"]})
    extras = {"trainer_state": type("S", (), {"global_step": 5})()}
    assert call_reward(positional, "positional", *args, extras) == [1.0, 2.0]
    assert call_reward(trl_style, "trl_style", *args, extras) == [1.0, 0.0]
    assert call_reward(named, "named", *args, extras) == [0.0, 0.0]
    with pytest.raises(ConfigError, match="reward function needs_a_column needs solution.*answer, topic"):
        call_reward(needs_a_column, "needs_a_column", *args, extras)


def test_none_leaves_a_completion_out_and_weights_sum_the_rest():
    def maybe(completions, **_):
        return [None if c == "skip" else 1.0 for c in completions]

    def never(completions, **_):
        return [None] * len(completions)

    rewards = RewardSet(["exact_answer", "answer_format"], [2.0, 0.5])
    rewards.functions = [exact_answer, maybe]           # the real first, a None-returning second
    out = rewards(["p"] * 3, ["7", "skip", "<answer>3</answer>"], [[], [], []], {"answer": ["7", "7", None]})
    assert out.per_function[:, 0].tolist()[:2] == [1.0, 0.0] and math.isnan(out.per_function[2, 0])
    assert out.per_function[:, 1].tolist()[0] == 1.0 and math.isnan(out.per_function[1, 1])
    assert out.total[:2].tolist() == [2.5, 0.0] and out.total[2].item() == 0.5
    rewards.functions = [never, never]
    assert torch.isnan(rewards(["p"], ["x"], [[]], {}).total).all()


def test_scores_are_checked_for_count_and_finiteness():
    with pytest.raises(ValueError, match="non-finite score .*return None"):
        score(lambda p, c: [float("nan")] * len(c), ["p"], ["x"])
    with pytest.raises(ValueError, match="returned 1 scores for 2"):
        score(lambda p, c: [1.0], ["p", "p"], ["x", "y"])
    with pytest.raises(ValueError, match="returned None for completion 0"):
        score(lambda p, c: [None], ["p"], ["x"])
    with pytest.raises(ConfigError, match="reward_weights has 1 entries but reward_funcs has 2"):
        RewardSet(["exact_answer", "answer_format"], [1.0])


@pytest.fixture
def reward_model_dir(tiny_model_dir, tmp_path):
    from preftune.modeling.load import load_tokenizer
    from preftune.modeling.reward_model import load_reward_model

    folder = tmp_path / "tiny-rm"
    tokenizer = load_tokenizer(str(tiny_model_dir))
    load_reward_model(str(tiny_model_dir), tokenizer=tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_reward_model_by_folder_or_by_hub_id_scores_the_same(reward_model_dir, offline_hub):
    from preftune.testing import save_to_hub_cache

    save_to_hub_cache(reward_model_dir, "tiny-org/tiny-rm", offline_hub)
    prompts, completions = ["Review number 1:", "Review number 2:"], ["good great", "bad"]
    by_folder = RewardSet([str(reward_model_dir)])
    by_hub = RewardSet(["tiny-org/tiny-rm"])
    a = by_folder(prompts, completions, [[], []]).total
    assert torch.isfinite(a).all() and a[0] != a[1]
    assert torch.equal(a, by_hub(prompts, completions, [[], []]).total)
    assert by_folder.names == ["tiny-rm"] and by_hub.names == ["tiny-rm"]


def test_conversational_prompts_give_keyword_functions_trls_message_completions():
    seen = {}

    def trl_conversational(prompts, completions, **kwargs):
        seen["completion"] = completions[0]
        return [1.0 if c[0]["content"] == "4" else 0.0 for c in completions]

    prompt = [{"role": "user", "content": "2 + 2?"}]
    assert call_reward(trl_conversational, "f", [prompt], ["4"], [[]], {}, {}) == [1.0]
    assert seen["completion"] == [{"role": "assistant", "content": "4"}]
    assert call_reward(positional, "positional", [prompt], ["4"], [[]], {}, {}) == [1.0]   # strings, as before
    assert call_reward(exact_answer, "exact_answer", [prompt], ["2 + 2 = 4"], [[]], {"answer": ["4"]}, {}) == [1.0]
