"""The spool folder of an AI node: received instances, results, the queue database, one lock.

Layout::

    SPOOL/queue.sqlite                        the durable queue (:mod:`medviewer.serve.queue`)
    SPOOL/serve.lock                          held (flock) by the one node serving this spool
    SPOOL/incoming/<StudyUID>/<SOPUID>.dcm    received instances, DICOM Part 10 (PS3.10)
    SPOOL/results/<model sha256[:16]>/<StudyUID>/SR_<SOPUID>.dcm, SC_...   results written per model
    SPOOL/tmp/                                files being written (emptied at start)

An instance is written to ``tmp/``, flushed to the disk (``fsync``) and renamed into ``incoming/`` (an atomic
rename on one file system), so a file under ``incoming/`` is always complete, whatever happens to the
process -- the rule the Storage SCP relies on before it answers success (PS3.4 B.2.3).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from medviewer.errors import MedViewerError

__all__ = ["Spool", "SpoolError", "safe_uid"]

_SAFE = set("0123456789.")


class SpoolError(MedViewerError, OSError):
    """The spool folder cannot be used (not writable, another node serves it, not a spool)."""


def safe_uid(uid: object) -> str:
    """``uid`` as a file-name-safe DICOM UID (digits and dots, at most 64 characters, PS3.5 9.1).

    Raises
    ------
    ValueError
        Anything else (a file name made of it could leave the folder).
    """
    text = str(uid or "").strip().rstrip("\x00")
    if not text or len(text) > 64 or not set(text) <= _SAFE or text.startswith(".") or ".." in text:
        raise ValueError(f"{text!r} is not a DICOM UID")
    return text


class Spool:
    """A spool folder (created when missing).

    Parameters
    ----------
    root
        The folder.
    fsync
        Flush every received file to the disk before it counts as written (default). Off: faster, but an
        instance acknowledged just before a power cut can be lost (a crash of the process loses nothing).
    min_free_bytes
        Refuse (:class:`OSError` ``ENOSPC``) to write an instance when less than this would stay free on the
        spool's file system: headroom for results and the database.
    """

    def __init__(self, root: str | Path, *, fsync: bool = True, min_free_bytes: int = 0) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.min_free_bytes = int(min_free_bytes)
        self._lock_fd: int | None = None

    @property
    def db_path(self) -> Path:
        """The queue database, ``SPOOL/queue.sqlite``."""
        return self.root / "queue.sqlite"

    @property
    def incoming(self) -> Path:
        """Received instances, ``SPOOL/incoming``."""
        return self.root / "incoming"

    @property
    def tmp(self) -> Path:
        """Files being written, ``SPOOL/tmp`` (same file system as ``incoming``: the rename is atomic)."""
        return self.root / "tmp"

    def results_dir(self, model_sha: str, study_uid: str) -> Path:
        """Where the results of one model for one study are written."""
        return self.root / "results" / model_sha[:16] / safe_uid(study_uid)

    def prepare(self) -> None:
        """Create the folders, take the lock, empty ``tmp/``.

        Raises
        ------
        SpoolError
            Cannot create or write the folder, or another ``medviewer serve`` holds the lock.
        """
        try:
            for d in (self.root, self.incoming, self.tmp, self.root / "results"):
                d.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / "serve.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SpoolError(f"{self.root}: cannot use the spool folder ({exc.strerror or exc})") from None
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # Windows: no advisory lock; one node per spool is then the operator's job
            pass
        except OSError:
            os.close(fd)
            raise SpoolError(f"{self.root}: another medviewer serve is using this spool folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        for f in self.tmp.iterdir():
            try:
                f.unlink()
            except OSError:
                pass

    def release(self) -> None:
        """Give the lock back."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def instance_path(self, study_uid: str, sop_uid: str) -> Path:
        """``incoming/<study>/<sop>.dcm`` (raises ValueError for a non-UID)."""
        return self.incoming / safe_uid(study_uid) / f"{safe_uid(sop_uid)}.dcm"

    def write_atomic(self, path: Path, chunks: list[bytes]) -> int:
        """Write ``chunks`` to ``path`` all or nothing: temporary file in ``tmp/``, ``fsync``, rename.
        Returns the size in bytes.

        Raises
        ------
        OSError
            The write failed (disk full, file too large, quota, permissions) -- nothing is left behind --
            or less than ``min_free_bytes`` would stay free (``ENOSPC``).
        """
        size = sum(len(c) for c in chunks)
        if self.min_free_bytes:
            free = shutil.disk_usage(self.root).free
            if free - size < self.min_free_bytes:
                import errno

                raise OSError(errno.ENOSPC, f"only {free // 2**20} MiB free on the spool's file system "
                                            f"(keeping {self.min_free_bytes // 2**20} MiB)")
        tmp = self.tmp / f"{uuid.uuid4().hex}.part"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                for c in chunks:
                    view = memoryview(c)
                    while view:
                        n = os.write(fd, view)
                        view = view[n:]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.replace(tmp, path)
            except FileNotFoundError:
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, path)
        except BaseException:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise
        return size
