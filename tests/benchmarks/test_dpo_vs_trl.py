"""benchmarks/dpo_vs_trl.py and its package benchmarks/vs_trl: the equivalence check passes on the tiny model
(TRL and preftune, prefix sharing included, compute the same DPO loss and gradients from the same token ids)
and catches a different β; the chat-shaped workload has the stated shape; the FLOP count by hand; the report
of three arms; the whole command on the tiny model."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("datasets")

from tests.benchmarks._load import BENCHMARKS, load_benchmark  # noqa: E402

load_benchmark("dpo_vs_trl")   # puts benchmarks/ on sys.path, as running the script does
from vs_trl import check, flops, report, workload  # noqa: E402
from vs_trl.settings import Settings  # noqa: E402


@pytest.fixture
def settings(tmp_path):
    model_dir = workload.prepare_model("tiny", tmp_path, max_length=64)
    return Settings(model="tiny", model_dir=str(model_dir), max_length=64, max_prompt_length=32, batch=2,
                    grad_accum=1, steps=2, beta=0.1, lr=1e-3, max_grad_norm=10.0, bf16=False, device="cpu",
                    threads=torch.get_num_threads(), seed=0, gradient_checkpointing=False, reference="default")


def _tokenizer(settings):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(settings.model_dir)


def test_pairs_are_deterministic_and_fit(settings):
    tok = _tokenizer(settings)
    a = workload.make_pairs(tok, 6, 64, 32, seed=3)
    assert a == workload.make_pairs(tok, 6, 64, 32, seed=3)
    for row in a:
        prompt = len(tok(row["prompt"])["input_ids"])
        assert prompt < 32
        for col in ("chosen", "rejected"):
            assert prompt + len(tok(row[col], add_special_tokens=False)["input_ids"]) + 1 <= 64


def test_chat_lengths_have_the_stated_medians_and_are_clipped():
    lengths = workload.chat_lengths(4000, 1024, 512, seed=0)
    prompts = sorted(p for p, _, _ in lengths)
    completions = sorted([c for _, c, _ in lengths] + [r for _, _, r in lengths])
    # Log-normal medians 160 and 300 (the clipping only touches the tails).
    assert abs(prompts[len(prompts) // 2] - 160) < 12
    assert abs(completions[len(completions) // 2] - 300) < 15
    assert max(prompts) == 511 and min(prompts) >= 4
    assert all(p + max(c, r) + 1 <= 1024 for p, c, r in lengths)
    # At another max_length the shape scales: medians 160/8 and 300/8 at 128.
    small = workload.chat_lengths(4000, 128, 64, seed=0)
    assert abs(sorted(p for p, _, _ in small)[2000] - 20) <= 2


def test_chat_pairs_hit_their_budgets_without_truncation(settings):
    tok = _tokenizer(settings)
    s = dataclasses.replace(settings, workload="chat", steps=10)
    rows = workload.build_pairs(s, tok)
    assert rows == workload.build_pairs(s, tok) and len(rows) == s.num_pairs
    budgets = workload.chat_lengths(s.num_pairs, s.max_length, s.max_prompt_length, s.seed)
    shortest = min(len(tok(w, add_special_tokens=False)["input_ids"]) for w in workload.PROMPT_WORDS)
    for (p, c, r), (tp, tc, tr) in zip(budgets, workload.pair_lengths(tok, rows)):
        # Within budget (completions: plus the EOS), unless the budget is below the shortest word.
        assert tp <= max(p, shortest) and tc - 1 <= max(c, 2) and tr - 1 <= max(r, 2)
        assert tp < s.max_prompt_length and tp + max(tc, tr) <= s.max_length   # nothing to truncate
    stats = workload.data_stats(workload.pair_lengths(tok, rows))
    assert stats["tokens_prompt_once"] < stats["tokens"]


def test_flops_by_hand():
    shape = flops.Shape(layer_weights=10, layers=2, attention_width=3, hidden=4, vocab=5)
    # forward(n=3, c=1) = 2·10·3 + 2·3·2·3·4 + 2·4·5·1 = 60 + 144 + 40
    assert shape.forward(3, 1) == 244
    assert shape.nominal([(2, 1, 1)]) == 4 * 2 * 244
    # shared: tokens 4, causal pairs 3 + 1·2 + 1 + 1·2 + 1 = 9: 4·(2·10·4 + 4·3·2·9 + 2·4·5·2) = 4·(80 + 216 + 80)
    assert shape.shared([(2, 1, 1)]) == 4 * 376


def test_shape_from_a_model_folder(settings):
    shape = flops.Shape.of(settings.model_dir)
    # The tiny Llama: 4 layers of q, k, v, o (128×128) and gate, up, down (128×256).
    assert (shape.layers, shape.attention_width, shape.hidden) == (4, 128, 128)
    assert shape.layer_weights == 4 * (4 * 128 * 128 + 3 * 128 * 256)


def _fake_run(arm: str, losses: list[float], tokens: list[int], seconds: float, rss: float, notes=()) -> dict:
    ends = [1.0 + seconds * (i + 1) / len(losses) for i in range(len(losses))]
    return {"framework": arm, "setup_s": 1.0, "steps": list(zip(losses, tokens)), "t_start": 1.0,
            "t_reference_done": 1.0, "step_ends": ends, "reference": "reference model run every step",
            "memory": {"train_peak_rss_mib": rss, "process_peak_rss_mib": rss}, "notes": list(notes)}


def test_report_of_three_arms(settings):
    runs = {"trl": [_fake_run("trl", [0.69, 0.5], [100, 120], 4.0, 1000.0)],
            "preftune": [_fake_run("preftune", [0.69, 0.5], [100, 120], 1.0, 400.0, ["prefix sharing: on (...)"])],
            "preftune-unshared": [_fake_run("preftune-unshared", [0.69, 0.5], [100, 120], 2.0, 500.0)]}
    stats = workload.data_stats([(10, 5, 5), (20, 3, 7)])
    fl = {"nominal": 4e9, "shared": 3e9, "peak_flops": 1e10, "peak_what": "given"}
    versions = {"trl": "1.16.0", "transformers": "5", "torch": "2", "params": "1M parameters"}
    table, summary = report.summarise(settings, runs, stats, None, versions, fl)
    assert "| tokens/s, end-to-end training phase (incl. reference) | 55.0 | 220.0 | 110.0 | 4.00× | 2.00× |" in table
    assert "| peak RSS during training phase, MiB | 1000 | 400 | 500 | 0.40× | 0.50× |" in table
    # 4e9 FLOPs in 4 s / 1 s / 2 s against 1e10 FLOP/s: 10 %, 40 %, 20 %; the work needed with sharing 3e9: 30 %.
    assert "| FLOP utilisation, every sequence whole (the same work for all) | 10.0 % | 40.0 % | 20.0 % |" in table
    assert "| FLOP utilisation of the work needed (prefix sharing: each prompt once) | 10.0 % | 30.0 % | 20.0 % |" \
        in table
    assert "identical (same data order)" in table
    assert summary["medians"]["preftune"]["tokens_per_s"] == 220.0
    json.dumps(summary)


def test_equivalence_check_passes_on_tiny_model(settings):
    rows = workload.make_pairs(_tokenizer(settings), settings.num_pairs, settings.max_length,
                               settings.max_prompt_length, settings.seed)
    result = check.equivalence_check(settings, rows, tol=1e-5, log=lambda _: None)
    assert result.ok, "\n".join(result.lines)
    assert result.details["token_mismatches"] == 0
    assert result.details["first_batch_identical"]
    assert any(line.startswith("prefix sharing: on") for line in result.lines)   # the shared layout was checked
    step0 = result.details["π = π_ref"]
    assert step0["loss_abs_diff"] <= 1e-5 and step0["grad_max_abs_diff"] <= 1e-5


def test_equivalence_check_catches_a_different_beta(settings, monkeypatch):
    """A 2% different β on preftune's side scales its gradients by 1.02: the check must call it void."""
    original = check.preftune_config
    monkeypatch.setattr(check, "preftune_config",
                        lambda *a, **k: dataclasses.replace(original(*a, **k), beta=settings.beta * 1.02))
    rows = workload.make_pairs(_tokenizer(settings), settings.num_pairs, settings.max_length,
                               settings.max_prompt_length, settings.seed)
    result = check.equivalence_check(settings, rows, log=lambda _: None)
    assert not result.ok
    assert result.details["π = π_ref"]["grad_max_rel_diff"] > 1e-2


def test_the_command_runs_three_arms_on_the_tiny_model(tmp_path):
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "dpo_vs_trl.py"), "--model", "tiny", "--workload", "chat", "--max-length",
         "64", "--batch", "2", "--steps", "2", "--repeats", "1", "--threads", "1", "--skip-check",
         "--frameworks", "trl", "preftune", "preftune-unshared", "--peak-gflops", "50", "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| | TRL | preftune | preftune, no prefix sharing | preftune / TRL | preftune, no prefix sharing / TRL |" \
        in proc.stdout
    summary = json.loads(out.read_text())
    assert summary["same_order"] and summary["loss_max_abs_diff"] < 1e-4
    assert summary["runs"]["preftune"][0]["notes"][0].startswith("prefix sharing: on")
    assert summary["runs"]["preftune-unshared"][0]["notes"] == []
    assert all(math.isfinite(m["mfu"]) for m in summary["medians"].values())
