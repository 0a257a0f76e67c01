"""The upload stage: the part's file to the service, encoded while it is sent when it is the mono 48 kHz FLAC.

A written upload used to be encoded whole (0.5-0.8 s per 3 min, ~15 s per hour) before its first byte left.
Now its blocks go out as they are encoded (`encode_upload` into `FalStorage.upload_streamed`), so the upload
starts at once and memory stays bounded. The user's file sent as is and a float WAV (whose header is written
last) go as before. Nothing is written under a final name: the only file is the whole-file encode fal's
storage fallback needs, written as `make_upload_file` writes it and removed after the upload.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bridge.audio.source import SourceInfo, make_upload_file, upload_copy_name, upload_format
from bridge.audio.upload_stream import AnnouncedLengthWrong, encode_upload, flac_size_bound, service_frames
from bridge.common.stems import remove_quietly
from bridge.fal.storage import FalStorage, Progress
from bridge.fal.streamed_upload import Emit, StreamedFile

log = logging.getLogger(__name__)

# a 24-bit mono FLAC of music is ~0.55 of its PCM size: only the progress bar's total before the end is known
_FLAC_RATIO_GUESS = 0.55


def send_upload(storage: FalStorage, source: SourceInfo, start: int, frames: int, workdir: Path, *,
                shrink: bool, bits: int, progress: Progress | None = None,
                stream: bool = True) -> tuple[str, dict[str, Any]]:
    """Upload the part; returns (its URL or data URI, what was sent: the manifest's `upload` record)."""
    plan = upload_format(source, start, frames, shrink, bits)
    fmt, _subtype, content_type = plan
    if stream and fmt == "FLAC":
        try:
            return _send_streamed(storage, source, start, frames, workdir, plan, progress)
        except AnnouncedLengthWrong as wrong:  # never seen: the header's length would lie; send it whole
            log.warning("%s; sending the upload encoded whole instead", wrong)
    path, content_type = make_upload_file(source, start, frames, workdir, shrink, bits, plan=plan)
    size = path.stat().st_size
    try:
        url = storage.upload(path, content_type, progress=progress)
    finally:
        if path != source.path:  # a temp file made for the upload (never the user's file)
            remove_quietly(path)
    return url, {"content_type": content_type, "bytes": size, "source_file_as_is": path == source.path}


def _send_streamed(storage: FalStorage, source: SourceInfo, start: int, frames: int, workdir: Path,
                   plan: tuple[str | None, str, str], progress: Progress | None) -> tuple[str, dict[str, Any]]:
    _fmt, subtype, content_type = plan
    samples = service_frames(source.samplerate, frames)
    sent = [0]
    written: list[Path] = []

    def produce(emit: Emit) -> None:
        sent[0] = 0

        def counted(data: bytes) -> None:
            sent[0] += len(data)
            emit(data)

        encode_upload(source, start, frames, subtype, counted)

    def whole_file() -> Path:
        path, _type = make_upload_file(source, start, frames, workdir, plan=plan)
        written.append(path)
        sent[0] = path.stat().st_size
        return path

    bound = flac_size_bound(samples, subtype)
    file = StreamedFile(name=upload_copy_name(source, "FLAC"), content_type=content_type, produce=produce,
                        size_bound=bound, size_estimate=int(bound * _FLAC_RATIO_GUESS), whole_file=whole_file)
    try:
        url = storage.upload_streamed(file, progress)
    finally:
        remove_quietly(*written)
    return url, {"content_type": content_type, "bytes": sent[0], "source_file_as_is": False,
                 "streamed": not written}
