"""The AI node's DICOM Storage SCP (PS3.4 Annex B) and Verification SCP (PS3.4 Annex A), with pynetdicom.

Every storage SOP class pynetdicom knows is accepted in every transfer syntax it knows (the node keeps the
bytes as they came: no transcoding on receipt). For each C-STORE request the handler

1. reads the Study, Series and SOP Instance UIDs from the data set (a data set without a valid Study or SOP
   Instance UID is refused with 0xA900 "Data Set does not match SOP Class" and recorded as a bad file);
2. writes the instance to ``SPOOL/incoming/<study>/<sop>.dcm`` atomically (:meth:`Spool.write_atomic`:
   temporary file, ``fsync``, rename) and commits its row to the queue database;
3. answers 0x0000 (Success) only then. When the write or the commit fails (disk full, file too large,
   quota, database error) it answers 0xA700 "Out of Resources" (PS3.4 B.2.3) and records why: a sender is
   never told an instance is stored when it is not.

Non-image SOP classes (an SR, a presentation state, a KOS) are stored and acknowledged like any other, and
later recorded as skipped by the scorer; the node keeps serving whatever a sender does.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Any

from medviewer.serve.queue import SpoolDB
from medviewer.serve.spool import Spool, safe_uid

__all__ = ["StorageSCP", "STATUS_SUCCESS", "STATUS_OUT_OF_RESOURCES", "STATUS_DATASET_MISMATCH"]

STATUS_SUCCESS = 0x0000
#: PS3.4 B.2.3: Refused: Out of Resources (A7xx)
STATUS_OUT_OF_RESOURCES = 0xA700
#: PS3.4 B.2.3: Error: Data Set does not match SOP Class (A9xx)
STATUS_DATASET_MISMATCH = 0xA900
#: refused instances are audited at most this often (seconds): the first at once, then one record with the count
AUDIT_REFUSALS_EVERY = 60.0
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_LOG = logging.getLogger("medviewer.serve")


class StorageSCP:
    """A Storage + Verification SCP writing into a :class:`Spool` and its :class:`SpoolDB`.

    Parameters
    ----------
    spool, db
        Where instances and their rows go.
    aet
        Our AE title (the called AE title a sender must use).
    allowed_aets
        Calling AE titles accepted; empty: any.
    max_associations
        Simultaneous associations (each runs in its own thread).
    on_received
        Called with ``(study_uid, sop_uid)`` after each acknowledged instance (statistics, tests).
    """

    def __init__(self, spool: Spool, db: SpoolDB, aet: str, *, allowed_aets: Sequence[str] = (),
                 max_associations: int = 32, on_received: Any = None) -> None:
        self.spool = spool
        self.db = db
        self.aet = aet
        self.allowed_aets = [a for a in allowed_aets if a]
        self.max_associations = max_associations
        self.on_received = on_received
        self.received = 0
        self.refused = 0
        self._count_lock = threading.Lock()
        self._unaudited = 0
        self._last_audit = -float("inf")
        self._server = None

    def start(self, bind: str, port: int) -> None:
        """Listen on ``bind:port`` (returns at once; associations are served in background threads).

        Raises
        ------
        OSError
            The port cannot be bound (in use, no permission).
        """
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.aet)
        ae.require_called_aet = True
        if self.allowed_aets:
            ae.require_calling_aet = list(self.allowed_aets)
        ae.maximum_associations = self.max_associations
        ae.maximum_pdu_size = 0  # no limit: the sender chooses
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 60
        ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda event: STATUS_SUCCESS)]
        self._server = ae.start_server((bind, port), block=False, evt_handlers=handlers)
        try:  # no Nagle: each C-STORE-RSP goes out at once (accepted sockets inherit it on Linux); without it a
            # sender waits for the delayed ACK (~40 ms) per instance
            import socket

            self._server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass

    @property
    def port(self) -> int:
        """The port listened on (useful with port 0)."""
        return int(self._server.server_address[1]) if self._server is not None else 0

    def stop(self) -> None:
        """Stop listening and end the associations."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _refuse(self, kind: str, reason: str, status: int, study: str | None = None, sop: str | None = None) -> int:
        with self._count_lock:
            self.refused += 1
            self._unaudited += 1
            audit_now = time.monotonic() - self._last_audit >= AUDIT_REFUSALS_EVERY
            if audit_now:
                count, self._unaudited, self._last_audit = self._unaudited, 0, time.monotonic()
        _LOG.warning("refused an instance (0x%04X): %s", status, reason)
        try:
            self.db.event(kind, reason, study_uid=study, sop_uid=sop)
        except sqlite3.Error:  # e.g. the disk is full for the database too: the status says it anyway
            pass
        if audit_now:  # a failed transfer is audited; while a disk stays full, once a minute with the count
            from medviewer import audit
            from medviewer.errors import MedViewerError

            try:
                audit.record(audit.AuditEvent.RETRIEVED, outcome=audit.Outcome.SERIOUS_FAILURE,
                             objects=audit.object_refs([study] if study else []),
                             detail={"refused": count, "status": f"0x{status:04X}", "error": reason[:200],
                                     "by": "medviewer serve"})
            except (MedViewerError, ValueError) as exc:
                _LOG.warning("audit record not written: %s", exc)
        return status

    def _on_store(self, event: Any) -> int:
        """EVT_C_STORE handler: write, commit, then answer (see the module docstring)."""
        calling = str(getattr(event.assoc.requestor, "ae_title", "") or "").strip()
        try:
            ds = event.dataset
            sop = safe_uid(ds.get("SOPInstanceUID") or event.request.AffectedSOPInstanceUID)
            study = safe_uid(ds.get("StudyInstanceUID"))
            series = str(ds.get("SeriesInstanceUID", "") or "")
            sop_class = str(ds.get("SOPClassUID") or event.request.AffectedSOPClassUID or "")
            image = any(k in ds for k in _PIXEL_KEYWORDS)
        except Exception as exc:  # an undecodable data set or missing UIDs: a bad file, not a crash
            sop_text = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
            return self._refuse("bad-file", f"from {calling or '?'}: cannot use instance {sop_text or '?'} "
                                f"({' '.join(str(exc).split())[:200]})", STATUS_DATASET_MISMATCH, sop=sop_text or None)
        path = self.spool.instance_path(study, sop)
        existed = path.exists()  # received (and acknowledged) before: never removed below
        try:
            size = self.spool.write_atomic(path, [event.encoded_dataset()])
        except OSError as exc:
            return self._refuse("store-failed", f"{sop}: not written to the spool ({exc.strerror or exc})",
                                STATUS_OUT_OF_RESOURCES, study, sop)
        try:
            self.db.add_instance(sop_uid=sop, study_uid=study, series_uid=series, sop_class=sop_class,
                                 path=str(path), size=size, calling_aet=calling, image=image)
        except sqlite3.Error as exc:
            if not existed:  # not acknowledged: leave no file that no row knows of
                try:
                    path.unlink()
                except OSError:
                    pass
            return self._refuse("store-failed", f"{sop}: not recorded in the queue ({exc})",
                                STATUS_OUT_OF_RESOURCES, study, sop)
        with self._count_lock:
            self.received += 1
        if self.on_received is not None:
            self.on_received(study, sop)
        return STATUS_SUCCESS
