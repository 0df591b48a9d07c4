"""benchmarks/load_memory.py: loading a bf16 checkpoint in its own dtype ('auto') takes half the weights and
measurably less peak memory than upcasting it to float32."""

import torch

from preftune.testing import tiny_llama, tiny_tokenizer
from tests.benchmarks._load import load_benchmark

bench = load_benchmark("load_memory")


def test_auto_loads_a_bf16_checkpoint_in_bf16_with_a_lower_peak(tmp_path):
    # ≈ 8.4M parameters: 32 MiB in float32, 16 in bf16 — well above the noise of a process's peak RSS.
    model = tiny_llama(len(tiny_tokenizer()), hidden_size=512, intermediate_size=1024, num_layers=8)
    model.to(torch.bfloat16).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    rows = {d: bench.measure(str(tmp_path), d) for d in ("float32", "auto")}   # a fresh process each
    assert rows["auto"]["weights_dtype"] == "bfloat16"
    assert rows["float32"]["weights_dtype"] == "float32"
    assert abs(rows["float32"]["weights_mib"] - 2 * rows["auto"]["weights_mib"]) < 0.01
    saved = rows["float32"]["weights_mib"] - rows["auto"]["weights_mib"]
    assert rows["float32"]["peak_mib"] - rows["auto"]["peak_mib"] > 0.5 * saved
    assert rows["auto"]["peak_mib"] >= 0.9 * rows["auto"]["weights_mib"]   # the weights themselves are paid
    assert "| auto | bfloat16 |" in bench.table(list(rows.values()))


def test_checkpoint_dtype_measures_a_copy_saved_in_that_dtype(tiny_model_dir, tmp_path, capsys):
    # A float32 folder (as preftune's embedded SmolLM2) measured as the bf16 checkpoint the Hub publishes.
    folder = bench.save_copy(str(tiny_model_dir), "bfloat16", str(tmp_path / "bf16"))
    assert bench.measure(folder, "auto")["weights_dtype"] == "bfloat16"
    bench.main([str(tiny_model_dir), "--checkpoint-dtype", "bfloat16", "--dtypes", "auto"])
    assert "| auto | bfloat16 |" in capsys.readouterr().out
