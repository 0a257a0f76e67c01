"""Fixtures of the command tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TEST_KEY


@pytest.fixture
def keyed(user_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The per-user folders, with a (test) fal key set: commands that need one run."""
    monkeypatch.setenv("FAL_KEY", TEST_KEY)
    return user_dirs
