"""`sam-bridge run`: one long-running process the DAW scripts and folders talk to.

It wires the parts together and nothing more: the journal and job engine, the ways in (request files,
OSC, hot folders), the preset library (reloaded when its files change), and the files DAW scripts read
(`daemon.json`, `presets.json` in the state folder).
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from bridge import __version__
from bridge.common.claims import ClaimBackend
from bridge.common.config import Config, config_dir, config_file_present, log_dir, state_dir
from bridge.common.errors import BridgeError, FolderUnavailable
from bridge.common.path_policy import PathPolicy
from bridge.common.processes import ensure_std_streams
from bridge.common.redact import SafeLogFilter
from bridge.common.stems import write_json_atomic
from bridge.engine.engine import EngineSettings, JobEngine
from bridge.engine.journal import open_journal
from bridge.engine.pipeline import Pipeline
from bridge.engine.service_choice import ServiceChoice, open_client
from bridge.fal.auth import key_in_env
from bridge.hotfolder.watcher import HotFolder, HotFolderWatcher, default_hot_folder
from bridge.osc.server import OscServer, OscSettings
from bridge.presets.library import PresetLibrary
from bridge.presets.project_lists import ProjectPresetLists
from bridge.request_files.folder import RequestFolder

log = logging.getLogger(__name__)


DAMAGED_GRACE = 5.0  # seconds a daemon whose journal broke keeps saying so before it exits


class AlreadyRunning(BridgeError):
    exit_code = 3


@contextmanager
def instance_lock(folder: Path) -> Iterator[None]:
    """One daemon per user: an OS lock on `daemon.lock` (released by the OS if we die)."""
    path = folder / "daemon.lock"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the daemon's lifetime
    except OSError as exc:
        raise unwritable_folder(folder, "state", exc) from None
    try:
        _lock_file(handle)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise AlreadyRunning(f"sam-bridge is already running (process {holder}); only one daemon per user.",
                             hint="Stop it first, or use `sam-bridge status` to talk to it.") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield
    finally:
        handle.close()


def _lock_file(handle: TextIO) -> None:
    if sys.platform == "win32":
        import msvcrt

        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
    else:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def unwritable_folder(folder: Path, what: str, exc: OSError) -> FolderUnavailable:
    """A folder the daemon must write (its state, its log) that it cannot: said plainly, not a traceback."""
    return FolderUnavailable(f"Cannot write the {what} folder {folder}: {exc.strerror or exc}.",
                       hint="Make it a writable folder, or point SAM_BRIDGE_STATE_DIR at one.")


def setup_logging(verbose: int, quiet: bool) -> Path:
    folder = log_dir()
    path = folder / "daemon.log"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        rotating = logging.handlers.RotatingFileHandler(path, maxBytes=5_000_000, backupCount=3, encoding="utf-8")
    except OSError as exc:
        raise unwritable_folder(folder, "log", exc) from None
    level = logging.WARNING if quiet else (logging.INFO, logging.DEBUG)[min(verbose, 1)]
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(min(level, logging.INFO))
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(level)
    rotating.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    for handler in (stderr, rotating):
        handler.setFormatter(formatter)
        SafeLogFilter.install(handler)  # the key masked, outside text's control characters escaped
        root.addHandler(handler)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("watchdog").setLevel(logging.WARNING)
    return path


def choose_service(config: Config, local: bool, url: str | None) -> ServiceChoice:
    priorities = {str(way): str(priority) for way, priority in config.service.queue_priority.items()}
    queue = ServiceChoice(start_timeout=config.service.start_timeout, priorities=priorities)
    if url or (config.service.url and not local):
        return replace(queue, url=url or config.service.url)
    if local or config.service.mode == "local" or (config.service.mode == "auto" and not key_in_env()):
        return replace(queue, local=True, local_delay=config.service.local_delay)
    return queue


@dataclass
class DaemonInfo:
    requests_dir: Path
    osc_address: tuple[str, int] | None
    hot_folders: list[HotFolder]
    log_file: Path


class Daemon:
    """The wired-up daemon; `start()` returns once everything listens, `stop()` within a few seconds."""

    def __init__(self, config: Config, choice: ServiceChoice, state: Path | None = None) -> None:
        self.config, self.choice = config, choice
        self.state = state or state_dir()
        self._stack = ExitStack()
        self._stop = threading.Event()
        self._stop_asked = False  # set by signal handlers (see request_stop)
        self.library = PresetLibrary.default(config_dir=config_dir())
        self.engine: JobEngine | None = None
        self.request_folder: RequestFolder | None = None
        self.claims: ClaimBackend | None = None  # the team database's claims (None: marker files)

    def start(self, log_file: Path) -> DaemonInfo:
        stack = self._stack
        stack.enter_context(instance_lock(self.state))
        instance = self.config.instance_name(self.state)  # the same across restarts: it knows its own requests
        journal = open_journal(self.config.database, self.state, instance, lease=self.config.lease_seconds,
                               daemon=True, pool_size=self.config.concurrency + 4)
        stack.callback(journal.close)
        if journal.team:
            log.info("team mode: journal %s, instance %s", journal.where, instance)  # where: no password
        self.claims = journal.claims(instance, limit=self.config.concurrency + 2)  # None: marker files
        client = stack.enter_context(open_client(self.choice))
        settings = EngineSettings(
            concurrency=self.config.concurrency, dedupe=self.config.dedupe, daily_budget=self.config.daily_budget,
            prices=self.config.prices, workroot=self.state / "work", confirm_above=self.config.confirm_above,
        )
        pipeline = Pipeline(client, prices=self.config.prices, upload_bits=self.config.upload_bits,
                            service=self.choice.service_name)
        engine = self.engine = JobEngine(journal, pipeline, self.library, settings)
        engine.start()
        stack.callback(engine.stop)
        requests_dir = self.config.requests_folder(self.state)
        hot = self._hot_folders()
        self.policy = self._door_policy(hot)
        request_folder = self.request_folder = RequestFolder(engine, requests_dir, policy=self.policy,
                                                             instance_id=instance, claims=journal.claims(instance))
        request_folder.start()
        stack.callback(request_folder.stop)
        self._start_hot_folders(engine, hot)
        osc_address = self._start_osc(engine)
        self._write_presets_file()
        info = DaemonInfo(requests_dir, osc_address, hot, log_file)
        self._start_keep_alive()  # its first heartbeat before daemon.json: a script never sees one alone
        write_json_atomic(self.state / "daemon.json", {
            "pid": os.getpid(), "version": __version__, "requests_dir": str(requests_dir),
            "osc": {"host": osc_address[0], "port": osc_address[1]} if osc_address else None,
            "presets_file": str(self.state / "presets.json"),
            # a project's list (shared presets + its own): DAW scripts run this + ["--project", <folder>].
            # UTF-8 mode: on Windows a pipe would otherwise get the ANSI code page.
            "presets_command": [sys.executable, "-X", "utf8", "-m", "bridge", "presets", "list", "--json",
                                "--config-dir", str(config_dir())],
            "hot_folder": str(hot[0].path) if hot else None, "hot_folders": [str(f.path) for f in hot],
            "service": "local" if self.choice.is_stand_in else "fal",
            # DAW scripts ask before sending a job estimated above this (`"estimate_only"` gives the estimate)
            "confirm_above": self.config.confirm_above, "currency": self.config.prices.currency,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **self._keep_alive_files(),
        })
        stack.callback(lambda: (self.state / "daemon.json").unlink(missing_ok=True))
        reloader = threading.Thread(target=self._reload_presets, name="preset-reload", daemon=True)
        reloader.start()
        return info

    def _door_policy(self, hot: list[HotFolder]) -> PathPolicy:
        """The one door policy every untrusted way in uses (OSC, hot folders and their sidecars, a shared
        requests folder): the home folder, the hot folders, their configured output folders, and the
        folders the config allows."""
        roots = (Path.home(), *(f.path for f in hot))
        outputs = tuple(f.output_dir.expanduser() for f in hot if f.output_dir is not None)
        return PathPolicy.from_roots((*roots, *self.config.allowed_source_roots),
                                     (*roots, *outputs, *self.config.allowed_output_roots))

    def _hot_folders(self) -> list[HotFolder]:
        folders = [HotFolder(path=f.path.expanduser(), preset=f.preset, output_dir=f.output_dir,
                             recursive=f.recursive, polling=f.polling, settle_seconds=f.settle_seconds,
                             after_success=f.after_success) for f in self.config.hot_folders]
        if self.config.default_hot_folder:
            folders.insert(0, HotFolder(path=default_hot_folder()))
        return folders

    def _start_hot_folders(self, engine: JobEngine, folders: list[HotFolder]) -> None:
        if not folders:
            return
        known = set(self.library.names(include_broken=True))
        for folder in folders:
            # Only the default hot folder is made (with its preset subfolders, below). A configured one that is
            # missing is on a drive not connected (/Volumes/X), or not made yet: making it would put it on the
            # wrong disk, or fail and stop the daemon. The watcher says so in the log and watches for it; the
            # start-up lines say it too.
            if folder.path == default_hot_folder():
                folder.path.mkdir(parents=True, exist_ok=True)
            if folder.preset is not None and folder.preset not in known:  # each file dropped there would fail
                log.warning("hot folder %s names the preset %r, which does not exist: files dropped there fail "
                            "until it does (`sam-bridge presets list` names the presets)", folder.path, folder.preset)
        self.hot_watcher = HotFolderWatcher(
            engine, folders, instance_id=f"{socket.gethostname()}:{os.getpid()}",
            rescan_interval=self.config.hot_rescan_interval,
            preset_names=lambda: self.library.names(include_broken=True),  # a broken one's file says why
            policy=self.policy,
            claims=self.claims,
            # team mode: its heartbeat (claims, and jobs another daemon finished for us) follows the lease
            **({"claim_ttl": self.config.lease_seconds} if self.claims else {}),
        )
        self.hot_watcher.ensure_preset_folders(self.library.names())
        self.hot_watcher.start()
        self._stack.callback(self.hot_watcher.stop)

    def _start_osc(self, engine: JobEngine) -> tuple[str, int] | None:
        osc = self.config.osc
        if not osc.enabled:
            return None
        settings = OscSettings(
            host=osc.host, port=osc.port, prefix=osc.prefix, reply_port=osc.reply_port,
            allow_clients=tuple(osc.allow_clients), token=osc.token, rate_limit=(osc.rate_limit, osc.rate_window),
            total_rate_limit=(osc.rate_limit_total, osc.rate_window),
        )
        server = OscServer(engine, settings, __version__, policy=self.policy, health=self.health)
        server.start()
        self._stack.callback(server.stop)
        return server.address

    def health(self) -> str:
        """One word for /sam/pong: `ok`, or what is wrong (`journal-damaged`, `requests-folder-unreachable`)."""
        engine = self.engine
        if engine is None:
            return "starting"
        word = engine.health()
        if word == "ok" and self.request_folder is not None and not self.request_folder.reachable:
            return "requests-folder-unreachable"  # its requests wait; everything else works
        return word

    def _write_presets_file(self) -> None:
        presets = []
        for preset in self.library.presets():
            presets.append({
                "name": preset.name, "description": preset.description, "tags": list(preset.tags),
                "stems": preset.stem_labels,
                "origin": self.library.origin_of(preset.name),
            })
        write_json_atomic(self.state / "presets.json", {"presets": presets})

    # --- for DAW scripts that must not wait: a heartbeat, and project preset lists -----------------

    HEARTBEAT_INTERVAL = 1.0  # seconds; scripts call a heartbeat older than a few of these dead

    def _keep_alive_files(self) -> dict[str, Any]:
        return {"heartbeat_file": str(self.state / "heartbeat.json"),
                "heartbeat_interval": self.HEARTBEAT_INTERVAL,
                "project_presets_dir": str(self.state / "project-presets")}

    def _write_heartbeat(self) -> None:
        write_json_atomic(self.state / "heartbeat.json", {"pid": os.getpid(), "time": time.time(),
                                                          "interval": self.HEARTBEAT_INTERVAL})

    def _start_keep_alive(self) -> None:
        """Refreshes heartbeat.json (pid + time) and the project preset lists until the daemon stops."""
        lists = ProjectPresetLists(self.library, self.state / "project-presets")
        self._write_heartbeat()

        def loop() -> None:
            while not self._stop.wait(self.HEARTBEAT_INTERVAL):
                try:
                    self._write_heartbeat()
                    lists.refresh()
                except Exception:
                    log.exception("heartbeat or project preset lists failed")

        thread = threading.Thread(target=loop, name="keep-alive", daemon=True)
        thread.start()
        # a clean stop says so at once: no heartbeat file, no waiting for it to go stale
        self._stack.callback(lambda: (self.state / "heartbeat.json").unlink(missing_ok=True))
        self._stack.callback(lambda: thread.join(timeout=5))

    def _reload_presets(self) -> None:
        while not self._stop.wait(2.0):
            try:
                if self.library.refresh():
                    log.info("presets reloaded: %s", ", ".join(self.library.names()))
                    self._write_presets_file()
                    watcher = getattr(self, "hot_watcher", None)
                    if watcher is not None:
                        watcher.ensure_preset_folders(self.library.names())
                for problem in self.library.errors():
                    log.debug("preset problem: %s", problem)
            except Exception:
                log.exception("preset reload failed")

    def wait(self) -> int:
        """Until asked to stop (0), or until the journal breaks under us (4): then no new work is taken,
        every way in says why for DAMAGED_GRACE seconds (/sam/pong's health word included), one log line
        says what to do, and the exit code lets a service manager restart us into the clear message."""
        while not self._stop_asked and not self._stop.wait(0.5):
            if self.engine is not None and self.engine.health() == "journal-damaged":
                assert self.engine is not None
                error = self.engine.journal.damaged_error()
                log.critical("%s %s", error.message, error.hint)
                self._stop.wait(DAMAGED_GRACE)
                return error.exit_code
        return 0

    def request_stop(self, *_args: Any) -> None:
        """A signal handler: only a plain flag, no lock. A second signal arriving while a handler is inside
        Event.set would wait forever for the lock that handler holds; `wait` sees the flag within 0.5 s.
        Asked again while stopping: the stop no longer waits for a submit's answer (a plain flag too)."""
        if self._stop_asked and self.engine is not None:
            self.engine.hurry()
        self._stop_asked = True

    def stop(self) -> None:
        self._stop.set()
        self._stack.close()


def limit_malloc_arenas(arenas: int = 1) -> None:
    """glibc gives each thread its own malloc arena and seldom returns their freed pages, so every job
    thread would keep a conform's peak working set for good (measured: 230 MB → 127 MB under load)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    m_arena_max = -8
    with contextlib.suppress(OSError, AttributeError):  # musl or another libc: nothing to tune
        ctypes.CDLL("libc.so.6").mallopt(m_arena_max, arenas)




def run_daemon(config: Config, choice: ServiceChoice, *, verbose: int = 0, quiet: bool = False,
               out: Callable[[str], None] = print, config_file: Path | None = None) -> int:
    """`config_file`: where the config was looked for (said at start, and whether it was there)."""
    ensure_std_streams()  # before the log handlers take sys.stderr (also done by the CLI's main)
    limit_malloc_arenas()  # before any thread starts
    log_file = setup_logging(verbose, quiet)
    daemon = Daemon(config, choice)
    # Before start(): a stop asked for while it starts (a service manager, a closed terminal) must find
    # the handler, or the default action kills the daemon and leaves daemon.json behind.
    signal.signal(signal.SIGINT, daemon.request_stop)
    signal.signal(signal.SIGTERM, daemon.request_stop)
    # The terminal it runs in was closed: stop as cleanly as for Ctrl-C (unless `nohup` ignores that).
    if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
        signal.signal(signal.SIGHUP, daemon.request_stop)
    try:
        info = daemon.start(log_file)
    except BaseException:
        daemon.stop()
        raise
    out(f"sam-bridge {__version__} is running — {choice.describe()}")
    out(f"  requests folder: {info.requests_dir}")
    for folder in info.hot_folders:
        what = f"preset {folder.preset}" if folder.preset else "drop audio into a preset's subfolder"
        if not folder.path.is_dir():
            what += "; missing (a drive not connected?): watched for, used as soon as it appears"
        out(f"  hot folder:      {folder.path}  ({what})")
    if info.osc_address:
        out(f"  OSC:             udp://{info.osc_address[0]}:{info.osc_address[1]} (prefix {config.osc.prefix})")
    out(f"  log file:        {info.log_file}")
    if config_file is not None:
        found = config_file_present(config_file)
        out(f"  config:          {config_file}{'' if found else ' (not there: the defaults)'}")
    out("Press Ctrl-C to stop; jobs in flight resume on the next start.")
    sys.stdout.flush()
    try:
        code = daemon.wait()
    finally:
        log.info("stopping: no new work; in-flight jobs resume on the next start")
        daemon.stop()
    return code

