"""A job's work folder: the intermediates of a stem set and their cleanup.

Each step of a stem set separates what the steps before it left: `write_complement` keeps that as a
64-bit float WAV (exact), and `carry_position` gives it the original's timeline position so every stem
of the set lands where the first one does. A resumed run never reuses these files (it polls its
accepted steps and downloads their results again), so `clear_intermediates` removes an earlier attempt's.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import replace
from pathlib import Path

import soundfile as sf

from bridge.audio import bwf
from bridge.audio.source import SourceInfo, is_upload_copy, read_block

log = logging.getLogger(__name__)


def carry_position(intermediate: SourceInfo, original: SourceInfo, start_frame: int) -> SourceInfo:
    """An intermediate file of a stem set, wearing the original's timeline position (bext/iXML, speaker
    layout), so every stem of the set lands where the first one does."""
    bext = bwf.stem_bext(original.bext, start_frame) if original.bext else None
    ixml = original.ixml
    if ixml is not None and bext is not None:
        ixml = bwf.stem_ixml(ixml, bwf.time_reference(bext))
    mask = bwf.read_channel_mask(original.path)
    if mask is not None:
        bwf.write_channel_mask(intermediate.path, mask)
    return replace(intermediate, bext=bext, ixml=ixml)


def write_complement(source: SourceInfo, start: int, frames: int, target: Path, out: Path,
                     block: int = 1 << 16) -> None:
    """out = source[start:start+frames] - target, block by block, as 64-bit float WAV (exact)."""
    with sf.SoundFile(source.path) as src, sf.SoundFile(target) as tgt, sf.SoundFile(
        out, "w", samplerate=source.samplerate, channels=source.channels, format="WAV", subtype="DOUBLE"
    ) as dst:
        src.seek(start)
        remaining = frames
        while remaining > 0:
            n = min(block, remaining)
            a = read_block(src, n, "float64")  # not src.read: see read_block (MP3 sources)
            b = read_block(tgt, n, "float64")
            dst.write(a - b)
            remaining -= n


# Files a run writes into its work folder. A resumed run polls its accepted steps and downloads their results
# again, so nothing an earlier attempt left there is ever reused; left in place, it would block the exclusive
# create of the step's intermediate.
_OWN_INTERMEDIATE = re.compile(r"step\d+\.(residual\.wav|service-(target|residual)\.(wav|mp3))")


def clear_intermediates(workdir: Path, keep: Path | None = None) -> list[Path]:
    """Remove what an earlier run of this job left in `workdir`: only our own intermediate, download and
    upload files directly inside it (never a folder, never `keep`, never any other file)."""
    removed: list[Path] = []
    try:
        entries = list(workdir.iterdir())
    except FileNotFoundError:
        return removed
    kept = keep.resolve() if keep is not None else None
    for entry in entries:
        ours = _OWN_INTERMEDIATE.fullmatch(entry.name) is not None or is_upload_copy(entry.name)
        if not ours or not entry.is_file() or (kept is not None and entry.resolve() == kept):
            continue
        entry.unlink(missing_ok=True)
        removed.append(entry)
    if removed:
        log.info("removed %d file(s) an earlier attempt left in %s", len(removed), workdir)
    return removed


def clean_workdir(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
