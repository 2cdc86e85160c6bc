"""Shared test fixtures. Tests never touch the network: ultralytics runs offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def eval_fixture_dir() -> Path:
    """The real exo->ego evaluation case with published metrics (tests/fixtures/README.md)."""
    return FIXTURES / "eval_casa_gio"
