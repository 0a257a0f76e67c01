"""The OSC address space of sam-bridge, declared once.

Dispatch (the server looks entries up by name), argument validation, the error messages a client gets
and the README table (`bridge.osc.table`) are all derived from the two tables below, so the documented
address space and the one the server speaks cannot drift apart.

Conventions (after AbletonOSC's request/reply pairs and listen/unlisten): every request is answered on
the sender's address and port (or a configured reply port); a reply is the request's address with a
word appended (`/sam/presets` → `/sam/presets/list` … `/sam/presets/end`); lists end with an `…/end i:count`
message so a patch knows when it has them all; anything that goes wrong is `/sam/error`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bridge.common.flags import FLAG_TEXT, NOTE, WARNING, flag_kind
from bridge.common.plain import not_finite
from bridge.common.request import MAX_SECONDS

DEFAULT_PREFIX = "/sam"
# python-osc receives into an 8,192-byte buffer and silently drops anything longer, and many OSC
# stacks do the same: every datagram we send stays within this.
MAX_REPLY_BYTES = 8192
STATUS_LIMIT = 10  # /sam/status without a job id answers at most this many jobs (no amplification)

ArgValue = str | int | float

_TYPE_WORDS = {"s": "text (s)", "i": "a whole number (i)", "f": "a number (f)"}


@dataclass(frozen=True)
class Arg:
    """One argument: OSC type `s` (string), `i` (int32) or `f` (float32)."""

    name: str
    type: str
    description: str
    max_chars: int = 200  # strings only
    may_be_empty: bool = False  # "" means "not given": later arguments can be sent without this one
    minimum: float | None = None  # numbers only
    maximum: float | None = None
    above: float | None = None  # numbers only: must be strictly greater
    as_text: bool = False  # numbers only: may come as text ("754.123456") for the digits a float32 drops

    @property
    def signature(self) -> str:
        return f"{self.type}:{self.name}"


@dataclass(frozen=True)
class Request:
    """A request address: required arguments, then optional groups that may only be left off from the end."""

    name: str  # address without the prefix, e.g. "separate" → /sam/separate
    required: tuple[Arg, ...]
    optional: tuple[tuple[Arg, ...], ...]
    description: str
    example: str  # arguments as a patch would send them
    replies: tuple[str, ...]  # names of entries in REPLIES

    def address(self, prefix: str = DEFAULT_PREFIX) -> str:
        return f"{prefix}/{self.name}"

    @property
    def signature(self) -> str:
        parts = [a.signature for a in self.required]
        parts += ["[" + " ".join(a.signature for a in group) + "]" for group in self.optional]
        return " ".join(parts)

    def arity(self) -> list[int]:
        """Argument counts this request accepts."""
        counts = [len(self.required)]
        for group in self.optional:
            counts.append(counts[-1] + len(group))
        return counts


@dataclass(frozen=True)
class Reply:
    """A message the server sends: a reply to a request or a job event."""

    name: str  # e.g. "accepted" → /sam/accepted
    args: tuple[Arg, ...]
    description: str
    example: str
    repeats_last: bool = False  # the last argument may repeat (lists)

    def address(self, prefix: str = DEFAULT_PREFIX) -> str:
        return f"{prefix}/{self.name}"

    @property
    def signature(self) -> str:
        text = " ".join(a.signature for a in self.args)
        return text + "..." if self.repeats_last else text


def _s(name: str, description: str, max_chars: int = 200, may_be_empty: bool = False) -> Arg:
    return Arg(name, "s", description, max_chars=max_chars, may_be_empty=may_be_empty)


_JOB_ID = _s("job_id", "the job id from /sam/accepted")
_PATH_CHARS = 4096  # PATH_MAX on Linux; longer cannot name a real file

_SEPARATE_REQUIRED = (
    _s("source_path", "full path of the audio file", max_chars=_PATH_CHARS),
    _s("preset_or_prompt", "a preset name, or else a description of the sound to isolate", max_chars=500),
)
_SEPARATE_OPTIONAL = (
    (_s("tag", "your own id, echoed in /sam/accepted and /sam/error (\"\" = none)", may_be_empty=True),),
    (_s("project_dir", "project folder; stems go to its Stems/ folder (\"\" = beside the source)",
        max_chars=_PATH_CHARS, may_be_empty=True),),
    (Arg("start", "f", "seconds into the source where the part begins (or as text, e.g. \"754.123456\": "
         "an OSC float keeps 7 digits, so 10 minutes in it is up to 30 µs off; \"\" = the beginning)", minimum=0.0,
         maximum=MAX_SECONDS, as_text=True, may_be_empty=True),
     Arg("length", "f", "seconds of source to separate, a positive number (more than 0; or as text, like "
         "start), or \"\" = to the end of the file", above=0.0, maximum=MAX_SECONDS, as_text=True, may_be_empty=True)),
    (Arg("audition", "f", "seconds to audition: only the loudest window this long inside the part (start, length) "
         "is separated (from start when start is given without a length), stems named .audition "
         "(0 or \"\" = no audition: the whole part)", minimum=0.0, maximum=600.0, may_be_empty=True),),
    (_s("options", "service/output options as key=value words, e.g. \"reranking_candidates=2 "
        "predict_spans=true\" (the README's options tables; \"\" = none)", max_chars=1000, may_be_empty=True),),
    (_s("spans", "spans to separate instead of a prompt's whole part (span-separate): START-END words in seconds, "
        "START-END:exclude for one to leave out, e.g. \"12.5-20 30-35:exclude\" (\"\" = none)", max_chars=1000,
        may_be_empty=True),),
)

REQUESTS: tuple[Request, ...] = (
    Request(
        "separate",
        required=_SEPARATE_REQUIRED,
        optional=_SEPARATE_OPTIONAL,
        description="Queue a separation. A known preset name (any case) wins; otherwise the text is the "
        "prompt. The source must be under an allowed source folder and the stems' folder under an "
        "allowed output folder.",
        example='"/Users/me/Music/Guitar 01.wav" piano take-3 "/Users/me/Music/Song" 12.5 8.0',
        replies=("accepted", "progress", "part", "flags", "flag", "stem", "done", "error"),
    ),
    Request(
        "estimate",
        required=_SEPARATE_REQUIRED,
        optional=_SEPARATE_OPTIONAL,
        description="What /sam/separate with the same arguments would send and cost; nothing is sent. Ask "
        "the user to confirm before /sam/separate when `confirm` is 1 (cost above the configured "
        "`confirm_above`).",
        example='"/Users/me/Music/Guitar 01.wav" piano take-3 "/Users/me/Music/Song" 12.5 8.0',
        replies=("estimate/ok", "error"),
    ),
    Request(
        "cancel",
        required=(_JOB_ID,),
        optional=(),
        description="Cancel a queued or running job; the job's own events then end with /sam/error.",
        example="5bbfef41c050",
        replies=("cancel/ok", "error"),
    ),
    Request(
        "status",
        required=(),
        optional=((_s("job_id", "a job id; leave out to list the recent jobs"),),),
        description=f"One job, or the {STATUS_LIMIT} most recently changed jobs when no id is given "
        "(/sam/status/end says how many more there are).",
        example="5bbfef41c050",
        replies=("status/job", "status/end", "error"),
    ),
    Request(
        "presets",
        required=(),
        optional=((_s("project_dir", "project folder whose own presets to list too, as sent with /sam/separate "
                      "(\"\" = the shared ones only)", max_chars=_PATH_CHARS, may_be_empty=True),),),
        description="List the preset names: the shared ones, and a project's own when one is named (a project "
        "outside the allowed folders gets the shared ones, and /sam/presets/refused says why). A preset whose "
        "file has problems is listed too: /sam/separate with it answers with those problems.",
        example='"/Users/me/Music/Song"',
        replies=("presets/list", "presets/refused", "presets/end", "error"),
    ),
    Request(
        "ping",
        required=(),
        optional=(),
        description="Is the bridge there? Answers with its version and a health word.",
        example="",
        replies=("pong",),
    ),
    Request(
        "reply_to",
        required=(Arg("port", "i", "UDP port on your machine where you listen for answers",
                      minimum=1, maximum=65535),),
        optional=(),
        description="Answer this client (this address and sending port) at this port from now on: for "
        "clients like Max's [udpsend] that send from a random port and listen with [udpreceive] on a "
        "fixed one. Lasts until the bridge restarts: send it again when your patch loads.",
        example="9011",
        replies=("reply_to/ok", "error"),
    ),
    Request(
        "subscribe",
        required=(Arg("port", "i", "UDP port on your machine that should receive every job's events",
                      minimum=1, maximum=65535),),
        optional=(),
        description="Send the events of ALL jobs (not only yours) to this port on the sender's address.",
        example="9011",
        replies=("subscribe/ok", "error"),
    ),
    Request(
        "unsubscribe",
        required=(Arg("port", "i", "a port given to /sam/subscribe", minimum=1, maximum=65535),),
        optional=(),
        description="Stop sending all jobs' events to this port.",
        example="9011",
        replies=("unsubscribe/ok",),
    ),
)

_WARNINGS = ", ".join(flag for flag in FLAG_TEXT if flag_kind(flag) == WARNING)
_NOTES = ", ".join(flag for flag in FLAG_TEXT if flag_kind(flag) == NOTE)

_TAG = _s("tag", "the tag you gave (\"\" if none)")
_MESSAGE = _s("message", "what happened, in words", max_chars=1000)

REPLIES: tuple[Reply, ...] = (
    Reply("accepted", (_TAG, _JOB_ID), "The job is queued; later events carry its job id.",
          "take-3 5bbfef41c050"),
    Reply("progress", (_JOB_ID, _s("state", "queued, uploading, running, … done, failed, cancelled"),
                       Arg("fraction", "f", "0..1 over the whole job"), _MESSAGE,
                       Arg("eta", "f", "seconds the job is expected to take still (-1 = unknown)")),
          "A job changed (to the submitter and every subscriber).",
          "5bbfef41c050 running 0.4 \"Separating chunk 3/11\" 12.5"),
    Reply("part", (_JOB_ID, Arg("start_seconds", "f", "seconds into the source where the stems begin"),
                   Arg("length_seconds", "f", "seconds of source the stems cover")),
          "The part of the source the stems cover (an audition: its loudest window), from the manifest's `part`: "
          "sent before /sam/stem and /sam/done of every job.",
          "5bbfef41c050 17.5 10.0"),
    Reply("flags", (_JOB_ID, _s("flag", f"a warning ({_WARNINGS}) or a note, the stems are right ({_NOTES})")),
          "The result's flags: sent before /sam/done, only when there are flags. /sam/flag says each in words.",
          "5bbfef41c050 target-unlikely audition", repeats_last=True),
    Reply("flag", (_JOB_ID, _s("flag", "one flag of /sam/flags"),
                   _s("kind", f"{WARNING} (the result needs a look) or {NOTE} (the stems are right: "
                      "nothing to check)"),
                   _s("words", "what the flag means, in words (\"\" for a flag this bridge has no words for)",
                      max_chars=1000)),
          "One per flag, right after /sam/flags: what it means, for a device to show the warnings' words "
          "(and not the notes).",
          "5bbfef41c050 target-unlikely warning \"the target does not look like a part of the source …\""),
    Reply("estimate/ok", (_TAG, Arg("seconds", "f", "seconds of audio sent per request"),
                          Arg("requests", "i", "paid requests (one per step of a stem set)"),
                          Arg("cost", "f", "estimated cost"), _s("currency", "e.g. USD"),
                          Arg("confirm_above", "f", "the configured amount above which to ask first"),
                          Arg("confirm", "i", "1 when the cost is above confirm_above: ask before sending"),
                          Arg("whole_cost", "f", "an audition: what the whole part would cost (-1 otherwise)")),
          "Answer to /sam/estimate; nothing was sent.", "take-3 45.0 1 0.075 USD 1.0 0 -1"),
    Reply("stem", (_JOB_ID, _s("label", "stem label, e.g. target, residual, vocals"),
                   _s("path", "full path of the stem file", max_chars=_PATH_CHARS)),
          "One per stem file, all before /sam/done.",
          "5bbfef41c050 target \"/Users/me/Music/Song/Stems/Guitar 01 - piano.target.wav\""),
    Reply("done", (_JOB_ID, _s("target", "the target stem (stem sets: the first stem)"),
                   _s("residual", "the residual stem (stem sets: the \"other\" stem, or \"\")"),
                   _s("manifest", "the manifest (.sam.json), written last")),
          "The job finished; every file is complete.",
          "5bbfef41c050 \".../Guitar 01 - piano.target.wav\" \".../Guitar 01 - piano.residual.wav\" "
          "\".../Guitar 01 - piano.sam.json\""),
    Reply("error", (_s("tag_or_job_id", "the job id, the request's tag, or \"\""), _MESSAGE),
          "A request was refused, or a job failed or was cancelled. The message names the address and "
          "says what to do.",
          "take-3 \"/sam/separate: The file /tmp/x.wav is outside the folders sam-bridge may read …\""),
    Reply("cancel/ok", (_JOB_ID,), "Cancellation was requested.", "5bbfef41c050"),
    Reply("status/job", (_JOB_ID, _s("state", "job state"), Arg("progress", "f", "0..1"), _MESSAGE, _TAG),
          "One job.", "5bbfef41c050 running 0.4 \"separating on fal\" take-3"),
    Reply("status/end", (Arg("count", "i", "how many /sam/status/job were sent"),
                         Arg("more", "i", "how many older jobs were left out (ask for one by its id)")),
          "End of a status answer.", "10 16"),
    Reply("presets/list", (_s("name", "preset name"),), "Preset names, split over several messages.",
          "piano vocals drums", repeats_last=True),
    Reply("presets/refused", (_s("project_dir", "the project folder as it was sent", max_chars=_PATH_CHARS),
                              _s("message", "why its own presets were not read, and how to allow it",
                                 max_chars=1000)),
          "Sent before /sam/presets/end when the project named is outside the allowed folders: the list holds "
          "the shared presets only.",
          "\"/Volumes/SSD/Song\" \"The project folder … is outside the folders sam-bridge may write stems to "
          "(…). … sam-bridge allow …\""),
    Reply("presets/end", (Arg("count", "i", "how many names were sent"),), "End of the preset list.", "12"),
    Reply("pong", (_s("version", "sam-bridge version"),
                   _s("health", "ok, or what is wrong: journal-damaged (no new work; the bridge stops), "
                      "state-disk-full, requests-folder-unreachable (its requests wait until it is back)")),
          "Answer to /sam/ping.", "0.2.2 ok"),
    Reply("reply_to/ok", (Arg("port", "i", "the port answers now go to"),),
          "Sent to the new port: answers arrive there from now on.", "9011"),
    Reply("subscribe/ok", (Arg("port", "i", "the subscribed port"),), "Subscribed.", "9011"),
    Reply("unsubscribe/ok", (Arg("port", "i", "the port"),), "No longer subscribed.", "9011"),
)

NOTES = (
    "- Replies go to the sender's address and port; to the port a client named with `/sam/reply_to`; "
    "or to the configured `osc.reply_port` for every client. A job's events go to the client that sent "
    "its `/sam/separate` (where it was answered) and to every subscriber. A daemon restart forgets "
    "both but resumes the jobs: the end (`/sam/done` or `/sam/error`, with its progress and stems) of an "
    "OSC job resumed so is kept (the last 64, for an hour) and sent once to each client that subscribes "
    "later.",
    "- At most `rate_limit` separations per client host per `rate_window` seconds (default 20 a minute; "
    "another port or another loopback address is the same host), and `rate_limit_total` from all clients "
    "together (default 60); more get `/sam/error` and are not queued.",
    "- When a shared token is configured, it is the first argument of every request (before the "
    "arguments above); it is never sent back. Listening beyond loopback requires it.",
    "- Bundles are taken apart and their messages run at once, in order (timetags are ignored); "
    "a bundle inside a bundle is refused with `/sam/error`.",
    "- Addresses are matched exactly (no OSC wildcards). Where a whole number (`i`) is expected, "
    "9011.0 is accepted (Pd sends every number as a float); where a number (`f`) is expected, a whole "
    "number is accepted.",
    "- Requests from addresses outside the configured allowlist get no answer at all.",
)

REQUESTS_BY_NAME = {r.name: r for r in REQUESTS}
REPLIES_BY_NAME = {r.name: r for r in REPLIES}


class ArgumentProblem(ValueError):
    """A request's arguments do not match its declaration; `str()` is the whole message for the user."""


def shorten(value: object, limit: int = 60, quoted: bool = True) -> str:
    """A value as it may be quoted back in an error: never the whole of an 8 KB string."""
    text = repr(value) if not isinstance(value, str) else f'"{value}"' if quoted else value
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_value(value: object) -> str:
    """What a client sent, in the words of the OSC types."""
    if isinstance(value, bool):
        return "a true/false (T/F)"
    if isinstance(value, int):
        return f"a whole number (i) {value}"
    if isinstance(value, float):
        return f"a number (f) {value:g}"
    if isinstance(value, str):
        return f"text (s) {shorten(value)}"
    if isinstance(value, bytes):
        return f"a blob (b) of {len(value)} bytes"
    if value is None:
        return "nil (N)"
    if isinstance(value, list):
        return "an array ([...])"
    return "an unsupported value"


def validate_args(request: Request, args: Sequence[Any], prefix: str = DEFAULT_PREFIX) -> dict[str, ArgValue]:
    """Check `args` against `request`; return name → value (omitted optional args absent, "" dropped).

    Raises ArgumentProblem naming the address and what it expects."""
    address = request.address(prefix)
    expected = f"{address} expects {request.signature or 'no arguments'}"
    if len(args) not in request.arity():
        counts = " or ".join(str(n) for n in request.arity())
        raise ArgumentProblem(f"{expected}, but got {len(args)} argument(s) (it takes {counts}).")
    declared = list(request.required) + [a for group in request.optional for a in group]
    values: dict[str, ArgValue] = {}
    for position, (arg, value) in enumerate(zip(declared, args, strict=False), start=1):
        problem = _check(arg, value)
        if problem:
            raise ArgumentProblem(f"{expected}; argument {position} ({arg.name}) {problem}.")
        converted = _convert(arg, value)
        if converted != "":
            values[arg.name] = converted
    return values


def _check(arg: Arg, value: Any) -> str | None:
    if arg.type == "s":
        if not isinstance(value, str):
            return f"should be {_TYPE_WORDS['s']}, got {describe_value(value)}"
        if not value.strip() and not arg.may_be_empty:
            return "is empty"
        if len(value) > arg.max_chars:
            return f"is {len(value)} characters long; at most {arg.max_chars} are allowed"
        return None
    if arg.may_be_empty and isinstance(value, str) and not value.strip():
        return None  # "" = not given: later arguments can be sent without this one
    if arg.as_text and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return f"should be {_TYPE_WORDS[arg.type]} or text holding one, got {describe_value(value)}"
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if not numeric:
        return f"should be {_TYPE_WORDS[arg.type]}, got {describe_value(value)}"
    if not math.isfinite(value):
        return not_finite(value)
    # Pd sends every number as a float: accept 9011.0 where a whole number is expected, not 9011.5.
    if arg.type == "i" and float(value) != int(value):
        return f"should be {_TYPE_WORDS['i']}, got {describe_value(value)}"
    if arg.minimum is not None and value < arg.minimum:
        return f"must be at least {arg.minimum:g}, got {value:g}"
    if arg.maximum is not None and value > arg.maximum:
        return f"must be at most {arg.maximum:g}, got {value:g}"
    if arg.above is not None and value <= arg.above:
        return f"must be more than {arg.above:g}, got {value:g}"
    return None


def _convert(arg: Arg, value: Any) -> ArgValue:
    if arg.type == "s" or (isinstance(value, str) and not value.strip()):
        return str(value).strip()
    if arg.type == "i":
        return int(value)
    return float(value)
