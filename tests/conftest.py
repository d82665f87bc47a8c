"""Shared fixtures: one tiny experiment, prepared and built once per test session."""
from __future__ import annotations

import os

import pytest

TINY_BATCH = 16
TINY_SAMPLES = 64


@pytest.fixture(scope="session")
def experiments_root(tmp_path_factory):
    """Every experiment the tests make lives here; notebooks find it through the environment."""
    root = tmp_path_factory.mktemp("experiments")
    old = os.environ.get("DLRM_EXPERIMENTS_DIR")
    os.environ["DLRM_EXPERIMENTS_DIR"] = str(root)
    yield root
    if old is None:
        os.environ.pop("DLRM_EXPERIMENTS_DIR", None)
    else:
        os.environ["DLRM_EXPERIMENTS_DIR"] = old


@pytest.fixture(scope="session")
def tiny_experiment(experiments_root):
    from dlrmlib.prepare import prepare

    return prepare("tiny", preset="tiny", batch_size=TINY_BATCH, samples=TINY_SAMPLES, root=experiments_root,
                   log=lambda _: None)


@pytest.fixture(scope="session")
def tiny_build(tiny_experiment):
    from dlrmlib.building.build import build

    return build(tiny_experiment, log=lambda _: None)
