"""The architecture matrix, torch_compile (slow tier: about a minute of compilation per family on 2 cores):
with every family's decoder layers compiled, the default settings' log-probs and gradients still equal the
model's own forward.

The slow tier compiles one family per decoder-layer layout (``model.layers``, ``transformer.h``,
``gpt_neox.layers``, ``model.decoder.layers``), which keeps CI's slow step inside its time limit; set
``PREFTUNE_COMPILE_ALL=1`` to compile every family in the matrix (35-50 minutes on 2 cores)."""

import os

import pytest

from tests.architectures.matrix import ARCHS, COMPILE, TOLERANCE, Matrix

LAYOUTS = ["llama-gqa-tied", "gpt2", "gpt-neox", "opt"]   # one family per decoder-layer layout


@pytest.fixture(scope="module")
def matrix() -> Matrix:
    return Matrix()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS if os.environ.get("PREFTUNE_COMPILE_ALL") == "1" else LAYOUTS)
def test_compiled_layers_give_the_models_own_logprobs_and_gradients(matrix, arch):
    got = matrix.measure(arch, COMPILE)
    assert "compiled 2 layers" in got.applied
    graphs = int(got.applied.split(" graphs")[0].rsplit(" ", 1)[-1])
    assert graphs > 0, got.applied   # dynamo compiled this family's layers (no silent fallback to eager)
    assert got.logp <= TOLERANCE and got.grad <= TOLERANCE, (arch, got)
