"""benchmarks/gpu_check.sh and gpu_check.py without a GPU: the arguments, the report files, the answer on a
machine without CUDA, and parts 1-3 (exactness, dtypes, one DPO step against TRL) run on the CPU."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from tests.benchmarks._load import BENCHMARKS, load_benchmark

gpu = load_benchmark("gpu_check")
SCRIPT = BENCHMARKS / "gpu_check.sh"


def test_arguments():
    a = gpu.parse_args([])
    assert (a.device, a.shape, a.steps, a.skip_throughput) == ("cuda", "1b", 8, False)
    a = gpu.parse_args(["--shape", "0.5b", "--steps", "3", "--skip-throughput", "--out", "x"])
    assert (a.shape, a.steps, a.skip_throughput, str(a.out)) == ("0.5b", 3, True, "x")
    with pytest.raises(SystemExit):
        gpu.parse_args(["--shape", "7b"])


def test_the_decoder_shapes_are_between_half_a_billion_and_one_and_a_half():
    from transformers import LlamaConfig, LlamaForCausalLM

    for shape in gpu.SHAPES.values():
        with torch.device("meta"):
            n = sum(p.numel() for p in LlamaForCausalLM(LlamaConfig(**shape)).parameters())
        assert 0.45e9 < n < 1.5e9


def test_report_files(tmp_path):
    results = {
        "environment": {"device": "cuda", "gpu": "NVIDIA H200", "torch": "2.11", "transformers": "5.17", "trl": "1.16.0"},
        "parts": {
            "logprobs fp32": {"ok": True, "chunked_vs_full_logps": 2e-6, "chunked_vs_full_grad_rel": 3e-7,
                              "shared_vs_padded_logps": 4e-6, "shared_vs_padded_token_logps": 1e-6,
                              "shared_vs_padded_grad_rel": 5e-7},
            "dtypes": {"ok": True, "bf16 weights": {"logps_dtype": "torch.float32", "values_dtype": "torch.float32",
                                                    "finite": True, "ok": True}},
            "dpo_vs_trl bf16": {"ok": False, "lines": ["FAIL π = π_ref: loss TRL 0.69, preftune 0.70"]},
            "throughput": {"ok": True, "table": "| | TRL | preftune |", "medians": {
                "trl": {"tokens_per_s": 1000.0, "train_peak": 5000.0, "mfu": 0.1},
                "preftune": {"tokens_per_s": 4000.0, "train_peak": 2000.0, "mfu": 0.4}}},
        },
        "seconds": 321.0,
    }
    json_path, md_path = gpu.write_report(results, tmp_path / "out")
    assert json.loads(json_path.read_text())["parts"]["throughput"]["medians"]["preftune"]["tokens_per_s"] == 4000.0
    md = md_path.read_text()
    assert md.startswith("## GPU check — NVIDIA H200 · torch 2.11")
    assert "| logprobs fp32 | chunked vs full logits: log-prob |Δ| 2.0e-06" in md
    assert "| dpo_vs_trl bf16 | FAIL π = π_ref: loss TRL 0.69, preftune 0.70 | FAIL |" in md
    assert "preftune: 4000.0 tokens/s, peak 2000 MiB, MFU 40.0 %" in md
    assert "| | TRL | preftune |" in md and "Total 321 s." in md


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without CUDA")
def test_without_cuda_it_says_so_and_writes_the_report(tmp_path):
    assert gpu.main(["--out", str(tmp_path)]) == 2
    assert json.loads((tmp_path / "gpu_check.json").read_text())["parts"]["cuda"]["error"] == "no CUDA device"


def test_parts_one_to_three_pass_on_the_cpu(tmp_path):
    pytest.importorskip("trl")
    assert gpu.main(["--device", "cpu", "--skip-throughput", "--out", str(tmp_path)]) == 0
    parts = json.loads((tmp_path / "gpu_check.json").read_text())["parts"]
    assert set(parts) == {"logprobs fp32", "logprobs bf16", "dtypes", "dpo_vs_trl fp32", "dpo_vs_trl bf16"}
    assert parts["logprobs fp32"]["shared_vs_padded_logps"] <= 1e-4


def _sh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_the_shell_script_arguments(tmp_path):
    assert _sh("--help").returncode == 0
    bad = _sh("--frobnicate")
    assert bad.returncode == 64 and "unknown argument --frobnicate" in bad.stderr
    assert _sh("--wheels", str(tmp_path / "missing")).returncode == 64
    (tmp_path / "w").mkdir()
    dry = _sh("--dry-run", "--wheels", str(tmp_path / "w"), "--out", "o", "--shape", "0.5b", "--", "--steps", "3")
    assert dry.returncode == 0
    install, run = dry.stdout.splitlines()
    assert "--no-index --no-deps" in install and str(tmp_path / "w") in install
    assert run.endswith("gpu_check.py --out o --shape 0.5b --time-limit 400 --steps 3")
    assert "trl==1.16.0" in _sh("--dry-run").stdout
