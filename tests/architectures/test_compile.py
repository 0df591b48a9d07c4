"""The architecture matrix, torch_compile (slow tier: about a minute of compilation per family on 2 cores):
with every family's decoder layers compiled, the default settings' log-probs and gradients still equal the
model's own forward."""

import pytest

from tests.architectures.matrix import ARCHS, COMPILE, TOLERANCE, Matrix


@pytest.fixture(scope="module")
def matrix() -> Matrix:
    return Matrix()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_compiled_layers_give_the_models_own_logprobs_and_gradients(matrix, arch):
    got = matrix.measure(arch, COMPILE)
    assert "compiled 2 layers" in got.applied
    graphs = int(got.applied.split(" graphs")[0].rsplit(" ", 1)[-1])
    assert graphs > 0, got.applied   # dynamo compiled this family's layers (no silent fallback to eager)
    assert got.logp <= TOLERANCE and got.grad <= TOLERANCE, (arch, got)
