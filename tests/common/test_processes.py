"""What a killed run left behind is told by its owner tag from the work of a live process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bridge.common.processes import left_by_dead_process, owner_tag, remove_left_behind


def test_what_a_dead_process_of_this_machine_left_is_told_from_live_work(tmp_path: Path) -> None:
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True)
    dead_pid = int(ended.stdout)
    host = owner_tag().split("~")[0]  # "@<host>"
    assert owner_tag() == f"{host}~{os.getpid()}"
    assert left_by_dead_process(f".sam-partial-cli{host}~{dead_pid}-0123456789ab.tmp")
    assert left_by_dead_process(f"sam-bridge-{host}~{dead_pid}-x1y2z3")
    assert not left_by_dead_process(f".sam-partial-cli{owner_tag()}-0123456789ab.tmp")  # alive: us
    assert not left_by_dead_process(f".sam-partial-cli@other-studio~{dead_pid}-0123456789ab.tmp")  # not ours to judge
    assert not left_by_dead_process(".sam-partial-j-20240501-0007-0123456789ab.tmp")  # a daemon job's: no owner
    (tmp_path / f"sam-bridge-{host}~{dead_pid}-abc").mkdir()
    (tmp_path / f"sam-bridge-{host}~{dead_pid}-abc" / "step0.residual.wav").write_bytes(b"x")
    (tmp_path / f"sam-bridge-{owner_tag()}-def").mkdir()
    (tmp_path / "sam-bridge-notes").mkdir()
    remove_left_behind(tmp_path, "sam-bridge-")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"sam-bridge-{owner_tag()}-def", "sam-bridge-notes"])


def test_pid_space_names_this_boot_and_pid_namespace_the_same_way_every_time() -> None:
    from bridge.common.processes import pid_space

    if sys.platform.startswith("linux"):
        space = pid_space()
        assert space is not None and space.endswith(os.readlink("/proc/self/ns/pid")) and space == pid_space()
