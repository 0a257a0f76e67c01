"""OSC on the wire: datagrams in (bundles taken apart, never an exception), replies out (never too big).

python-osc's own server and dispatcher are not used: its parser raises on non-UTF-8 text, logs a warning
per unknown type tag (a junk flood would become a log flood), recurses into nested bundles, and its
dispatcher sleeps until a bundle's future timetag. What it does well, reading a message's arguments, is
used behind the checks here.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pythonosc.osc_message import OscMessage

from bridge.common.flags import FLAG_TEXT, flag_kind
from bridge.common.jobs import JobEvent, JobState
from bridge.common.redact import redact
from bridge.osc.addresses import MAX_REPLY_BYTES, REPLIES_BY_NAME, ArgValue

_BUNDLE_HEAD = b"#bundle\x00"
_MAX_BUNDLE_MESSAGES = 64
_TYPE_TAGS_READ = set("ihfdsbTFN[]tmr")  # what python-osc's parser understands

# --- in -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Incoming:
    address: str
    args: list[Any]


@dataclass(frozen=True)
class Undecodable:
    address: str  # what could be read of it, for the error message ("" if nothing)
    reason: str


def decode_datagram(data: bytes) -> list[Incoming | Undecodable]:
    """The messages in a datagram (bundles taken apart; timetags ignored). Never raises."""
    if data.startswith(_BUNDLE_HEAD):
        return _decode_bundle(data)
    if data.startswith(b"/"):
        return [_decode_message(data)]
    return [Undecodable("", "this is not an OSC message (it must start with '/' or '#bundle')")]


def _decode_bundle(data: bytes) -> list[Incoming | Undecodable]:
    # Timetags are ignored on purpose: python-osc's dispatcher sleeps until a future timetag, which
    # stalls a server; a separation request has no use for sample-accurate scheduling.
    items: list[Incoming | Undecodable] = []
    index = len(_BUNDLE_HEAD) + 8
    if len(data) < index:
        return [Undecodable("#bundle", "the bundle is cut short")]
    while index < len(data):
        if len(items) >= _MAX_BUNDLE_MESSAGES:
            items.append(Undecodable("#bundle", f"a bundle may hold at most {_MAX_BUNDLE_MESSAGES} messages"))
            break
        if index + 4 > len(data):
            items.append(Undecodable("#bundle", "the bundle is cut short"))
            break
        (size,) = struct.unpack(">i", data[index:index + 4])
        index += 4
        if size <= 0 or index + size > len(data):
            items.append(Undecodable("#bundle", "a bundle element has a wrong size"))
            break
        element = data[index:index + size]
        index += size
        if element.startswith(_BUNDLE_HEAD):
            items.append(Undecodable("#bundle", "bundles inside bundles are not supported; "
                                                "put all messages in one bundle"))
        elif element.startswith(b"/"):
            items.append(_decode_message(element))
        else:
            items.append(Undecodable("#bundle", "a bundle element is not an OSC message"))
    return items


def _decode_message(data: bytes) -> Incoming | Undecodable:
    end = data.find(b"\x00")
    raw_address = data if end < 0 else data[:end]
    try:
        address = raw_address.decode("utf-8")
    except UnicodeDecodeError:
        shown = raw_address.decode("utf-8", "replace")[:80]
        return Undecodable(shown, "the address is not valid text (UTF-8)")
    if end < 0:
        return Undecodable(address[:80], "the message is cut short")
    tag_start = (end // 4 + 1) * 4
    if tag_start < len(data):
        tag_end = data.find(b"\x00", tag_start)
        tags = data[tag_start:tag_end if tag_end >= 0 else len(data)]
        if not tags.startswith(b","):
            return Undecodable(address, "the type tag string is missing")
        unknown = {chr(c) if 32 <= c < 127 else f"\\x{c:02x}" for c in tags[1:]} - _TYPE_TAGS_READ
        if unknown:
            return Undecodable(address, f"unsupported argument type(s) {', '.join(sorted(unknown))}")
    try:
        return Incoming(address, OscMessage(data).params)
    except UnicodeDecodeError:
        return Undecodable(address, "an argument is not valid text (UTF-8)")
    except Exception:  # python-osc raises several kinds for truncated/garbled data
        return Undecodable(address, "the arguments could not be read (the message is garbled or cut short)")


# --- out -----------------------------------------------------------------------------------------

def _osc_string(text: str) -> bytes:
    raw = text.replace("\x00", "").encode("utf-8")
    return raw + b"\x00" * (4 - len(raw) % 4)


def encode_message(address: str, types: str, args: Sequence[ArgValue]) -> bytes:
    parts = [_osc_string(address), _osc_string("," + types)]
    for kind, value in zip(types, args, strict=True):
        if kind == "s":
            parts.append(_osc_string(str(value)))
        elif kind == "i":
            parts.append(struct.pack(">i", int(value)))
        else:
            number = float(value)
            parts.append(struct.pack(">f", number if math.isfinite(number) and abs(number) < 3e38 else 0.0))
    return b"".join(parts)


def encode_reply(prefix: str, name: str, args: Sequence[ArgValue]) -> bytes:
    """A reply declared in REPLIES, shortened if needed so it fits MAX_REPLY_BYTES."""
    spec = REPLIES_BY_NAME[name]
    types = "".join(a.type for a in spec.args)
    if spec.repeats_last:
        types = types[:-1] + types[-1] * (len(args) - len(types) + 1)
    if len(types) != len(args):
        raise ValueError(f"{name} takes {spec.signature}, got {len(args)} arguments")
    # last guard: no reply (an error text, a job message) carries the key
    values = [redact(v) if isinstance(v, str) else v for v in args]
    data = encode_message(f"{prefix}/{name}", types, values)
    while len(data) > MAX_REPLY_BYTES:  # only with absurdly long paths or messages: cut the longest text
        longest = max((i for i, t in enumerate(types) if t == "s"), key=lambda i: len(str(values[i])))
        raw = str(values[longest]).encode("utf-8")
        keep = max(0, len(raw) - (len(data) - MAX_REPLY_BYTES) - 4)  # room for "…" and padding
        values[longest] = raw[:keep].decode("utf-8", "ignore") + "…"
        data = encode_message(f"{prefix}/{name}", types, values)
    return data


def event_messages(event: JobEvent) -> list[tuple[str, list[ArgValue]]]:
    """The replies one job event becomes: progress, then part, flags (each in words), stems and done (or an
    error) when it ends."""
    progress = event.progress if math.isfinite(event.progress) else 0.0
    messages: list[tuple[str, list[ArgValue]]] = [
        ("progress", [event.job_id, event.state.value, min(1.0, max(0.0, progress)), event.message,
                      -1.0 if event.eta is None or not math.isfinite(event.eta) else round(event.eta, 1)])]
    if event.state is JobState.done:
        if event.part is not None:
            messages.append(("part", [event.job_id, *event.part]))
        if event.flags:
            messages.append(("flags", [event.job_id, *event.flags]))
            messages += [("flag", [event.job_id, flag, flag_kind(flag),
                                   FLAG_TEXT.get(flag, "")]) for flag in event.flags]
        messages += [("stem", [event.job_id, label, path]) for label, path in event.stems.items()]
        target = event.stems.get("target") or next(iter(event.stems.values()), "")
        residual = event.stems.get("residual") or event.stems.get("other", "")
        messages.append(("done", [event.job_id, target, residual, event.manifest or ""]))
    elif event.state in (JobState.failed, JobState.cancelled):
        text = event.error or event.message or f"The job was {event.state.value}."
        messages.append(("error", [event.job_id, text]))
    return messages
