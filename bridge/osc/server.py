"""The OSC way in: UDP requests from DAW devices (Max for Live, REAPER, Pd, TouchOSC) to the job engine.

The server knows addresses, not audio: it decodes a datagram, checks who sent it and what it names
(allowlist, token, allowed folders, rate limit), turns `/sam/separate` into a `SeparationRequest` for the
`JobSink`, and answers. Job events are forwarded to the submitting client and to subscribers by a
sender thread, so the engine's thread only ever puts an event on a queue. Nothing a client sends can
stop the server: every datagram is handled inside its own try, and what cannot be used gets a
`/sam/error` (when the sender is allowed an answer) and a (throttled) log line.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic

from bridge.common.errors import BridgeError, ConfigError, InputError
from bridge.common.jobs import JobSink, RequestRejected
from bridge.common.options import parse_option_text
from bridge.common.path_policy import PathNotAllowed, PathPolicy
from bridge.common.plain import field_problem
from bridge.common.request import Origin, SeparationRequest, Span
from bridge.osc.addresses import (
    DEFAULT_PREFIX,
    REQUESTS,
    REQUESTS_BY_NAME,
    STATUS_LIMIT,
    ArgumentProblem,
    ArgValue,
    shorten,
    validate_args,
)
from bridge.osc.events import MAX_SUBSCRIBERS, Address, EventForwarder
from bridge.osc.guard import ClientGuard, RateLimiter, ThrottledLog, TokenProblem, host_key
from bridge.osc.wire import Incoming, Undecodable, decode_datagram, encode_reply

logger = logging.getLogger(__name__)


_INTERNAL_ERROR = "sam-bridge failed on this request (an internal error; see its log). Please report it."
_ALL = "all"  # the one key of the limiter on paid jobs from every OSC client together
_PRESET_CHUNK_BYTES = 1024  # well under the 8 KB limit and a typical 1,500-byte MTU
_MAX_REPLY_PORTS = 256  # clients that said where they listen (/sam/reply_to), most recent kept


@dataclass(frozen=True)
class OscSettings:
    host: str = "127.0.0.1"
    port: int = 9010
    prefix: str = DEFAULT_PREFIX
    reply_port: int | None = None  # fixed reply port (Max's udpreceive) instead of the sender's port
    allow_clients: tuple[str, ...] = ()  # required (non-empty) when host is not loopback
    token: str | None = None  # when set, the first argument of every request
    rate_limit: tuple[int, float] = (20, 60.0)  # max /separate requests per client host per window seconds
    total_rate_limit: tuple[int, float] = (60, 60.0)  # max paid jobs accepted from all OSC clients together
    source_roots: tuple[Path, ...] = ()  # empty: the user's home folder
    output_roots: tuple[Path, ...] = ()  # empty: the user's home folder


# --- the server ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Call:
    address: str
    values: dict[str, ArgValue]
    sender: Address
    reply_to: Address


class OscServer:
    """Serves the address space of `bridge.osc.addresses` on UDP; see the module docstring."""

    def __init__(self, sink: JobSink, settings: OscSettings, version: str, policy: PathPolicy | None = None,
                 health: Callable[[], str] | None = None) -> None:
        """`policy`: the daemon's one door policy (else one from the settings' roots); `health`: the
        word /sam/pong carries (`ok`, or what is wrong)."""
        _check_prefix(settings.prefix)
        self._sink = sink
        self._settings = settings
        self._version = version
        self._prefix = settings.prefix
        self._guard = ClientGuard(settings.host, settings.allow_clients, settings.token)
        self._policy = policy or PathPolicy.from_roots(settings.source_roots, settings.output_roots)
        self._health = health or (lambda: "ok")
        self._separations = RateLimiter(*settings.rate_limit)  # per host (any port, any loopback address)
        self._all_separations = RateLimiter(*settings.total_rate_limit, max_keys=1)
        # a looping patch must not get a storm back, nor silence the errors of a device beside it: per reply
        # address (host and port), and a larger cap per host (a sender spraying ports)
        self._error_replies = RateLimiter(50, 1.0)
        self._host_error_replies = RateLimiter(500, 1.0)
        self._log = ThrottledLog(logger)
        handlers: dict[str, Callable[[_Call], None]] = {
            "separate": self._separate, "estimate": self._estimate, "cancel": self._cancel, "status": self._status,
            "presets": self._presets, "ping": self._ping, "reply_to": self._reply_to, "subscribe": self._subscribe,
            "unsubscribe": self._unsubscribe,
        }
        if set(handlers) != set(REQUESTS_BY_NAME):
            raise RuntimeError("osc_server handlers and osc_addresses.REQUESTS disagree")
        self._routes = {req.address(self._prefix): (req.name, handlers[req.name]) for req in REQUESTS}
        self._forwarder = EventForwarder(self._prefix, self._send_raw)
        self._reply_ports: dict[Address, int] = {}  # sender -> port it listens on (receiver thread only)
        self._socket: socket.socket | None = None
        self._receiver: threading.Thread | None = None
        self._stopping = threading.Event()
        self._unsubscribe_sink: Callable[[], None] | None = None

    def start(self) -> None:
        if self._socket is not None:
            raise RuntimeError("the OSC server is already started")
        family = socket.AF_INET6 if ":" in self._settings.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # ride out bursts
            if hasattr(socket, "SIO_UDP_CONNRESET"):  # Windows: a closed client port must not break recv
                sock.ioctl(socket.SIO_UDP_CONNRESET, False)  # type: ignore[attr-defined]
            sock.bind((self._settings.host, self._settings.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"The OSC server cannot listen on {self._settings.host}:{self._settings.port} "
                f"({exc.strerror}).",
                hint="Another program may be using that port: pick another OSC port in the config "
                "(and in your DAW device), or quit the other program.") from exc
        sock.settimeout(0.1)  # how often the receive loop looks at the stop flag
        self._socket = sock
        self._forwarder.start()
        self._unsubscribe_sink = self._sink.subscribe(self._forwarder.listener)
        self._receiver = threading.Thread(target=self._receive_loop, name="osc-receive", daemon=True)
        self._receiver.start()
        logger.info("OSC: listening on %s:%d, prefix %s", *self.address, self._prefix)

    @property
    def address(self) -> tuple[str, int]:
        if self._socket is None:
            raise RuntimeError("the OSC server is not started")
        host, port = self._socket.getsockname()[:2]
        return str(host), int(port)

    def stop(self) -> None:
        if self._unsubscribe_sink is not None:
            self._unsubscribe_sink()
            self._unsubscribe_sink = None
        self._stopping.set()
        if self._receiver is not None:
            self._receiver.join()
            self._receiver = None
        self._forwarder.stop()
        if self._socket is not None:
            self._socket.close()

    # -- receiving --

    def _receive_loop(self) -> None:
        assert self._socket is not None
        while not self._stopping.is_set():
            try:
                data, sender = self._socket.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError as exc:  # e.g. an ICMP "port unreachable" surfacing on some systems
                logger.debug("OSC: receive failed: %s", exc)
                continue
            try:
                self._on_datagram(data, (str(sender[0]), int(sender[1])))
            except Exception:  # the last line of defence: a bug must not stop the server
                logger.exception("OSC: unexpected failure handling a datagram from %s", sender[0])

    def _on_datagram(self, data: bytes, sender: Address) -> None:
        if not self._guard.admits(sender[0]):
            self._log.warning(sender[0], "OSC: ignored a datagram from %s, which is not in the client "
                              "allowlist", sender[0])
            return
        reply_to = self._answer_address(sender)
        for item in decode_datagram(data):
            if isinstance(item, Undecodable):
                if item.address:
                    self._refuse(reply_to, "", f"{shorten(item.address, 80, quoted=False)}: {item.reason}.")
                else:
                    self._refuse(reply_to, "", f"OSC: {item.reason}. This bridge answers "
                                 f"{self._known_addresses()}.")
                continue
            self._on_message(item, sender, reply_to)

    def _on_message(self, message: Incoming, sender: Address, reply_to: Address) -> None:
        route = self._routes.get(message.address)
        if route is None:
            self._refuse(reply_to, "", self._unknown_address(message.address))
            return
        name, handler = route
        try:
            args = self._guard.strip_token(message.args)
        except TokenProblem as problem:
            self._refuse(reply_to, "", f"{message.address}: {problem}.")
            return
        key = _reply_key(name, args)
        try:
            values = validate_args(REQUESTS_BY_NAME[name], args, self._prefix)
            handler(_Call(message.address, values, sender, reply_to))
        except ArgumentProblem as problem:
            self._refuse(reply_to, key, str(problem))
        except BridgeError as err:
            self._refuse(reply_to, key, f"{message.address}: {err.message} {err.hint}".strip())
        except RequestRejected as err:
            self._refuse(reply_to, key, f"{message.address}: {err}")
        except Exception:  # a bug here or in the engine: the details go to the log, not to the patch
            logger.exception("OSC: unexpected failure handling %s", message.address)
            self._refuse(reply_to, key, f"{message.address}: {_INTERNAL_ERROR}")

    # -- handlers (one per entry of REQUESTS) --

    def _separate(self, call: _Call) -> None:
        values, client = call.values, call.sender[0]
        host = host_key(client)
        tag = str(values.get("tag", ""))
        limit, window = self._settings.rate_limit
        if not self._separations.allows(host):
            wait = math.ceil(self._separations.seconds_until_free(host))
            raise InputError(f"Too many separations from {client}: at most {limit} every {window:g} s, so "
                             "this one was not queued.", hint=f"Try again in {wait} s (is a patch looping?).")
        total, total_window = self._settings.total_rate_limit
        if not self._all_separations.allows(_ALL):
            wait = math.ceil(self._all_separations.seconds_until_free(_ALL))
            raise InputError(f"Too many separations over OSC: at most {total} every {total_window:g} s from all "
                             "clients together, so this one was not queued.",
                             hint=f"Try again in {wait} s (osc rate_limit_total in the config sets the cap).")
        request = self._request(call)
        with self._forwarder.lock:
            job_id = self._sink.submit(request)
            self._separations.record(host)
            self._all_separations.record(_ALL)
            self._forwarder.add_owner(job_id, call.reply_to)
            self._reply(call.reply_to, "accepted", [tag, job_id])
        logger.info("OSC: queued job %s for %s (%s)", job_id, client, request.preset or "prompt")

    def _estimate(self, call: _Call) -> None:
        found = self._sink.estimate(self._request(call))
        self._reply(call.reply_to, "estimate/ok", [
            str(call.values.get("tag", "")), found.seconds, found.requests, found.estimated_cost, found.currency,
            -1.0 if found.confirm_above is None else found.confirm_above, int(found.needs_confirmation),
            -1.0 if found.whole_cost is None else found.whole_cost])

    def _request(self, call: _Call) -> SeparationRequest:
        """/sam/separate's and /sam/estimate's arguments as a request, paths checked against the policy."""
        values = call.values
        source = self._policy.source_file(str(values["source_path"]))
        project: Path | None = None
        if "project_dir" in values:
            project = self._policy.output_folder(str(values["project_dir"]))
        else:  # the stems will go beside the source
            self._policy.output_folder(source.parent, "folder of the source (where the stems would go)")
        preset, prompt = self._preset_or_prompt(str(values["preset_or_prompt"]), project)
        audition = _number(values.get("audition"))
        try:
            options = parse_option_text(str(values.get("options", "")))
            spans = [Span.parse(word) for word in str(values.get("spans", "")).split()] or None
            return SeparationRequest(
                source=source, preset=preset, prompt=prompt, project_dir=project, output_dir=None,
                start=_number(values.get("start")), length=_number(values.get("length")), spans=spans,
                audition=audition or None, options=options, tag=str(values.get("tag", "")), origin=Origin.osc,
                idempotency_key=None, confined_to=self._policy)
        except pydantic.ValidationError as exc:
            raise InputError(f"The request is not usable: {field_problem(exc.errors()[0])}.",
                             hint="Check the arguments against the OSC table in the README.") from exc
        except ValueError as exc:
            raise InputError(f"The request is not usable: {exc}.",
                             hint="Options are key=value words, spans START-END words: the README's OSC "
                             "table says how.") from exc

    def _preset_or_prompt(self, text: str, project: Path | None) -> tuple[str | None, str | None]:
        """A preset name wins (any case; the project's own presets too); otherwise the text is a prompt."""
        # a broken preset's name too: its sender gets the file's problems, not a paid job for that prompt
        by_lower = {name.lower(): name for name in self._sink.preset_names(project, include_broken=True)}
        preset = by_lower.get(text.lower())
        return (preset, None) if preset else (None, text)

    def _cancel(self, call: _Call) -> None:
        job_id = str(call.values["job_id"])
        if not self._sink.cancel(job_id):
            raise InputError(f"There is no queued or running job {shorten(job_id)}.",
                             hint="It may have finished already; ask /sam/status for the jobs.")
        self._reply(call.reply_to, "cancel/ok", [job_id])

    def _status(self, call: _Call) -> None:
        if "job_id" in call.values:
            view = self._sink.get(str(call.values["job_id"]))
            if view is None:
                raise InputError(f"There is no job {shorten(call.values['job_id'])}.",
                                 hint="Send /sam/status without arguments to list the jobs.")
            views, left_out = [view], 0
        else:  # capped: one datagram in must not become dozens out
            every = sorted(self._sink.jobs(), key=lambda v: v.updated_at, reverse=True)
            views, left_out = every[:STATUS_LIMIT], max(0, len(every) - STATUS_LIMIT)
        for view in views:
            self._reply(call.reply_to, "status/job",
                        [view.job_id, view.state.value, view.progress, view.message, view.tag])
        self._reply(call.reply_to, "status/end", [len(views), left_out])

    def _presets(self, call: _Call) -> None:
        project: Path | None = None
        if "project_dir" in call.values:
            asked = str(call.values["project_dir"])
            try:
                project = self._policy.output_folder(asked)
            except PathNotAllowed as refused:  # the menu still gets the shared list, and the client hears why
                logger.info("OSC: listing the shared presets only: %s", refused.message)
                self._reply(call.reply_to, "presets/refused",
                            [asked, f"Its own presets were not read: {refused.message} {refused.hint}".strip()])
        names = list(self._sink.preset_names(project, include_broken=True))  # choosing one shows why
        chunk: list[ArgValue] = []
        size = 0
        for name in names:
            if chunk and size + len(name.encode()) + 5 > _PRESET_CHUNK_BYTES:
                self._reply(call.reply_to, "presets/list", chunk)
                chunk, size = [], 0
            chunk.append(name)
            size += len(name.encode()) + 5  # text + padding + its type tag
        if chunk:
            self._reply(call.reply_to, "presets/list", chunk)
        self._reply(call.reply_to, "presets/end", [len(names)])

    def _ping(self, call: _Call) -> None:
        self._reply(call.reply_to, "pong", [self._version, self._health()])

    def _reply_to(self, call: _Call) -> None:
        port = int(call.values["port"])
        self._reply_ports.pop(call.sender, None)  # re-inserted last: the most recent are kept
        self._reply_ports[call.sender] = port
        while len(self._reply_ports) > _MAX_REPLY_PORTS:
            self._reply_ports.pop(next(iter(self._reply_ports)))
        self._reply((call.sender[0], port), "reply_to/ok", [port])

    def _answer_address(self, sender: Address) -> Address:
        """Where answers to `sender` go: the port it named, else the configured one, else its own."""
        port = self._reply_ports.get(sender) or self._settings.reply_port or sender[1]
        return sender[0], port

    def _subscribe(self, call: _Call) -> None:
        port = int(call.values["port"])
        if not self._forwarder.subscribe((call.sender[0], port)):
            raise InputError(f"There are already {MAX_SUBSCRIBERS} subscriptions.",
                             hint="Unsubscribe ports you no longer use (/sam/unsubscribe), "
                             "or restart the bridge.")
        self._reply(call.reply_to, "subscribe/ok", [port])

    def _unsubscribe(self, call: _Call) -> None:
        port = int(call.values["port"])
        self._forwarder.unsubscribe((call.sender[0], port))
        self._reply(call.reply_to, "unsubscribe/ok", [port])

    # -- sending --

    def _reply(self, to: Address, name: str, args: Sequence[ArgValue]) -> None:
        self._send_raw(to, encode_reply(self._prefix, name, args))

    def _refuse(self, to: Address, key: str, message: str) -> None:
        self._log.warning(to[0], "OSC: refused a request from %s: %s", to[0], message)
        if self._error_replies.try_acquire(f"{to[0]}:{to[1]}") and self._host_error_replies.try_acquire(to[0]):
            self._reply(to, "error", [key, message])

    def _send_raw(self, to: Address, data: bytes) -> None:
        sock = self._socket
        if sock is None:
            return
        try:
            sock.sendto(data, to)
        except OSError as exc:
            self._log.warning(to[0], "OSC: could not send to %s:%d: %s", to[0], to[1], exc)

    def _known_addresses(self) -> str:
        return ", ".join(self._routes)

    def _unknown_address(self, address: str) -> str:
        text = (f"{shorten(address, 80, quoted=False)} is not an address this bridge knows; "
                f"it answers {self._known_addresses()}.")
        tail = address.rsplit("/", 1)[-1]
        if tail in REQUESTS_BY_NAME and not address.startswith(self._prefix + "/"):
            text += f" (Is the prefix in your patch set to {self._prefix}?)"
        return text


def _reply_key(name: str, args: list[Any]) -> str:
    """The first argument of a /sam/error about this request: the tag or job id the client knows."""
    position = {"separate": 2, "estimate": 2, "cancel": 0, "status": 0}.get(name)
    if position is not None and len(args) > position and isinstance(args[position], str):
        return str(args[position])[:200]
    return ""


def _number(value: ArgValue | None) -> float | None:
    return None if value is None else float(value)


def _check_prefix(prefix: str) -> None:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./")
    if not prefix.startswith("/") or prefix.endswith("/") or not set(prefix) <= allowed or "//" in prefix:
        raise ConfigError(f"The OSC prefix {prefix!r} is not usable.",
                          hint="Use a prefix like /sam: a slash, then letters, digits, - or _, "
                          "no slash at the end.")
