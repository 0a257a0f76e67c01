"""What each flag on a result means, in the words the CLI and `sam-bridge status` print."""

from __future__ import annotations

FLAG_TEXT: dict[str, str] = {
    "target-silent": "the target is silent (below -50 dBFS) though the source is not: the prompt found nothing",
    "target-is-everything": "the residual is silent: the target is the whole source",
    "target-unlikely": "the target does not look like a part of the source (the prompted sound may be absent); "
                       "listen before using it",
    "weak-correlation": "the result hardly resembles the source",
    "drift": "the stems may drift against the source",
    "drift-corrected": "a drift of the result was corrected",
    "drift-unmeasured": "the drift could not be measured",
    "clipped": "some samples clipped when written",
    "position-not-kept": "the stems' format cannot hold the source's time reference (bext/iXML): they do not say "
                         "where on the timeline they start; place them at the part's start, or write WAV or W64",
    "silent-source": "the source is silent",
    "cut-at-end": "the part asked for ran past the end of the file",
    "span-cut-at-end": "a span ran past the end of the audio sent: it was sent cut at that end",
    "audition": "an audition: only a window of the part was separated",
    "refetch-failed": "the earlier results it asked for again were gone: a retry sends the audio again, and "
                      "that is paid",
}
NOTES = frozenset({"drift-corrected", "audition", "span-cut-at-end"})  # the stems are right: nothing to check
WARNING, NOTE = "warning", "note"  # a flag's kind, as the CLI, `status`, status files and OSC say it


def flag_kind(flag: str) -> str:
    """WARNING (the result needs a look) or NOTE; a flag this version does not know is a warning."""
    return NOTE if flag in NOTES else WARNING


def describe_flag(flag: str) -> str:
    return f"{flag}: {FLAG_TEXT[flag]}" if flag in FLAG_TEXT else flag


def flags_in_words(meanings: bool) -> str:
    """Every flag, warnings then notes, for the README's manifest and status tables: made from FLAG_TEXT, so
    a flag added there is documented there too (the hand-written lists had left some out)."""
    def listed(notes: bool) -> str:
        flags = [flag for flag in FLAG_TEXT if (flag in NOTES) == notes]
        return "; ".join(f"`{flag}`: {FLAG_TEXT[flag]}" for flag in flags) if meanings else \
            ", ".join(f"`{flag}`" for flag in flags)
    return f"warnings to read — {listed(notes=False)}; notes (the stems are right) — {listed(notes=True)}"
