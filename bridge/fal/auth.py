"""The fal API key: read once, sent only in the Authorization header, never shown anywhere else."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from bridge.common.errors import AuthError

ENV_VAR = "FAL_KEY"
# The official client's other form (fal-client 1.0.3, auth.py): both set, sent as "Key <id>:<secret>".
ID_VAR, SECRET_VAR = "FAL_KEY_ID", "FAL_KEY_SECRET"
_REDACTED = "<redacted>"


class ApiKey:
    """Holds the secret; its repr/str never reveal it, so it can't leak through logs or tracebacks."""

    __slots__ = ("_secret",)

    def __init__(self, secret: str) -> None:
        secret = secret.strip()
        if not secret:
            raise AuthError(f"{ENV_VAR} is empty.", hint=missing_key_hint())
        _check_characters(secret)
        self._secret = secret

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ApiKey:
        value = secret_from_env(env)
        if value is None:
            environ = env if env is not None else os.environ
            half = ID_VAR if environ.get(ID_VAR, "").strip() else SECRET_VAR if environ.get(SECRET_VAR, "").strip() \
                else None
            if half is not None:
                other = SECRET_VAR if half == ID_VAR else ID_VAR
                raise AuthError(f"{half} is set but {other} is not, so sam-bridge has no whole fal key.",
                                hint=f"Set both {ID_VAR} and {SECRET_VAR}, or the whole key in {ENV_VAR}.")
            raise AuthError(f"{ENV_VAR} is not set, so sam-bridge cannot use SAM Audio on fal.",
                            hint=missing_key_hint())
        key = cls(value)
        RedactingFilter.install(key)
        return key

    def authorization(self) -> str:
        return f"Key {self._secret}"

    def redact(self, text: str) -> str:
        """Text with every occurrence of the secret (and each half of an id:secret pair) masked."""
        for part in {self._secret, *(p for p in self._secret.split(":") if len(p) >= 8)}:
            text = text.replace(part, _REDACTED)
        return text

    def __repr__(self) -> str:
        return f"ApiKey({_REDACTED})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("an ApiKey is not serialisable")


def secret_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """The key as the official client finds it: FAL_KEY, else FAL_KEY_ID and FAL_KEY_SECRET as `id:secret`."""
    environ = env if env is not None else os.environ
    whole = environ.get(ENV_VAR, "").strip()
    if whole:
        return whole
    key_id, secret = environ.get(ID_VAR, "").strip(), environ.get(SECRET_VAR, "").strip()
    return f"{key_id}:{secret}" if key_id and secret else None


def key_in_env(env: Mapping[str, str] | None = None) -> bool:
    return secret_from_env(env) is not None


def _check_characters(secret: str) -> None:
    """A key is printable ASCII (it goes into an HTTP header): a pasted quote or space is a typo to name,
    by position, without showing the key."""
    for position, char in enumerate(secret, start=1):
        if 33 <= ord(char) < 127 and char not in "\"'":
            continue
        if char in "\"'“”‘’«»":
            what = "a quote mark"
        elif char.isspace():
            what = "a space or line break"
        else:
            what = "a character that is not plain ASCII"
        raise AuthError(f"{ENV_VAR} holds {what} (character {position} of {len(secret)}), which no fal key has.",
                        hint="Set it again, copied straight from https://fal.ai/dashboard/keys "
                        f"(export {ENV_VAR}=your-key, without quote marks around the key itself).")


def missing_key_hint() -> str:
    return (
        f"Create a key at https://fal.ai/dashboard/keys and set it: export {ENV_VAR}=your-key "
        f"(Windows: setx {ENV_VAR} your-key; or its two halves in {ID_VAR} and {SECRET_VAR}). "
        "To try sam-bridge without a key, add --local "
        "(the built-in stand-in service; its stems are a simple band split, not SAM Audio)."
    )


class RedactingFilter(logging.Filter):
    """Last line of defence: masks the key in any log record, whoever logs it."""

    def __init__(self, key: ApiKey) -> None:
        super().__init__()
        self._key = key

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self._key.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:  # tracebacks too: format them here, masked
            record.exc_text = self._key.redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = self._key.redact(record.exc_text)
        return True

    @classmethod
    def install(cls, key: ApiKey) -> None:
        root = logging.getLogger()
        if not any(isinstance(f, cls) for f in root.filters):
            root.addFilter(cls(key))
        for handler in root.handlers:
            if not any(isinstance(f, cls) for f in handler.filters):
                handler.addFilter(cls(key))
