"""Shared test fixtures. Tests never touch the network: ultralytics runs offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures" / "seed_eval_casa_gio"


@pytest.fixture(scope="session")
def seed_fixture_dir() -> Path:
    """The published seed evaluation case; skips when ../shared is absent."""
    if not FIXTURES.is_dir():
        pytest.skip(f"../shared fixtures not present at {FIXTURES}")
    return FIXTURES
