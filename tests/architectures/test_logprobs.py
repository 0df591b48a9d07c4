"""The architecture matrix, log-probs: on every family (``preftune.tiny_architectures``) and under every
setting, preftune's per-sequence completion log-probs and their gradients equal the model's own forward
run on each sequence alone (logits → log-softmax → gather) within 1e-5 — two of the rows share a prompt,
so the default layout computes it once; an optimisation the family cannot take is refused when asked for
by name and off by default."""

import pytest

from tests.architectures.matrix import ARCHS, SETTINGS, TOLERANCE, Matrix

# Families whose decoder does not keep packed sequences apart (checked on a probe, ``packing.py``):
# learned positions from the attention mask (OPT), ALiBi from the mask (BLOOM), convolution / linear
# attention / state-space layers that run across the boundary (Qwen3.5, LFM2, Mamba), attention sinks
# under eager attention (GPT-OSS). Everything else packs by default.
PADDED_BY_DEFAULT = {"opt", "bloom", "qwen3.5", "lfm2", "mamba", "gpt-oss"}
# Families whose attention cannot run prefix sharing's per-segment layout (checked on a probe,
# ``prefix_sharing.py``): attention soft-capping (Gemma 2), their own attention code (Falcon, StableLM).
# They pack each sequence separately.
NOT_SHARED = {"gemma2", "stablelm", "falcon-rotary", "falcon-alibi"}
# Families with no module of a lean form (no Llama-formula RMSNorm or SwiGLU MLP, no grouped-query SDPA).
NOTHING_LEAN = {"gemma2", "gpt2", "gpt-neox", "falcon-rotary", "falcon-alibi", "opt", "bloom"}


@pytest.fixture(scope="module")
def matrix() -> Matrix:
    return Matrix()


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("arch", ARCHS)
def test_logprobs_and_gradients_equal_the_models_own_forward(matrix, arch, setting):
    got = matrix.measure(arch, SETTINGS[setting])
    if setting in ("packed", "shared") and arch in PADDED_BY_DEFAULT:
        assert got.applied == "packing refused"
        return
    if setting == "shared" and arch in NOT_SHARED:
        assert got.applied == "sharing refused"
        return
    if setting == "lean" and arch in NOTHING_LEAN:
        assert got.applied == "lean refused (nothing applies)"
        return
    assert "refused" not in got.applied
    if setting == "default":
        layout = "padded" if arch in PADDED_BY_DEFAULT else "packed" if arch in NOT_SHARED else "shared"
        assert got.applied.endswith(layout)
        assert ("lean off" in got.applied) == (arch in NOTHING_LEAN)
    assert got.logp <= TOLERANCE, f"{arch} {setting}: max |Δ log-prob| {got.logp:.2e} ({got.applied})"
    assert got.grad <= TOLERANCE, f"{arch} {setting}: max |Δ grad| {got.grad:.2e} ({got.applied})"
