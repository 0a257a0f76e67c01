"""The service's two results: where each is, and both fetched at once (the residual in a second thread)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bridge.audio.prefetch import Background
from bridge.common.errors import JobFailed
from bridge.engine.progress import Transfer
from bridge.fal.client import FalClient


def result_file(result: dict[str, object], key: str, stem: Path) -> tuple[str, Path]:
    """The URL of the result's `key` file, and where it goes (`stem` plus the suffix its type asks for)."""
    entry = result.get(key)
    if not isinstance(entry, dict) or "url" not in entry:
        raise JobFailed(f"The service's result has no {key} file.")
    suffix = ".mp3" if "mp3" in str(entry.get("content_type", "")) + str(entry.get("url")) else ".wav"
    return str(entry["url"]), stem.with_name(stem.name + suffix)


def fetch_both(client: FalClient, files: list[tuple[str, Path]],
               progress: Callable[[float, str, float | None], None], check_cancel: Callable[[], None]) -> None:
    """Both results at once, the residual in a second thread: over the internet one connection is
    slower than the line. Only this thread reports progress and looks for a cancel."""
    fractions = [0.0, 0.0]  # of each file, never going back (a retried try starts again from 0)
    transfer = Transfer()

    def report() -> None:
        progress(sum(fractions) / 2, transfer.describe("Downloading results:"), transfer.eta())

    def ours(done: int, total: int) -> None:
        transfer.update(done, total)
        fractions[0] = max(fractions[0], done / total if total else 0.0)
        report()
        check_cancel()

    def theirs(done: int, total: int) -> None:
        fractions[1] = max(fractions[1], done / total if total else 0.0)

    (target_url, target_dest), (residual_url, residual_dest) = files
    residual = Background(lambda: client.download(residual_url, residual_dest, progress=theirs,
                                                  stop=residual.stopping),
                          name="download-residual")  # bound before its thread starts: the call uses it
    with residual:
        client.download(target_url, target_dest, progress=ours)
        while not residual.wait(0.1):
            report()
            check_cancel()
        residual.result()
