"""The OSC server's tests share one setup: a recording stand-in for the job engine, a started server
that may read and write under a music folder, and a real UDP client on loopback (`client` here is that
device, not the root conftest's fal client)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.osc.server import OscServer
from tests.osc_helpers import OscClient, RecordingSink, running_server


@pytest.fixture
def music(tmp_path: Path) -> Path:
    root = tmp_path / "music"
    root.mkdir()
    return root


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
def server(sink: RecordingSink, music: Path) -> Iterator[OscServer]:
    with running_server(sink, source_roots=(music,), output_roots=(music,)) as started:
        yield started


@pytest.fixture
def client(server: OscServer) -> Iterator[OscClient]:
    device = OscClient(server.address)
    yield device
    device.close()
