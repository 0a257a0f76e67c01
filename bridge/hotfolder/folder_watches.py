"""The hot folders' watches: one watchdog observer per folder (the polling observer where it is asked for),
and each folder's parent (or, for a folder that does not exist, its nearest existing ancestor) watched
without its contents, so that a folder deleted or moved away and made again, or one made after the start,
is watched at once. Events only become notes ("look at this path", "it arrived", "it left") handed to the
watcher's worker, which makes every decision (`bridge.hotfolder.watcher`).

Those folder events are not always sent (macOS's FSEvents drops a non-recursive watch's folder events,
watchdog issues #918 and #1013; a drive mounted on a folder makes none), so the worker also calls `look`
once a second: a stat of each folder, which finds one that appeared or that is another folder than the one
watched."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

from watchdog.events import EVENT_TYPE_DELETED, EVENT_TYPE_MOVED, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from bridge.hotfolder.names import source_for_error_file
from bridge.hotfolder.network_drives import network_filesystem_type
from bridge.hotfolder.routes import FolderRoutes, HotFolder

log = logging.getLogger(__name__)

# What an event says about its path: look at it; it arrived (created, moved in); it left (deleted, moved away).
LOOK, ARRIVED, LEFT = "look", "arrived", "left"

Note = Callable[[Path, bool, str], None]  # (path, is_directory, LOOK/ARRIVED/LEFT), called on watchdog's threads


class _EventForwarder(FileSystemEventHandler):
    """Turns watchdog events into notes; all decisions happen on the worker."""

    def __init__(self, note: Note) -> None:
        self._note = note

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return  # our own reads cause these
        if event.event_type == EVENT_TYPE_MOVED:
            if event.src_path:
                self._note(Path(os.fsdecode(event.src_path)), event.is_directory, LEFT)
            self._note(Path(os.fsdecode(event.dest_path)), event.is_directory, ARRIVED)
            return
        path = Path(os.fsdecode(event.src_path))
        if event.event_type == EVENT_TYPE_DELETED:
            source = source_for_error_file(path)
            if source is not None:  # error file deleted: the user asks for a retry
                self._note(source, False, LOOK)
            self._note(path, event.is_directory, LEFT)
            return
        if event.is_directory and event.event_type != "created":
            return
        self._note(path, event.is_directory, ARRIVED if event.event_type == "created" else LOOK)


class _AnchorForwarder(_EventForwarder):
    """A hot folder's parent (or nearest existing ancestor), watched without its contents: only folders
    made, deleted or moved there count (the hot folder itself, or a folder on the way to it)."""

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory and event.event_type in ("created", EVENT_TYPE_DELETED, EVENT_TYPE_MOVED):
            super().on_any_event(event)


class FolderWatches:
    """The observers of the folders `routes` names and of their parents. Used by the watcher's worker only
    (and by its start and stop)."""

    def __init__(self, routes: FolderRoutes, note: Note) -> None:
        self._routes = routes
        self._note = note
        self._observers: dict[Path, BaseObserver] = {}
        self._watched_ids: dict[Path, tuple[int, int]] = {}  # each folder as it was watched (see _identity)
        self._by_name: set[Path] = set()  # folders told apart by device alone (see _identity)
        self._anchor_observers: dict[bool, BaseObserver] = {}  # by polling: the folders' parents, not deep
        self._anchors: dict[tuple[Path, bool], ObservedWatch] = {}
        self._retired: list[BaseObserver] = []  # observers of folders that went away: joined at stop()
        self._missing_reported: set[Path] = set()

    def watch(self, create: Path | None = None) -> list[Path]:
        """Watch every folder there is, and the parent (or nearest existing ancestor) of each, so that a
        folder made (again) is seen at once; `create` is made when it is missing (the default hot folder).
        Returns the folders newly watched (their files need a look).

        Runs until nothing changes: a folder made while its ancestor's watch was being set up is seen."""
        started: list[Path] = []
        for _ in range(8):
            new = [root for folder, root in self._routes.folders
                   if root not in self._observers and self._watch_folder(folder, root, create)]
            started += new
            moved = self._watch_anchors()
            if not new and not moved:
                break
        return started

    def watches_under(self, path: Path) -> bool:
        """True when a folder at or under `path` is being watched."""
        return any(root.is_relative_to(path) for root in self._observers)

    def gone(self, path: Path) -> None:
        """`path`, a folder, was deleted or moved away: the watches on it and under it are dead (inotify
        follows the folder, not its name), so a folder made there again needs new ones (`watch`)."""
        for root in [r for r in self._observers if r.is_relative_to(path)]:
            observer = self._observers.pop(root)
            self._watched_ids.pop(root, None)
            observer.stop()
            self._retired.append(observer)
            log.info("Hot folder %s is gone; watching for it to be made again", root)
        for key in [k for k in self._anchors if k[0].is_relative_to(path)]:
            self._unwatch_anchor(key)

    def look(self) -> bool:
        """The folders themselves, whatever events came: one gone or replaced (deleted and made again, a
        drive mounted on it) loses its watches. True when a folder needs new watches (`watch`)."""
        changed = False
        for _, root in self._routes.folders:
            try:
                info = os.stat(root)
                now_id: tuple[int, int] | None = self._identity(root, info) if stat.S_ISDIR(info.st_mode) else None
            except (FileNotFoundError, NotADirectoryError):
                now_id = None
            except OSError:  # a share that does not answer now: no reason to think the folder changed
                continue
            watched = root in self._observers
            if watched and now_id != self._watched_ids.get(root):
                self.gone(root)
                changed = True
            elif not watched and now_id is not None:
                changed = True
        return changed

    def stop(self) -> None:
        """Stop and join every observer."""
        observers = [*self._observers.values(), *self._anchor_observers.values(), *self._retired]
        for observer in observers:
            observer.stop()
        for observer in observers:
            observer.join()
        self._observers.clear()
        self._anchor_observers.clear()
        self._anchors.clear()
        self._retired.clear()

    def _watch_anchors(self) -> bool:
        """Watch where each folder would appear; True when a watch was added (look again: a folder on the way
        may have been made meanwhile)."""
        wanted: dict[tuple[Path, bool], None] = {}
        for folder, root in self._routes.folders:
            anchor = next((p for p in root.parents if p.is_dir()), None)
            if anchor is not None:
                wanted[(anchor, folder.polling)] = None
        for key in [k for k in self._anchors if k not in wanted]:
            self._unwatch_anchor(key)
        added = False
        for anchor, polling in wanted:
            if (anchor, polling) in self._anchors:
                continue
            observer = self._anchor_observers.get(polling)
            if observer is None:
                observer = PollingObserver(timeout=1.0) if polling else Observer()
                observer.daemon = True
                observer.start()
                self._anchor_observers[polling] = observer
            try:
                self._anchors[(anchor, polling)] = observer.schedule(_AnchorForwarder(self._note), str(anchor),
                                                                     recursive=False)
            except OSError as exc:  # gone meanwhile: the next round looks again
                log.debug("Hot folder: cannot watch %s for the folders in it: %s", anchor, exc)
                continue
            added = True
        return added

    def _unwatch_anchor(self, key: tuple[Path, bool]) -> None:
        watch = self._anchors.pop(key, None)
        observer = self._anchor_observers.get(key[1])
        if watch is not None and observer is not None:
            with contextlib.suppress(KeyError, OSError):
                observer.unschedule(watch)

    def _watch_folder(self, folder: HotFolder, root: Path, create: Path | None) -> bool:
        """Start the observer of one folder; False when the folder is not there (yet)."""
        if not root.is_dir():
            if root == create:
                root.mkdir(parents=True, exist_ok=True)
            else:
                if root not in self._missing_reported:
                    self._missing_reported.add(root)
                    log.warning("Hot folder %s is missing (drive not connected?); watching for it", root)
                return False
        self._missing_reported.discard(root)
        fs_type = network_filesystem_type(root)
        if fs_type and not folder.polling:
            log.warning(
                "Hot folder %s is on a network drive (%s): files saved from other computers may go "
                "unnoticed until the next rescan. Set 'polling: true' for this folder.", root, fs_type
            )
        observer: BaseObserver
        if folder.polling:
            observer = PollingObserver(timeout=max(0.1, min(folder.settle_seconds / 2, 1.0)))
        else:
            observer = Observer()
        deep = folder.recursive or folder.preset is None
        observer.daemon = True
        try:
            observer.schedule(_EventForwarder(self._note), str(root), recursive=deep)
            observer.start()
        except OSError as exc:  # deleted again meanwhile
            log.debug("Hot folder: cannot watch %s: %s", root, exc)
            return False
        self._observers[root] = observer
        if folder.polling or fs_type:
            self._by_name.add(root)  # polled by its path anyway; a network drive's inode numbers may change
        with contextlib.suppress(OSError):
            self._watched_ids[root] = self._identity(root, os.stat(root))
        log.info("Watching hot folder %s%s", root, " (polling)" if folder.polling else "")
        return True

    def _identity(self, root: Path, info: os.stat_result) -> tuple[int, int]:
        """What tells a folder made again from the one watched: its device and inode, or its device alone
        where the watch follows the path (polling) or the inode may change (a network drive)."""
        return info.st_dev, 0 if root in self._by_name else info.st_ino
