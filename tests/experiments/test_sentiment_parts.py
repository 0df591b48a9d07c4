"""The pieces of `preftune experiment sentiment`: the KL estimator, best-of-N, pairs, the verdict, the split,
the config."""

import math
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from preftune.config import to_dict
from preftune.data.dataset import DataSettings
from preftune.data.prompts import build_prompt_dataset
from preftune.errors import ConfigError
from preftune.experiments.config import GPU_PRESET, METHODS, load_experiment_config
from preftune.experiments.data import make_pairs
from preftune.experiments.frontier import Point, envelope, frontier_at, pareto, verdict
from preftune.experiments.sampling import best_of_n, best_of_n_kl, mean_sem, point_metrics, sample
from preftune.modeling.logprobs import SequenceLogprobModel
from preftune.testing import tiny_llama, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[2]
NAN = float("nan")


def constant_reward(prompts, completions):
    return [0.5] * len(completions)


def prompts_for(tokenizer, n):
    rows = [{"prompt": f"Review number {i}:"} for i in range(n)]
    settings = DataSettings(max_length=32, max_prompt_length=16, use_chat_template=False)
    return build_prompt_dataset(rows, tokenizer, settings).examples


def peaked_llama(vocab, seed):
    """A tiny random Llama with a large init, so its next-token distributions are far from uniform."""
    return tiny_llama(vocab, seed=seed, initializer_range=0.5).eval()


def test_kl_of_a_policy_against_itself_is_exactly_zero():
    tok = tiny_tokenizer()
    model = peaked_llama(len(tok), seed=0)
    same = SequenceLogprobModel(peaked_llama(len(tok), seed=0))
    s = sample(model, tok, prompts_for(tok, 4), 3, constant_reward, max_new_tokens=5, batch_size=8, seed=0,
               device=torch.device("cpu"), reference=same)
    assert [v for g in s.kl for v in g] == [0.0] * 12
    m = point_metrics(s)
    assert m["kl"] == 0.0 and m["n"] == 12 and m["reward"] == 0.5


def exact_kl_two_tokens(p_model: LlamaForCausalLM, q_model: LlamaForCausalLM, prompt: list[int], eos: int) -> float:
    """KL over completions of at most 2 tokens (the first may be EOS, which ends it), by enumeration."""
    with torch.no_grad():
        ids = torch.tensor([prompt])
        lp1 = p_model(ids).logits[0, -1].log_softmax(-1)
        lq1 = q_model(ids).logits[0, -1].log_softmax(-1)
        vocab = lp1.shape[0]
        two = torch.cat([ids.repeat(vocab, 1), torch.arange(vocab).unsqueeze(1)], dim=1)
        lp2 = p_model(two).logits[:, -1].log_softmax(-1)
        lq2 = q_model(two).logits[:, -1].log_softmax(-1)
    second = (lp2.exp() * (lp2 - lq2)).sum(-1)   # KL of the second token given the first
    second[eos] = 0.0                              # EOS first: the completion has ended
    return float((lp1.exp() * (lp1 - lq1 + second)).sum())


def test_kl_estimate_is_unbiased_against_the_exact_sequence_kl():
    tok = tiny_tokenizer()
    policy, ref = peaked_llama(len(tok), seed=1), peaked_llama(len(tok), seed=2)
    prompts = prompts_for(tok, 1)
    exact = exact_kl_two_tokens(policy, ref, list(prompts[0].prompt_ids), tok.eos_token_id)
    s = sample(policy, tok, prompts, 3000, constant_reward, max_new_tokens=2, batch_size=1000, seed=0,
               device=torch.device("cpu"), reference=SequenceLogprobModel(ref))
    values = torch.tensor(s.kl[0], dtype=torch.float64)
    se = float(values.std() / math.sqrt(len(values)))
    assert exact > 0.5  # the test has teeth: a far-from-trivial KL
    assert abs(float(values.mean()) - exact) < 4 * se, (float(values.mean()), exact, se)


def test_best_of_n_kl_and_reward_by_hand():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16)
    # prompt 0: groups of 2 -> max(1, 4) = 4, max(2, 3) = 3; prompt 1: max(0, 0) = 0, max(1, 0) = 1
    m = best_of_n([[1, 4, 2, 3], [0, 0, 1, 0]], 2)
    assert m["reward"] == pytest.approx(2.0) and m["n"] == 4 and m["kl"] == pytest.approx(best_of_n_kl(2))
    assert m["reward_sem"] == pytest.approx(1.5)  # per-prompt means 3.5 and 0.5: sd 3/√2, / √2
    assert best_of_n([[1, 4, 2, 3]], 4)["reward"] == 4.0
    with pytest.raises(ValueError, match="needs >= 8 samples"):
        best_of_n([[1, 2]], 8)


def test_mean_sem_is_over_prompts():
    mean, sem = mean_sem([[1.0, 3.0], [5.0, 7.0]])
    assert mean == 4.0 and sem == pytest.approx(2.0)  # per-prompt means 2 and 6: sd 2√2, / √2


def pt(method, reward, kl, step=1, run=None):
    return Point(method, run or method, 0.1, step, reward, 0.01, kl, 0.01, 10)


def test_verdict_dominates_mixed_and_not():
    sft = pt("sft", 0.5, 0.0, step=0)
    dpo = [pt("dpo", 0.6, 1.0), pt("dpo", 0.7, 2.0)]  # DPO frontier: 0.5 + 0.1 · KL up to KL 2, then flat
    v = verdict([sft, *dpo, pt("ppo_gt", 0.64, 1.5), pt("ppo_rm", 0.7, 2.0), pt("ppo_rm", 0.7, 9.0)])
    assert v.label == "dominates" and v.dominated == 3  # on the frontier counts
    assert v.rows[0][1] == pytest.approx(0.65)          # interpolated between π_SFT and (2, 0.7)
    v = verdict([sft, *dpo, pt("ppo_gt", 0.64, 1.5), pt("ppo_gt", 0.66, 1.5)])
    assert v.label == "mixed" and (v.dominated, v.total) == (1, 2)
    assert "partly dominates (mixed)" in v.text
    v = verdict([sft, *dpo, pt("ppo_gt", 0.9, 0.5)])
    assert v.label == "does not dominate" and v.reverse == 2  # PPO's frontier is above both DPO points
    # A PPO point that lost reward is under the frontier that starts at π_SFT; one at negative KL (a noisy
    # estimate) is below the first vertex, so nothing dominates it.
    assert verdict([sft, pt("dpo", 0.6, 3.0), pt("ppo_gt", 0.4, 1.0)]).label == "dominates"
    assert verdict([sft, pt("dpo", 0.6, 3.0), pt("ppo_gt", 0.51, -0.01)]).label == "does not dominate"
    assert verdict([sft, *dpo]).label == "no data"


def test_verdict_counts_significant_margins():
    v = verdict([Point("dpo", "d", 0.1, 1, 0.9, 0.01, 1.0, 0.0, 10), Point("ppo_gt", "p", 0.1, 1, 0.5, 0.01, 1.0, 0, 10),
                 Point("ppo_gt", "p", 0.1, 2, 0.89, 0.01, 1.0, 0.0, 10)])
    assert v.label == "dominates" and v.significant == 1
    assert v.qualifier.startswith(", but only 1 of the 2 margins")


def test_pareto_and_concave_envelope():
    pts = [pt("dpo", 0.5, 0.0, step=0), pt("dpo", 0.7, 1.0), pt("dpo", 0.65, 2.0), pt("dpo", 0.75, 2.5),
           pt("dpo", 0.9, 3.0)]
    assert [(p.kl, p.reward) for p in pareto(pts)] == [(0.0, 0.5), (1.0, 0.7), (2.5, 0.75), (3.0, 0.9)]
    # (2.5, 0.75) lies under the segment (1, 0.7)–(3, 0.9): a mixture of those two policies beats it
    assert [(p.kl, p.reward) for p in envelope(pts)] == [(0.0, 0.5), (1.0, 0.7), (3.0, 0.9)]
    assert frontier_at(envelope(pts), 2.0)[0] == pytest.approx(0.8)
    assert frontier_at(envelope(pts), 7.0)[0] == 0.9 and frontier_at(envelope(pts), -0.1) is None


def test_pairs_best_vs_worst_and_bradley_terry():
    samples = [{"prompt": "a", "completions": [" x", " y", " z", ""], "rewards": [0.2, 0.9, 0.5, 1.0]},
               {"prompt": "b", "completions": [" x", " x"], "rewards": [0.3, 0.3]},          # duplicates: no pair
               {"prompt": "c", "completions": [" u", " v"], "rewards": [0.4, 0.4]}]          # tie: no pair
    pairs = make_pairs(samples, "best_vs_worst", 1, 1.0, 0)
    assert pairs == [{"prompt": "a", "chosen": " y", "rejected": " x", "chosen_reward": 0.9, "rejected_reward": 0.2}]
    # Several disjoint pairs, outside in: ranked .9 .7 .6 .5 .3 .1 -> (.9, .1), (.7, .3), then (.6, .5)
    six = [{"prompt": "d", "completions": [" a", " b", " c", " d", " e", " f"],
            "rewards": [0.1, 0.9, 0.5, 0.7, 0.3, 0.6]}]
    assert [(p["chosen"], p["rejected"]) for p in make_pairs(six, "best_vs_worst", 2, 1.0, 0)] == [(" b", " a"),
                                                                                                   (" d", " e")]
    assert [(p["chosen_reward"], p["rejected_reward"]) for p in make_pairs(six, "best_vs_worst", 9, 1.0, 0)] == [
        (0.9, 0.1), (0.7, 0.3), (0.6, 0.5)]
    tied = [{"prompt": "t", "completions": [" a", " b", " c", " d"], "rewards": [0.5, 0.5, 0.9, 0.1]}]
    assert len(make_pairs(tied, "best_vs_worst", 2, 1.0, 0)) == 1  # the middle pair ties: skipped
    bt = make_pairs(samples[:1] * 50, "bradley_terry", 3, 1000.0, 0)  # huge scale: labels follow r*
    assert len(bt) == 150 and all(p["chosen_reward"] > p["rejected_reward"] for p in bt)
    noisy = make_pairs(samples[:1] * 400, "bradley_terry", 1, 1.0, 0)
    wrong = sum(p["chosen_reward"] < p["rejected_reward"] for p in noisy) / len(noisy)
    assert 0.3 < wrong < 0.5  # σ(Δr) with Δr in [0.3, 0.7]: 33–43% of labels go the other way


def test_split_is_disjoint_and_prompts_are_2_to_8_words():
    from preftune.experiments.data import split_reviews

    s = split_reviews(40, 12, 20, min_words=2, max_words=8, sft_max_words=10, seed=3)
    prompt_rows = {r["review_row"] for r in s.train_prompts + s.eval_prompts}
    sft_rows = {r["review_row"] for r in s.sft_rows}
    assert len(prompt_rows) == 52 and len(sft_rows) == 20
    assert not prompt_rows & sft_rows and not (prompt_rows | sft_rows) & set(s.classifier_rows)
    assert not {r["prompt"] for r in s.train_prompts} & {r["prompt"] for r in s.eval_prompts}
    lengths = [len(r["prompt"].split()) for r in s.train_prompts + s.eval_prompts]
    assert min(lengths) >= 2 and max(lengths) <= 8 and len(set(lengths)) > 3
    assert sum(r["label"] for r in s.train_prompts) == 20  # balanced
    assert all(r["completion"].startswith(" ") and len(r["completion"].split()) <= 10 for r in s.sft_rows)
    assert s == split_reviews(40, 12, 20, min_words=2, max_words=8, sft_max_words=10, seed=3)


def test_config_files_match_the_built_in_sizes():
    cpu = load_experiment_config(ROOT / "configs" / "experiment_sentiment.yaml")
    assert to_dict(cpu) == to_dict(load_experiment_config())
    gpu = load_experiment_config(ROOT / "configs" / "experiment_sentiment_gpu.yaml")
    assert to_dict(gpu) == to_dict(load_experiment_config(gpu=True))
    assert all(getattr(gpu, k) == v for k, v in GPU_PRESET.items())
    assert load_experiment_config(None, ["size=gpu", "ppo_max_steps=7"]).ppo_max_steps == 7  # yours win


def test_config_reports_every_problem_at_once():
    with pytest.raises(ConfigError) as e:
        load_experiment_config(None, ["samples_per_prompt=1", "rloo_num_generations=1", "ppo_kl_coefs=[-1]",
                                      "num_eval_prompts=0"])
    text = str(e.value)
    assert text.startswith("5 problems")  # pairs_per_prompt 1 > 1/2 too
    for part in ("samples_per_prompt must be >= 2", "rloo_num_generations must be >= 2", "ppo_kl_coefs: every value",
                 "num_eval_prompts must be > 0", "pairs_per_prompt (1) must be <= samples_per_prompt / 2"):
        assert part in text, part


def test_online_method_keys_are_checked_all_at_once():
    with pytest.raises(ConfigError) as e:
        load_experiment_config(None, ["methods=[grpo,online_dpo]", "grpo_num_generations=1", "grpo_batch_size=0",
                                      "grpo_betas=[]", "online_dpo_betas=[0.1,0]", "online_dpo_learning_rate=-1"])
    text = str(e.value)
    assert text.startswith("5 problems")
    for part in ("grpo_num_generations must be >= 2", "grpo_batch_size must be > 0, got 0",
                 "methods includes grpo but grpo_betas is empty", "online_dpo_betas: every value must be > 0, got [0.1, 0.0]",
                 "online_dpo_learning_rate must be > 0, got -1.0"):
        assert part in text, part
    cfg = load_experiment_config()
    assert ("grpo", "online_dpo") == tuple(m for m in cfg.methods if m in ("grpo", "online_dpo"))
    assert (cfg.grpo_betas, cfg.grpo_num_generations, cfg.grpo_batch_size, cfg.grpo_learning_rate) == ([0.03, 0.3], 4, 8, 2e-5)
    assert (cfg.online_dpo_betas, cfg.online_dpo_batch_size, cfg.online_dpo_learning_rate) == ([0.1, 0.5], 8, 3e-5)


def test_every_method_has_a_trainer_and_new_sweeps_only_add_runs():
    from preftune.experiments.catalog import METHODS
    from preftune.experiments.methods import TRAINERS, run_specs
    from preftune.experiments.sentiment import ADDITIVE

    assert set(TRAINERS) == set(METHODS)
    assert {"methods", "grpo_betas", "online_dpo_betas"} <= set(ADDITIVE)
    assert not {"grpo_batch_size", "online_dpo_learning_rate"} & set(ADDITIVE)  # these change what a run measures
    names = [s.name for s in run_specs(load_experiment_config(None, ["methods=[rloo,grpo,online_dpo]"]))]
    assert names == ["rloo_kl0.03", "rloo_kl0.3", "grpo_beta0.03", "grpo_beta0.3", "online_dpo_beta0.1",
                     "online_dpo_beta0.5"]


def test_the_cpu_size_leaves_ppo_rm_out_and_the_gpu_size_runs_every_method():
    cpu, gpu = load_experiment_config(), load_experiment_config(gpu=True)
    assert "ppo_rm" not in cpu.methods and {"dpo", "ppo_gt", "rloo", "grpo", "online_dpo", "bon"} <= set(cpu.methods)
    assert gpu.methods == list(METHODS)
    assert "ppo_rm" in load_experiment_config(None, ["methods=[dpo,ppo_rm]"]).methods
    assert cpu.num_eval_prompts == 96 and cpu.eval_samples_per_prompt == 2  # the pilot's paired size (86), rounded up


def test_pilot_size_writes_next_to_the_run():
    cfg = load_experiment_config(None, ["output_dir=out/x"], pilot=True)
    assert cfg.size == "pilot" and cfg.output_dir == "out/x/pilot" and cfg.eval_samples_per_prompt >= 2
    assert load_experiment_config(None, ["size=pilot"]).output_dir == "runs/experiment_sentiment/pilot"
    with pytest.raises(ConfigError, match="choose one"):
        load_experiment_config(None, [], gpu=True, pilot=True)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown config key 'dpo_beta'"):
        load_experiment_config(None, ["dpo_beta=0.1"])
    with pytest.raises(ConfigError, match="methods: unknown 'ppo'; known: dpo, ipo, ppo_gt, ppo_rm, rloo, grpo, "
                                          "online_dpo, bon$"):
        load_experiment_config(None, ["methods=[dpo,ppo]"])
    with pytest.raises(ConfigError, match="samples_per_prompt must be >= 2"):
        load_experiment_config(None, ["samples_per_prompt=1"])
    with pytest.raises(ConfigError, match="classifier_max_reviews is set but reward"):
        load_experiment_config(None, ["reward=my:fn", "classifier_max_reviews=100"])
    with pytest.raises(ConfigError, match="--gpu given but the config says size: cpu"):
        load_experiment_config(None, ["size=cpu"], gpu=True)


def test_cli_has_the_experiment_subcommand(capsys):
    from preftune.cli import main

    with pytest.raises(SystemExit):
        main(["experiment", "sentiment", "--help"])
    assert "dpo_betas" in capsys.readouterr().out
    assert main(["experiment", "sentiment", "no_such_key=1"]) == 2
    assert main(["experiment", "sentiment", "--until", "no_such_stage", "output_dir=/nonexistent/x"]) == 2
    assert "until: no stage 'no_such_stage'" in capsys.readouterr().err


def test_a_folder_made_before_a_key_existed_resumes_while_the_key_keeps_its_default(tmp_path):
    import json

    from preftune.experiments.sentiment import SentimentExperiment

    cfg = load_experiment_config(None, [f"output_dir={tmp_path}"])
    SentimentExperiment(cfg).check_settings()
    saved = json.loads((tmp_path / "experiment.json").read_text())
    del saved["settings"]["rloo_batch_size"]  # as written by a version without the key
    (tmp_path / "experiment.json").write_text(json.dumps(saved))
    SentimentExperiment(cfg).check_settings()
    SentimentExperiment(load_experiment_config(None, [f"output_dir={tmp_path}", "dpo_betas=[2.0]"])).check_settings()
    with pytest.raises(ConfigError, match="rloo_batch_size: 8 -> 3"):
        SentimentExperiment(load_experiment_config(None, [f"output_dir={tmp_path}", "rloo_batch_size=3"])
                            ).check_settings()


def _tiny_pipeline():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    texts = ["good great fine", "bad awful poor", "great good", "awful bad"] * 3
    return make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(texts, [1, 0, 1, 0] * 3)


def test_the_rstar_classifier_file_holds_numbers_and_scores_as_trained(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    from preftune.experiments import rstar

    pipeline = _tiny_pipeline()
    path = tmp_path / "classifier.npz"
    rstar.save(pipeline, path, include_prompt=False)
    monkeypatch.setenv(rstar.ENV, str(path))
    rstar._load.cache_clear()
    texts = ["good film", "awful film"]
    assert rstar.positive_probability(["p", "p"], texts) == [float(p) for p in pipeline.predict_proba(texts)[:, 1]]


def test_a_planted_pickle_as_the_rstar_classifier_runs_nothing(tmp_path, monkeypatch):
    # Old behaviour: joblib.load of $PREFTUNE_SENTIMENT_RSTAR, i.e. unpickling whatever file it names.
    pytest.importorskip("sklearn")
    from preftune.assets.cache import write_verified
    from preftune.experiments import rstar
    from tests.conftest import pickle_payload

    path, marker = tmp_path / "classifier.npz", tmp_path / "payload-ran"
    write_verified(path, lambda tmp: tmp.write_bytes(pickle_payload(marker)))   # checksum made to match
    monkeypatch.setenv(rstar.ENV, str(path))
    rstar._load.cache_clear()
    with pytest.raises(ConfigError, match=rf"{path}: .*the cache file {path} is damaged \(it cannot be read"):
        rstar.positive_probability(["p"], ["good"])
    assert not marker.exists()
