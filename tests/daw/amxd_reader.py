"""Reads a .amxd back, independently of scripts/ableton/build_amxd.py, the way Ableton's own reader does
(github.com/Ableton/maxdevtools, maxdiff/amxd_textconv.py and freezing_utils.py): little-endian top-level
chunks (`ampf`, `meta`, `ptch`); a frozen `ptch` is an `mx@c` archive (big-endian header: size 16, the footer's
64-bit offset) whose `dlst` footer lists each file (`dire`: type, fnam, sz32, of32, vers, flag, mdat)."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any


class AmxdError(ValueError):
    pass


@dataclass
class Amxd:
    device_type: str
    meta: int
    chunks: list[tuple[str, int]]
    files: dict[str, bytes] = field(default_factory=dict)
    entries: list[dict[str, Any]] = field(default_factory=list)

    def patcher(self) -> dict[str, Any]:
        device = next(e for e in self.entries if e["flag"] & 0x01)
        data = self.files[device["fnam"]]
        if not data.endswith(b"\0"):
            raise AmxdError("the device's patcher does not end with a NUL")
        patcher: dict[str, Any] = json.loads(data[:-1].decode("utf-8"))["patcher"]
        return patcher


def read_amxd(data: bytes) -> Amxd:
    chunks: list[tuple[str, int]] = []
    body: dict[str, bytes] = {}
    offset = 0
    while offset < len(data):
        if offset + 8 > len(data):
            raise AmxdError(f"a truncated chunk header at {offset}")
        tag = data[offset:offset + 4].decode("ascii")
        (size,) = struct.unpack("<I", data[offset + 4:offset + 8])
        if offset + 8 + size > len(data):
            raise AmxdError(f"chunk {tag} says {size} bytes but the file ends first")
        chunks.append((tag, size))
        body[tag] = data[offset + 8:offset + 8 + size]
        offset += 8 + size
    if [c[0] for c in chunks[:1]] != ["ampf"] or len(body["ampf"]) != 4:
        raise AmxdError("no ampf header")
    amxd = Amxd(body["ampf"].decode("ascii"), struct.unpack("<I", body["meta"])[0], chunks)
    patch = body["ptch"]
    if patch[:4] != b"mx@c":
        raise AmxdError("the patch is not frozen (no mx@c archive)")
    header_size, footer_at = struct.unpack(">IQ", patch[4:16])
    if header_size != 16 or patch[footer_at:footer_at + 4] != b"dlst":
        raise AmxdError("the mx@c header does not point at a dlst footer")
    (footer_size,) = struct.unpack(">I", patch[footer_at + 4:footer_at + 8])
    if footer_at + footer_size != len(patch):
        raise AmxdError("the dlst footer's size does not reach the end of the patch")
    cursor = footer_at + 8
    while cursor < len(patch):
        if patch[cursor:cursor + 4] != b"dire":
            raise AmxdError(f"expected a dire entry at {cursor}")
        (entry_size,) = struct.unpack(">I", patch[cursor + 4:cursor + 8])
        fields: dict[str, Any] = {}
        at = cursor + 8
        while at < cursor + entry_size:
            name = patch[at:at + 4].decode("ascii")
            (size,) = struct.unpack(">I", patch[at + 4:at + 8])
            value = patch[at + 8:at + size]
            fields[name] = value.rstrip(b"\0").decode("utf-8") if name in ("type", "fnam") else \
                int.from_bytes(value, "big")
            at += size
        if at != cursor + entry_size:
            raise AmxdError("a dire entry's fields overrun it")
        start, size = fields["of32"], fields["sz32"]
        if not 16 <= start <= start + size <= footer_at:
            raise AmxdError(f"{fields['fnam']} lies outside the archive's data")
        amxd.entries.append(fields)
        amxd.files[fields["fnam"]] = patch[start:start + size]
        cursor += entry_size
    return amxd
