"""The app's result files (each edit's PNG, the download), kept while they can still be asked for.

A file belongs to the session that made it (a browser tab, a gradio_client Client). Kept:

    the newest PER_SESSION (24, the page's history) of each session: older ones are deleted as
    new ones arrive, so every edit the history shows can still be downloaded;
    IN_ALL (480) at most in all: beyond that the oldest file of any session goes first (API
    callers that never end a session, e.g. plain HTTP calls, are each a session of their own);

and a session's files are deleted when the session ends (Gradio's unload: the tab is closed, the
Client is closed or its process exits). What is left when the app stops goes with its folder.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

PER_SESSION = 24
IN_ALL = 480


class ResultFiles:
    """Which result file belongs to which session, deleting the ones past the bounds. Thread-safe:
    the queue's worker threads add files while an unload ends another session."""

    def __init__(self, per_session: int = PER_SESSION, in_all: int = IN_ALL):
        if per_session < 1 or in_all < per_session:
            raise ValueError(f"need 1 <= per_session <= in_all, got {per_session} and {in_all}")
        self.per_session = per_session
        self.in_all = in_all
        self._lock = threading.Lock()
        self._owner: OrderedDict[Path, str] = OrderedDict()  # every kept file, oldest first
        self._by_session: dict[str, list[Path]] = {}  # each session's files, oldest first

    def keep(self, session: str, path: str | Path) -> list[Path]:
        """Record `path` as `session`'s newest result; delete (and return) the files that fall
        out of the bounds."""
        path = Path(path)
        with self._lock:
            self._owner[path] = session
            self._by_session.setdefault(session, []).append(path)
            evicted = self._by_session[session][: -self.per_session]
            for old in evicted:
                self._drop(old)
            while len(self._owner) > self.in_all:
                oldest = next(iter(self._owner))
                self._drop(oldest)
                evicted.append(oldest)
        _delete(evicted)
        return evicted

    def end_session(self, session: str) -> list[Path]:
        """Delete (and return) every file of `session`."""
        with self._lock:
            files = list(self._by_session.get(session, []))
            for path in files:
                self._drop(path)
        _delete(files)
        return files

    def files(self, session: str | None = None) -> list[Path]:
        """The kept files (of one session), oldest first."""
        with self._lock:
            return list(self._owner if session is None else self._by_session.get(session, []))

    def _drop(self, path: Path) -> None:
        session = self._owner.pop(path)
        remaining = self._by_session[session]
        remaining.remove(path)
        if not remaining:
            del self._by_session[session]


def _delete(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)  # Gradio's own 24-hour sweep may have been first
