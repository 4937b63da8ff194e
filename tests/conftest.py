"""Shared fixtures: a cache folder per test session and the demo models trained once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demo models are cached in a session folder (never the user's cache); override with BASTION_TEST_CACHE."""
    folder = Path(os.environ.get("BASTION_TEST_CACHE") or tmp_path_factory.mktemp("bastion-cache"))
    os.environ["BASTION_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def digits_demo(_isolated_cache: Path):
    """The demo digits CNN (trained on first use), its files and data."""
    from bastion.demo.cache import demo_model

    return demo_model("digits-cnn", progress=False)


@pytest.fixture(scope="session")
def cancer_demo(_isolated_cache: Path):
    """The demo breast-cancer MLP (trained on first use), its files and data."""
    from bastion.demo.cache import demo_model

    return demo_model("breast-cancer-mlp", progress=False)
