"""Cross-daemon claims: several sam-bridge daemons (studio machines) on one shared folder never both
process a file.

A claim is a small marker file in `.sam-bridge/claims/` beside the source, created with
O_CREAT|O_EXCL, which is atomic on local disks, SMB and NFSv3+. Each file version (name, size, mtime, and
a variant the way in may add: a hot folder's sidecar content) has numbered generations
`<key>.<gen>.claim`; the highest one is the live claim. Its holder refreshes the marker's mtime while the
job runs. A marker not refreshed for `ttl` seconds (or whose process on
this machine has ended) belongs to a dead holder; a released marker (job failed, or not submitted)
is free. Either way the next daemon claims by creating the next generation with O_EXCL, so of several
racing daemons exactly one wins. Generations are never deleted while their file version exists — a
directory listing may miss entries created or removed during it, and a deleted generation could be
created a second time — only `prune` clears markers of versions that are gone. A finished job leaves
its marker in state "done", which never expires. Markers are readable by every user (daemons sharing a
folder may run as different users); one this daemon may not read is held by someone, never free.

Staleness compares the marker's mtime, set by the holder's clock, with the reader's clock: keep `ttl`
well above the clock skew between machines (the default 120 s is).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import stat
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from bridge.common import stems
from bridge.common.file_gate import FileSnapshot
from bridge.common.processes import process_alive
from bridge.common.small_files import KIB, read_small_text
from bridge.common.stems import write_atomically

log = logging.getLogger(__name__)

STATE_DIR_NAME = ".sam-bridge"  # claims live here, beside the sources
CLAIMS_DIR_NAME = "claims"
# Every daemon sharing the folder, whatever user it runs as, must read every marker: a marker it cannot
# read counts as held (never free), so a private one would block the file for the others for good.
MARKER_MODE = 0o644
WINDOWS_RECHECK = 1.0  # seconds: Windows refuses to open a marker being deleted or replaced, briefly
# Markers say which format wrote them. Format 2 keys a hot folder file with a sidecar by the sidecar's content
# too (the key's variant); a marker without a format is older: it has the bare key (name, size, mtime) for
# every file, sidecar or not, so its "done" covers the file whatever its sidecar holds now (a rolling upgrade
# of daemons sharing a folder must not pay for their predecessors' finished files again).
MARKER_FORMAT = 2


class ClaimState(StrEnum):
    active = "active"
    released = "released"
    done = "done"


@dataclass(frozen=True)
class Claim:
    """A claim this instance holds."""

    path: Path
    source: Path
    generation: int
    key: str = ""  # a database claim's row key (its `path` is then only for messages)


@dataclass(frozen=True)
class ClaimOutcome:
    claim: Claim | None  # set when this instance now holds the file
    done_elsewhere: bool = False  # another holder finished it: never take it
    done_by: str = ""  # the instance that finished it (a request folder's daemon knows its own, restarted)
    holder: str = ""  # who holds it, when someone else does
    recheck_after: float = 0.0  # seconds until the other holder's claim could expire


class ClaimBackend(Protocol):
    """What the hot folder and the request folder need of a claim store: marker files (`ClaimStore`, a
    workstation's default) or rows in the team database (`bridge.engine.journal.claims_pg`)."""

    instance_id: str

    def try_claim(self, source: Path, snapshot: FileSnapshot, variant: str = "", *, slot: bool = True) -> ClaimOutcome:
        """`slot`: False for a claim marked done at once (a cover), which needs no free slot."""
        ...

    def refresh(self, claim: Claim) -> bool: ...

    def mark_done(self, claim: Claim) -> None: ...

    def release(self, claim: Claim) -> None: ...

    def forget_done(self, source: Path, snapshot: FileSnapshot, variant: str = "") -> None: ...

    def prune(self, folder: Path) -> int: ...

    def busy(self) -> bool:
        """True while this daemon holds as many claims as it can work on: the rest is left to the others."""
        ...


class ClaimStore:
    """Claims of one daemon instance. Thread-safe: every operation is a single filesystem step."""

    def __init__(self, instance_id: str, ttl: float = 120.0) -> None:
        self.instance_id = instance_id
        self.ttl = ttl
        self.host = socket.gethostname()
        self._warned: set[Path] = set()

    def try_claim(self, source: Path, snapshot: FileSnapshot, variant: str = "", *, slot: bool = True) -> ClaimOutcome:
        """`variant`: what else makes this version (a hot folder's sidecar content); "" for none."""
        folder = claims_dir(source)
        folder.mkdir(parents=True, exist_ok=True)
        key = claim_key(source.name, snapshot, variant)
        generations = _generations(folder, key)
        read = {gen: self._read(folder / _name(key, gen)) for gen in generations}
        records = {gen: record for gen, record in read.items() if record is not None}
        done_by = [record.get("instance") for record in records.values() if record.get("state") == ClaimState.done]
        if done_by:
            return ClaimOutcome(None, done_elsewhere=True, done_by=str(done_by[0]))
        if variant and (legacy := self._done_before_variants(folder, source, snapshot)) is not None:
            return ClaimOutcome(None, done_elsewhere=True, done_by=legacy)
        if unreadable := [folder / _name(key, gen) for gen, record in read.items() if record is None]:
            return self._held_unreadable(source, unreadable[0])  # it may say done: never pay twice
        latest = max(generations, default=0)
        path = folder / _name(key, latest)
        record = records.get(latest, {})
        if latest == 0 or record.get("state") == ClaimState.released:
            return self._create(folder, key, latest + 1, source, snapshot, variant)
        if record.get("instance") == self.instance_id:
            self.refresh(Claim(path, source, latest))  # ours, from before a restart
            return ClaimOutcome(Claim(path, source, latest))
        age = _age(path)
        if age is None or self._holder_died_here(record):
            log.info("Claim: taking over %s from a sam-bridge that has ended", source.name)
            return self._create(folder, key, latest + 1, source, snapshot, variant)
        if age <= self.ttl:
            holder = str(record.get("host") or record.get("instance") or "another sam-bridge")
            return ClaimOutcome(None, holder=holder, recheck_after=self.ttl - age + 0.05)
        log.info("Claim: taking over %s: the claim of %s expired %.0f s ago", source.name, record.get("host"),
                 age)
        return self._create(folder, key, latest + 1, source, snapshot, variant)

    def _done_before_variants(self, folder: Path, source: Path, snapshot: FileSnapshot) -> str | None:
        """Who finished this file by a marker of a version without variants (no format field: the bare key
        stood for the file whatever its sidecar held), if one did; None otherwise. A format-2 bare marker is
        the file without a sidecar (or a cover for one with a sidecar): a new sidecar still makes a new job."""
        key = claim_key(source.name, snapshot)
        for gen in _generations(folder, key):
            record = self._read(folder / _name(key, gen))
            if record and record.get("state") == ClaimState.done and "format" not in record:
                return str(record.get("instance") or "an earlier sam-bridge")
        return None

    def _held_unreadable(self, source: Path, marker: Path) -> ClaimOutcome:
        if stems.ON_WINDOWS:  # a file being deleted or replaced refuses opens for a moment: look again soon
            return ClaimOutcome(None, holder="another sam-bridge (its claim marker is being changed)",
                                recheck_after=WINDOWS_RECHECK)
        if marker not in self._warned:  # once per marker: it stays until someone fixes its permissions
            self._warned.add(marker)
            log.warning("Claim: %s is left alone: this user may not read its claim marker %s (another user's "
                        "sam-bridge made it private); make the folder's .sam-bridge readable to every daemon "
                        "sharing it", source.name, marker)
        return ClaimOutcome(None, holder="another sam-bridge (its claim marker is not readable here)",
                            recheck_after=self.ttl)

    def busy(self) -> bool:
        return False  # marker files: every daemon takes what it sees (as before team mode)

    def refresh(self, claim: Claim) -> bool:
        """Keep a claim alive; False when it is gone or someone took it over (we lost it)."""
        try:
            os.utime(claim.path)
        except OSError:
            return False
        generations = _generations(claim.path.parent, _key_of(claim.path))
        return all(gen <= claim.generation for gen in generations)

    def mark_done(self, claim: Claim) -> None:
        """The job finished: the marker stays for good, so no daemon takes this file version again."""
        self._set_state(claim, ClaimState.done)

    def release(self, claim: Claim) -> None:
        """Free a claim (job failed or cancelled, or never submitted): the next claimant takes it."""
        self._set_state(claim, ClaimState.released)

    def _set_state(self, claim: Claim, state: ClaimState) -> None:
        record = self._read(claim.path) or self._record(claim.source, None)
        record["state"] = state
        record["changed_at"] = time.time()
        try:
            write_atomically(claim.path, json.dumps(record, indent=1), mode=MARKER_MODE)
        except OSError as exc:
            log.warning("Claim: could not mark %s %s: %s", claim.source.name, state, exc)

    def forget_done(self, source: Path, snapshot: FileSnapshot, variant: str = "") -> None:
        """Remove every marker of one file version (after it moved to done/)."""
        folder = claims_dir(source)
        key = claim_key(source.name, snapshot, variant)
        for gen in _generations(folder, key):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder / _name(key, gen))

    def prune(self, folder: Path) -> int:
        """Remove markers of file versions that no longer exist (done, or expired). Returns the count. Only
        "no such file" says a file is gone: one a share fails to stat now (EIO, ESTALE) keeps its markers."""
        claims = folder / STATE_DIR_NAME / CLAIMS_DIR_NAME
        try:
            names = os.listdir(claims)
        except OSError:
            return 0
        removed = 0
        for name in names:
            if not name.endswith(".claim"):
                continue
            path = claims / name
            record = self._read(path)
            if not record or not record.get("source"):  # unreadable, or being written: not ours to judge
                continue
            source = folder / str(record["source"])
            try:
                info = os.stat(source)
            except (FileNotFoundError, NotADirectoryError):
                snapshot = None  # gone: only these say so
            except OSError:  # a flaky share (EIO, ESTALE, a timeout): there or not, it cannot be told now,
                continue  # and a done marker deleted for a file that stayed would have it paid for again
            else:
                snapshot = FileSnapshot(info.st_size, info.st_mtime_ns) if stat.S_ISREG(info.st_mode) else None
            if snapshot is not None and claim_key(source.name, snapshot, str(record.get("variant", ""))) == \
                    _key_of(path):
                continue
            age = _age(path)
            if record.get("state") != ClaimState.active or (age is not None and age > self.ttl):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed += 1
        return removed

    def _holder_died_here(self, record: dict[str, object]) -> bool:
        """A holder on this machine whose process has ended needs no TTL to be known dead."""
        pid = record.get("pid")
        if record.get("host") != self.host or not isinstance(pid, int) or pid == os.getpid():
            return False
        return not process_alive(pid)  # on Windows always alive: the TTL decides there

    def _create(
        self, folder: Path, key: str, generation: int, source: Path, snapshot: FileSnapshot, variant: str
    ) -> ClaimOutcome:
        path = folder / _name(key, generation)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, MARKER_MODE)
        except FileExistsError:
            return ClaimOutcome(None, holder="another sam-bridge", recheck_after=self.ttl)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(self._record(source, snapshot, variant), indent=1))
        return ClaimOutcome(Claim(path, source, generation))

    def _record(self, source: Path, snapshot: FileSnapshot | None, variant: str = "") -> dict[str, object]:
        record: dict[str, object] = {
            "format": MARKER_FORMAT,
            "source": source.name,
            "instance": self.instance_id,
            "host": self.host,
            "pid": os.getpid(),
            "state": ClaimState.active,
            "claimed_at": time.time(),
        }
        if snapshot is not None:
            record.update(size=snapshot.size, mtime_ns=snapshot.mtime_ns)
        if variant:
            record["variant"] = variant
        return record

    @staticmethod
    def _read(path: Path) -> dict[str, object] | None:
        """A marker's record; {} while its creator is still writing it (or it vanished); None when this user
        may not read it (another user's private marker): held by someone, never expired nor free."""
        try:
            data = json.loads(read_small_text(path, 64 * KIB))  # a planted FIFO must not stop the scan
        except PermissionError:
            return None
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


def claims_dir(source: Path) -> Path:
    """Beside the source, so every daemon agrees however its own folders are configured."""
    return source.parent / STATE_DIR_NAME / CLAIMS_DIR_NAME


def claim_key(name: str, snapshot: FileSnapshot, variant: str = "") -> str:
    """One key per file version: saving the file again (new size or mtime), or another variant (a hot folder
    file's sidecar saved with other content), makes a new key. No variant: the key it always was."""
    text = f"{name}\0{snapshot.size}\0{snapshot.mtime_ns}" + (f"\0{variant}" if variant else "")
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:24]


def _name(key: str, generation: int) -> str:
    return f"{key}.{generation}.claim"


def _key_of(path: Path) -> str:
    return path.name.split(".", 1)[0]


def _generations(folder: Path, key: str) -> list[int]:
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    generations = []
    for name in names:
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == key and parts[2] == "claim" and parts[1].isdigit():
            generations.append(int(parts[1]))
    return generations


def _age(path: Path) -> float | None:
    try:
        return time.time() - os.stat(path).st_mtime
    except OSError:
        return None
