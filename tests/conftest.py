"""Shared test fixtures.

Reference data lives in ``../shared`` beside the checkout (CI lays it there too). It is required: a missing file is a
test failure, never a skip, so parity can't silently stop being checked.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MTP_SHARED_DIR", REPO.parent / "shared"))


def shared_file(*parts: str) -> Path:
    """Path of a required file under ``../shared``; fails the test when it is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"required reference file is missing: {path} (tests read ../shared beside the checkout)")
    return path


def load_reference(*parts: str):
    """A reference ``.pt`` file, loaded the safe way."""
    return torch.load(shared_file(*parts), map_location="cpu", weights_only=True)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Same thread count and seed for every test, so float results don't depend on test order."""
    torch.manual_seed(0)
    yield
