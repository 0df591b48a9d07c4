"""benchmarks/dpo_vs_trl.py: its equivalence check passes on the tiny model (TRL and preftune compute the
same DPO loss and gradients from the same token ids), so the timing comparison it gates is meaningful."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("datasets")

from tests.benchmarks._load import load_benchmark  # noqa: E402

bench = load_benchmark("dpo_vs_trl")


@pytest.fixture
def settings(tmp_path):
    model_dir = bench.prepare_model("tiny", tmp_path, max_length=64)
    return bench.Settings(model="tiny", model_dir=str(model_dir), max_length=64, max_prompt_length=32, batch=2,
                          grad_accum=1, steps=2, beta=0.1, lr=1e-3, max_grad_norm=10.0, bf16=False, device="cpu",
                          threads=torch.get_num_threads(), seed=0, gradient_checkpointing=False, reference="default")


def test_pairs_are_deterministic_and_fit(settings):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(settings.model_dir)
    a = bench.make_pairs(tok, 6, 64, 32, seed=3)
    assert a == bench.make_pairs(tok, 6, 64, 32, seed=3)
    for row in a:
        prompt = len(tok(row["prompt"])["input_ids"])
        assert prompt < 32
        for col in ("chosen", "rejected"):
            assert prompt + len(tok(row[col], add_special_tokens=False)["input_ids"]) + 1 <= 64


def test_equivalence_check_passes_on_tiny_model(settings):
    from transformers import AutoTokenizer

    rows = bench.make_pairs(AutoTokenizer.from_pretrained(settings.model_dir), settings.num_pairs,
                            settings.max_length, settings.max_prompt_length, settings.seed)
    result = bench.equivalence_check(settings, rows, tol=1e-5, log=lambda _: None)
    assert result.ok, "\n".join(result.lines)
    assert result.details["token_mismatches"] == 0
    assert result.details["first_batch_identical"]
    step0 = result.details["π = π_ref"]
    assert step0["loss_abs_diff"] <= 1e-5 and step0["grad_max_abs_diff"] <= 1e-5


def test_equivalence_check_catches_a_different_beta(settings, monkeypatch):
    """A 2% different β on preftune's side scales its gradients by 1.02: the check must call it void."""
    import dataclasses

    from transformers import AutoTokenizer

    original = bench.preftune_config
    monkeypatch.setattr(bench, "preftune_config",
                        lambda *a, **k: dataclasses.replace(original(*a, **k), beta=settings.beta * 1.02))
    rows = bench.make_pairs(AutoTokenizer.from_pretrained(settings.model_dir), settings.num_pairs,
                            settings.max_length, settings.max_prompt_length, settings.seed)
    result = bench.equivalence_check(settings, rows, log=lambda _: None)
    assert not result.ok
    assert result.details["π = π_ref"]["grad_max_rel_diff"] > 1e-2
