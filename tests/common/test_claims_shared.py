"""Claim markers on a folder shared by daemons running as different users (a group-shared folder, NFS):
each daemon must read the others' markers, and a marker it cannot read is held by someone, never free.
The two-user tests run the second daemon as `nobody` (root only); the mode tests run everywhere."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.common.claims import ClaimStore, claim_key, claims_dir
from bridge.common.file_gate import FileSnapshot


def make_source(folder: Path) -> tuple[Path, FileSnapshot]:
    path = folder / "take.wav"
    path.write_bytes(b"audio")
    snapshot = FileSnapshot.of(path)
    assert snapshot is not None
    return path, snapshot


def age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_done_and_released_markers_keep_the_mode_of_a_new_marker(tmp_path: Path, mask: int) -> None:
    """Before: they were rewritten through a private (0600) temp file, unreadable to a colleague's daemon."""
    previous = os.umask(mask)
    try:
        source, snapshot = make_source(tmp_path)
        holder = ClaimStore("studio-a", ttl=60)
        first = holder.try_claim(source, snapshot).claim
        assert first is not None
        created = stat.S_IMODE(os.stat(first.path).st_mode)
        holder.release(first)
        second = holder.try_claim(source, snapshot).claim
        assert second is not None
        holder.mark_done(second)
    finally:
        os.umask(previous)
    assert created == 0o644  # what O_CREAT with 0644 gives under either umask
    assert stat.S_IMODE(os.stat(first.path).st_mode) == created  # released
    assert stat.S_IMODE(os.stat(second.path).st_mode) == created  # done
    assert json.loads(first.path.read_text())["state"] == "released"
    assert json.loads(second.path.read_text())["state"] == "done"


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """A folder every user may write, outside pytest's private (0700) temp tree."""
    folder = Path(tempfile.mkdtemp(prefix="sam-shared-"))
    folder.chmod(0o777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def nobody() -> pwd.struct_passwd:
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("needs root, to run the second daemon as another user (nobody)")
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to run the second daemon as another user")
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("this system has no user nobody")


def claim_as_nobody(source: Path, snapshot: FileSnapshot, ttl: float) -> dict[str, object]:
    """Another daemon, as user nobody, tries to claim `source` (a real process, its own uid and gid)."""
    user = nobody()
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from bridge.common.claims import ClaimStore\n"
        "from bridge.common.file_gate import FileSnapshot\n"
        f"outcome = ClaimStore('studio-b', ttl={ttl}).try_claim(Path(sys.argv[1]), "
        f"FileSnapshot({snapshot.size}, {snapshot.mtime_ns}))\n"
        "print(json.dumps({'claimed': outcome.claim is not None, 'done_elsewhere': outcome.done_elsewhere, "
        "'holder': outcome.holder}))\n"
    )
    done = subprocess.run(
        ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
         sys.executable, "-c", code, str(source)],
        capture_output=True, text=True, timeout=60, check=False, env={**os.environ, "HOME": "/"})
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_a_file_done_by_one_user_is_never_taken_by_another_users_daemon(shared_folder: Path) -> None:
    """The reported double payment: the done marker was 0600, the other daemon read {} and took the file
    again once the marker was older than its TTL."""
    nobody()
    source, snapshot = make_source(shared_folder)
    claims_dir(source).mkdir(parents=True)
    claims_dir(source).chmod(0o777)  # as on a group-shared folder (umask 002): every daemon may claim
    holder = ClaimStore("studio-a", ttl=1)
    claim = holder.try_claim(source, snapshot).claim
    assert claim is not None
    holder.mark_done(claim)
    age(claim.path, 5)  # well past the TTL
    outcome = claim_as_nobody(source, snapshot, ttl=1)
    assert outcome == {"claimed": False, "done_elsewhere": True, "holder": ""}
    assert sorted(p.name for p in claim.path.parent.iterdir()) == [claim.path.name]  # no generation 2


def test_a_marker_another_user_cannot_read_counts_as_held(shared_folder: Path) -> None:
    """A private marker (left by an older sam-bridge, or a stricter umask) is never expired nor free."""
    nobody()
    source, snapshot = make_source(shared_folder)
    folder = claims_dir(source)
    folder.mkdir(parents=True)
    folder.chmod(0o777)
    marker = folder / f"{claim_key(source.name, snapshot)}.1.claim"
    marker.write_text(json.dumps({"source": source.name, "instance": "studio-a", "state": "done"}))
    marker.chmod(0o600)
    age(marker, 3600)
    outcome = claim_as_nobody(source, snapshot, ttl=1)
    assert outcome["claimed"] is False and outcome["holder"]
    assert sorted(p.name for p in folder.iterdir()) == [marker.name]


def test_a_marker_this_user_cannot_read_counts_as_held(tmp_path: Path) -> None:
    """The same, for a process that is not root (root reads any file, so it cannot see this case)."""
    if os.name != "posix" or os.geteuid() == 0:
        pytest.skip("root reads a 0000 file; the two-user test above covers root")
    source, snapshot = make_source(tmp_path)
    folder = claims_dir(source)
    folder.mkdir(parents=True)
    marker = folder / f"{claim_key(source.name, snapshot)}.1.claim"
    marker.write_text(json.dumps({"source": source.name, "instance": "studio-a", "state": "done"}))
    marker.chmod(0)
    age(marker, 3600)
    try:
        outcome = ClaimStore("studio-b", ttl=1).try_claim(source, snapshot)
    finally:
        marker.chmod(0o644)
    assert outcome.claim is None and outcome.holder
    assert sorted(p.name for p in folder.iterdir()) == [marker.name]
