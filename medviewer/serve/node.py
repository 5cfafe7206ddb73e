"""The AI node: Storage SCP + study-complete timer + scorer + sender around one spool folder.

:class:`ServeNode` runs four things side by side until :meth:`ServeNode.stop`:

* the Storage SCP (:class:`~medviewer.serve.scp.StorageSCP`, pynetdicom's threads, one per association);
* the study-complete timer: a study is complete once no instance of it came for ``study_timeout`` seconds;
* the scorer thread (:class:`~medviewer.serve.worker.Scorer`), one study at a time;
* the sender thread (:class:`~medviewer.serve.worker.Sender`), so a destination that is down never holds
  up receiving or scoring.

Everything they share is in the queue database, so the node can be killed at any time and started again
on the same spool (:meth:`SpoolDB.recover` puts a study that was being scored back in the queue).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from medviewer.errors import error_line
from medviewer.serve.queue import SpoolDB
from medviewer.serve.scp import StorageSCP
from medviewer.serve.spool import Spool
from medviewer.serve.worker import Scorer, ScoringOptions, Sender

__all__ = ["ServeConfig", "ServeNode"]

_LOG = logging.getLogger("medviewer.serve")


@dataclass
class ServeConfig:
    """What ``medviewer serve`` was asked to do (see ``medviewer serve --help`` for each option)."""

    spool: str
    aet: str = "MEDVIEWER-AI"
    port: int = 11112
    bind: str = "0.0.0.0"
    send: Any = None
    send_aet: str = "MEDVIEWER-AI"
    study_timeout: float = 30.0
    allowed_aets: Sequence[str] = ()
    fsync: bool = True
    min_free_bytes: int = 64 * 2**20
    retry_max_delay: float = 60.0
    max_attempts: int = 5
    timeout: float = 30.0
    scoring: ScoringOptions = field(default_factory=ScoringOptions)


class ServeNode:
    """One AI node (see the module docstring).

    Parameters
    ----------
    config
        :class:`ServeConfig`.
    packages
        The model packages to score with (loaded once).

    Raises
    ------
    SpoolError
        The spool cannot be used (another node holds it, not writable).
    OSError
        The port cannot be bound (from :meth:`start`).
    """

    def __init__(self, config: ServeConfig, packages: Sequence[Any]) -> None:
        self.config = config
        self.spool = Spool(config.spool, fsync=config.fsync, min_free_bytes=config.min_free_bytes)
        self.spool.prepare()
        self.db = SpoolDB(self.spool.db_path, durable=config.fsync)
        recovered = self.db.recover()
        if recovered:
            _LOG.info("%d studies that were being scored are queued again", recovered)
        self.scp = StorageSCP(self.spool, self.db, config.aet, allowed_aets=config.allowed_aets)
        self.scorer = Scorer(self.spool, self.db, packages, config.scoring)
        self.sender = (Sender(self.db, config.send, aet=config.send_aet, timeout=config.timeout,
                              max_delay=config.retry_max_delay, max_attempts=config.max_attempts)
                       if config.send is not None else None)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        """The DICOM port listened on (the one chosen by the system when ``config.port`` is 0)."""
        return self.scp.port

    def start(self) -> None:
        """Listen and start the timer, scorer and sender threads (returns at once)."""
        self.scp.start(self.config.bind, self.config.port)
        for name, fn in (("timer", self._timer), ("scorer", self._scorer), ("sender", self._sender)):
            if name == "sender" and self.sender is None:
                continue
            t = threading.Thread(target=self._guard, args=(name, fn), name=f"medviewer-serve-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def _guard(self, name: str, fn: Any) -> None:
        """Run a loop; an unexpected error is logged and the loop goes on after a pause (never dies)."""
        while not self._stop.is_set():
            try:
                fn()
                return
            except Exception as exc:
                _LOG.error("%s: %s (continuing)", name, error_line(exc))
                self._stop.wait(1.0)

    def _timer(self) -> None:
        tick = max(0.05, min(1.0, self.config.study_timeout / 4))
        while not self._stop.wait(tick):
            n = self.db.complete_studies(self.config.study_timeout)
            if n:
                _LOG.info("%d studies complete (no new instance for %g s)", n, self.config.study_timeout)

    def _scorer(self) -> None:
        while not self._stop.is_set():
            if self.scorer.run_once() is None:
                self._stop.wait(0.2)

    def _sender(self) -> None:
        while not self._stop.is_set():
            if not self.sender.run_once():
                self._stop.wait(0.2)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop listening, let the study in hand finish (up to ``timeout`` s), release the spool."""
        self._stop.set()
        self.scp.stop()
        for t in self._threads:
            t.join(timeout)
        self.spool.release()

    def wait(self) -> None:
        """Block until :meth:`stop` is called (from a signal handler or another thread)."""
        while not self._stop.wait(0.5):
            pass

    def idle(self) -> bool:
        """True when nothing is receiving, waiting, being scored or waiting to be sent."""
        st = self.db.status(0)["studies"]
        return not any(st[s] for s in ("receiving", "waiting", "scoring", "sending"))

    def wait_idle(self, timeout: float) -> bool:
        """Wait until :meth:`idle` (True) or ``timeout`` seconds passed (False)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.idle():
                return True
            time.sleep(0.1)
        return False
