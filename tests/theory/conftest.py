"""One run of every demonstration on the quick settings, shared by the theory tests."""

from __future__ import annotations

import pytest

from preftune.theory.demos import Settings, run_all
from preftune.theory.world import TabularWorld


@pytest.fixture(scope="session")
def results():
    world = TabularWorld.make(seed=0)
    return world, run_all(world, Settings.quick())
