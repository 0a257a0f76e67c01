"""The README's OSC reference, made from the declaration in `bridge.osc.addresses`."""

from __future__ import annotations

from bridge.osc.addresses import DEFAULT_PREFIX, NOTES, REPLIES, REPLIES_BY_NAME, REQUESTS, Arg, Request


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(prefix: str = DEFAULT_PREFIX) -> str:
    """The README's OSC reference: requests, then replies and events."""
    lines = [
        "| Request | Arguments | What it does | Example | Replies |",
        "|---|---|---|---|---|",
    ]
    for req in REQUESTS:
        replies = ", ".join(f"`{REPLIES_BY_NAME[name].address(prefix)}`" for name in req.replies)
        args = "<br>".join(f"`{a.signature}` {a.description}" for a in _all_args(req)) or "—"
        example = "`" + " ".join(filter(None, (req.address(prefix), req.example))) + "`"
        lines.append(f"| `{req.address(prefix)}` | {_cell(args)} | {_cell(req.description)} | "
                     f"{_cell(example)} | {replies} |")
    lines += [
        "",
        "| Reply / event | Arguments | Meaning | Example |",
        "|---|---|---|---|",
    ]
    for rep in REPLIES:
        args = "<br>".join(f"`{a.signature}` {a.description}" for a in rep.args)
        if rep.repeats_last:
            args += " (repeated)"
        lines.append(f"| `{rep.address(prefix)}` | {_cell(args)} | {_cell(rep.description)} | "
                     f"`{_cell(rep.address(prefix) + ' ' + rep.example)}` |")
    lines += ["", *NOTES]
    return "\n".join(lines) + "\n"


def _all_args(req: Request) -> list[Arg]:
    return list(req.required) + [a for group in req.optional for a in group]
