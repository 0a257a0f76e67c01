"""Builds `sam-bridge.amxd`, the Max for Live audio effect Live loads, from `sam-bridge.maxpat` and
`sam_bridge_device.js`: a frozen device, so the JavaScript travels inside it and Live needs no Max editor,
no search path and no copy/paste. Reproducible: the same sources give the same bytes.

    python scripts/ableton/build_amxd.py [OUT.amxd]      (default: sam-bridge.amxd beside this script)

The container, as Ableton's own reader (github.com/Ableton/maxdevtools, maxdiff/amxd_textconv.py,
frozen_device_printer.py, freezing_utils.py) and a frozen device from its tests (FrozenTest.amxd) show it:

- a row of chunks, each a 4-letter id and a little-endian uint32 size of the data that follows:
  `ampf` (4 bytes: the device type, `aaaa` audio effect, `iiii` instrument, `mmmm` MIDI effect), `meta`
  (4 bytes; frozen devices carry 7), `ptch` (the patch);
- a frozen `ptch` is an `mx@c` archive, big-endian: `mx@c`, uint32 16 (the header's size), uint64 offset of
  the footer; then the files' bytes back to back from offset 16, the device's own patcher first (JSON with
  a trailing NUL); then the footer `dlst` + uint32 size (of the whole footer), holding one `dire` +
  uint32 size per file, whose fields are each a 4-letter id + uint32 size (header included) + data:
  `type` (`JSON`, `TEXT`, …), `fnam` (NUL-terminated, padded to 4 bytes), `sz32`, `of32` (the file's
  offset in the archive), `vers` (0), `flag` (0x11 for the device itself, 0 for a dependency), `mdat`
  (seconds since 1904-01-01, HFS+ time).

The patcher itself gets what a device saved by Live has (the FrozenTest and "CPU Reporter" devices in
maxdevtools): `openinpresentation` 1, `openrect` with Live's device height of 169 px, `project.amxdtype`
(the type as a big-endian integer) and a `dependency_cache` that names the embedded JavaScript.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PATCHER = HERE / "sam-bridge.maxpat"
SCRIPT = HERE / "sam_bridge_device.js"
DEVICE_NAME = "sam-bridge.amxd"
DEVICE_TYPE = b"aaaa"  # a Max Audio Effect
LIVE_DEVICE_HEIGHT = 169  # px: every device in Live's device view is this tall
FROZEN_META = 7
HFS_EPOCH_OFFSET = 2082844800  # seconds from 1904-01-01 (HFS+) to 1970-01-01 (Unix)
# A fixed date, so a build is byte-for-byte reproducible (SOURCE_DATE_EPOCH overrides it, as usual).
DEFAULT_DATE = 1767225600  # 2026-01-01 UTC


def device_patcher(patcher_text: str, script_name: str) -> dict[str, object]:
    """The patcher as a device: presentation on, Live's height, the device type, the script as a dependency."""
    document = json.loads(patcher_text)
    patcher = document["patcher"]
    width = max((b["box"]["presentation_rect"][0] + b["box"]["presentation_rect"][2]
                 for b in patcher["boxes"] if b["box"].get("presentation")), default=300.0)
    patcher["openinpresentation"] = 1
    patcher["openrect"] = [0.0, 0.0, float(width + 8), float(LIVE_DEVICE_HEIGHT)]
    patcher["devicewidth"] = 0.0
    patcher["project"] = {"version": 1, "amxdtype": int.from_bytes(DEVICE_TYPE, "big"), "readonly": 0,
                          "devpathtype": 0, "devpath": ".", "autolocalize": 0, "includepackages": 0,
                          "contents": {"patchers": {}, "code": {script_name: {"kind": "javascript", "local": 1}}}}
    patcher["dependency_cache"] = [{"name": script_name, "bootpath": ".", "type": "TEXT", "implicit": 1}]
    return document


def _field(tag: bytes, data: bytes) -> bytes:
    return tag + struct.pack(">I", 8 + len(data)) + data


def _name_field(name: str) -> bytes:
    raw = name.encode("utf-8") + b"\0"
    return _field(b"fnam", raw + b"\0" * (-len(raw) % 4))


def _entry(kind: bytes, name: str, size: int, offset: int, flag: int, date: int) -> bytes:
    body = b"".join([_field(b"type", kind), _name_field(name), _field(b"sz32", struct.pack(">I", size)),
                     _field(b"of32", struct.pack(">I", offset)), _field(b"vers", struct.pack(">I", 0)),
                     _field(b"flag", struct.pack(">I", flag)),
                     _field(b"mdat", struct.pack(">I", date + HFS_EPOCH_OFFSET))])
    return _field(b"dire", body)


def frozen_archive(files: list[tuple[bytes, str, bytes, int]], date: int) -> bytes:
    """An `mx@c` archive of (type, name, data, flag) files."""
    offset, blobs, entries = 16, [], []
    for kind, name, data, flag in files:
        blobs.append(data)
        entries.append(_entry(kind, name, len(data), offset, flag, date))
        offset += len(data)
    footer = b"".join(entries)
    return b"mx@c" + struct.pack(">IQ", 16, offset) + b"".join(blobs) + _field(b"dlst", footer)


def chunk(tag: bytes, data: bytes) -> bytes:
    return tag + struct.pack("<I", len(data)) + data


def build(patcher_text: str, script_text: str, date: int = DEFAULT_DATE) -> bytes:
    document = device_patcher(patcher_text, SCRIPT.name)
    patch = (json.dumps(document, indent="\t", ensure_ascii=False) + "\n").encode("utf-8") + b"\0"
    archive = frozen_archive([(b"JSON", DEVICE_NAME, patch, 0x11),
                              (b"TEXT", SCRIPT.name, script_text.encode("utf-8"), 0)], date)
    return chunk(b"ampf", DEVICE_TYPE) + chunk(b"meta", struct.pack("<I", FROZEN_META)) + chunk(b"ptch", archive)


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else HERE / DEVICE_NAME
    date = int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_DATE))
    data = build(PATCHER.read_text(encoding="utf-8"), SCRIPT.read_text(encoding="utf-8"), date)
    temp = out.with_name(f".{out.name}.partial")  # never a half-written device under its real name
    temp.write_bytes(data)
    os.replace(temp, out)
    print(f"wrote {out} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
