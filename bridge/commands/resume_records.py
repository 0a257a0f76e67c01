"""What each request `sam-bridge separate` sent was for, kept on this machine, so `--resume-request ID`
collects ID's result for FILE only when ID was sent for FILE: the same file (path, size and modification
time: the audio that was sent), part, prompt, spans, options and step, at the same service. Collecting a
request of another file (or prompt) would write that file's stems beside this one, named as this one's.

A record is a small JSON file per request in the state folder (`sent-requests/`), written as soon as the
service accepts the request; records older than fal keeps results are removed."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from bridge.common.config import state_dir
from bridge.common.errors import InputError
from bridge.common.request import SeparationRequest
from bridge.common.stems import write_json_atomic
from bridge.presets.recipe import Recipe

log = logging.getLogger(__name__)

FOLDER = "sent-requests"
KEEP_SECONDS = 30 * 86400  # far longer than fal keeps a request's result
_WHAT = ("service", "prompt", "spans", "options", "part")  # what the service was asked


def what_was_sent(request: SeparationRequest, recipe: Recipe, step: int, service: str) -> dict[str, Any]:
    """What step `step` of `request` asks the service (output options are not: they apply when collecting)."""
    s = recipe.steps[step]
    return {"step": step, "service": service, "prompt": s.prompt,
            "spans": [span.model_dump() for span in s.spans or ()], "options": s.options.to_payload(),
            "part": {"start": request.start, "length": request.length, "audition": request.audition}}


def _record_path(request_id: str) -> Path:
    return state_dir() / FOLDER / f"{hashlib.sha256(request_id.encode()).hexdigest()[:32]}.json"


def record_sent(request_id: str, source: Path, what: dict[str, Any]) -> None:
    """Note what `request_id` was sent for; a failure to note it never stops the run (it is only a check)."""
    try:
        stat = source.stat()
        path = _record_path(request_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"request_id": request_id, "source": os.path.realpath(source),
                                 "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sent_at": time.time(),
                                 **what})
        _forget_old(path.parent)
    except OSError as exc:
        log.warning("could not note what request %s was sent for (%s): resuming it cannot be checked",
                    request_id, exc)


def _forget_old(folder: Path) -> None:
    cutoff = time.time() - KEEP_SECONDS
    for old in folder.glob("*.json"):
        try:
            if old.stat().st_mtime < cutoff:
                old.unlink()
        except OSError:
            continue


def check_resumable(request_ids: list[str], request: SeparationRequest, recipe: Recipe, service: str,
                    billed: bool) -> list[str]:
    """Refuse (InputError, nothing written) a request that was sent for another file, other audio under this
    name, another step, prompt, spans, options, part or service. Returns the ids with no record here (sent
    from another machine, or before records were kept): those cannot be checked."""
    anew = f"Run without --resume-request to send “{request.source.name}” anew{' (charged again)' if billed else ''}."
    unchecked: list[str] = []
    for step, request_id in enumerate(request_ids):
        try:
            record = json.loads(_record_path(request_id).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # none here, or unreadable
            unchecked.append(request_id)
            continue
        _check_one(request_id, record, request, what_was_sent(request, recipe, step, service), anew)
    return unchecked


def _check_one(request_id: str, record: dict[str, Any], request: SeparationRequest, what: dict[str, Any],
               anew: str) -> None:
    name = request.source.name
    sent_for = Path(str(record.get("source", "")))
    if sent_for != Path(os.path.realpath(request.source)):
        raise InputError(f"Request {request_id} was sent for “{sent_for.name}” ({sent_for}), not for “{name}”: "
                         f"its stems are that file's.",
                         f"Give the request id the run for “{name}” printed, or collect this one for "
                         f"“{sent_for.name}”. {anew}")
    try:
        stat = request.source.stat()
    except OSError:
        return  # the pipeline reports a file that is gone
    if (stat.st_size, stat.st_mtime_ns) != (record.get("size"), record.get("mtime_ns")):
        raise InputError(f"“{name}” changed since request {request_id} was sent: its result is of the audio "
                         "before, and would not match the file.", anew)
    if record.get("step") != what["step"]:
        raise InputError(f"Request {request_id} was sent for step {int(record.get('step', 0)) + 1} of “{name}”, "
                         f"not step {what['step'] + 1}.",
                         "Give the request ids in the order the broken-off run printed them.")
    differ = [key for key in _WHAT if record.get(key) != what[key]]
    if differ:
        said = "; ".join(_describe(key, record.get(key), what[key]) for key in differ)
        raise InputError(f"Request {request_id} was sent for “{name}” with another prompt or options: {said}. "
                         "Its stems would not be what this command asks for.",
                         f"Give the same prompt and options as the run that sent it. {anew}")


def _describe(key: str, sent: Any, asked: Any) -> str:
    if key == "prompt":
        return f"the prompt “{sent}” (not “{asked}”)"
    if isinstance(sent, dict) and isinstance(asked, dict):  # options, part: only the fields that differ
        fields = sorted(k for k in sent.keys() | asked.keys() if sent.get(k) != asked.get(k))
        return f"{key} " + ", ".join(f"{k}={_text(sent.get(k))} (not {_text(asked.get(k))})" for k in fields)
    if key == "spans":
        return f"spans {_spans(sent)} (not {_spans(asked)})"
    return f"{key} {_text(sent)} (not {_text(asked)})"


def _spans(spans: Any) -> str:
    """As --span writes them: `2-9.5 4-5:exclude`."""
    try:
        return " ".join(f"{s['start']:g}-{s['end']:g}{'' if s['include'] else ':exclude'}" for s in spans) or "none"
    except (TypeError, KeyError, ValueError):
        return _text(spans)


def _text(value: Any) -> str:
    return "none" if value is None else json.dumps(value, ensure_ascii=False)
