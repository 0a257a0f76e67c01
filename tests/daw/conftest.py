"""Fixtures the REAPER script tests share: each Lua version installed, and a scenario set-up whose hosts
are closed after the test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daw.harness import LUA_VERSIONS
from tests.daw.test_reaper_scripts import Setup


@pytest.fixture(params=LUA_VERSIONS, ids=lambda path: Path(path).name)
def lua(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    s = Setup(tmp_path)
    yield s
    for host in s.hosts:
        host.close()
