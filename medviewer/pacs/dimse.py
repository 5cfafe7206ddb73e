"""DIMSE transport (PS3.7) with pynetdicom: C-ECHO, C-FIND, C-GET, C-STORE.

Queries use the Study Root Query/Retrieve Information Model (PS3.4 C.6.2): STUDY level for ``find``,
then SERIES and IMAGE level to list a study's instances. Retrieval is C-GET (PS3.4 C.4.3): the instances
come back over the same association as C-STORE sub-operations, so no port has to be opened for the PACS
to call back (no C-MOVE destination to configure); the requestor proposes storage contexts for the SOP
classes the image-level query reported, with SCP/SCU role selection (PS3.7 D.3.3.4). Optionally the
retrieval is a C-MOVE (PS3.4 C.4.2) to a storage SCP we run for its duration (``move_port``), for PACSs
that do not offer C-GET; the PACS must then know our AE title's host and port.

Each operation opens one association and releases it. Failures become a one-line
:class:`~medviewer.pacs.node.PacsError`: connection refused or timed out, association rejected (with the
acceptor's reason, e.g. "called AE title not recognized"), aborted, no accepted presentation context, or a
failure status from the PACS.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID

from medviewer.pacs.model import (
    InstanceRef,
    PacsClient,
    Sink,
    StoreOutcome,
    StudyMatch,
    StudyQuery,
    check_matches,
    check_modalities,
)
from medviewer.pacs.node import DEFAULT_AET, Node, PacsError, Protocol

__all__ = ["DimseClient"]

_LOG = logging.getLogger("pynetdicom")
_MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1..255


class _Capture(logging.Handler):
    """Collects pynetdicom's log lines during one association (for the rejection reason)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _status_text(status: Dataset | None) -> str:
    if status is None or "Status" not in status:
        return "no response (timed out or connection lost)"
    code = int(status.Status)
    comment = str(status.get("ErrorComment", "")).strip()
    return f"status 0x{code:04X}" + (f" ({comment})" if comment else "")


class DimseClient(PacsClient):
    """A DIMSE node.

    Parameters
    ----------
    node
        A :class:`Node` with ``protocol == "dimse"`` (``dicom://AET@host:port``).
    aet
        Our (calling) AE title, default ``MEDVIEWER``. The PACS usually has to know it (and our host) to
        answer C-FIND and C-GET.
    timeout
        Seconds for connecting, for the association negotiation and for each DIMSE message.
    move_port, move_bind
        Retrieve with C-MOVE instead of C-GET: a storage SCP listens on ``move_bind:move_port`` while the
        retrieval runs, and the PACS is asked to send to ``aet`` (the PACS must map that AE title to this
        host and port). None (default): C-GET.
    """

    def __init__(self, node: Node, aet: str = DEFAULT_AET, timeout: float = 30.0, *, move_port: int | None = None,
                 move_bind: str = "0.0.0.0") -> None:
        if node.protocol != Protocol.DIMSE:
            raise PacsError(f"{node}: not a DIMSE node")
        self.node = node
        self.aet = aet
        self.timeout = float(timeout)
        self.move_port = move_port
        self.move_bind = move_bind

    # -- association ------------------------------------------------------------------------------------
    def _ae(self):
        from pynetdicom import AE

        ae = AE(ae_title=self.aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.connection_timeout = self.timeout
        ae.maximum_pdu_size = 0  # unlimited
        return ae

    def _resolve(self) -> None:
        """Look the host name up first: pynetdicom would raise ``socket.gaierror`` as a traceback."""
        try:
            socket.getaddrinfo(self.node.host, self.node.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            raise PacsError(f"{self.node}: unknown host {self.node.host!r} ({why})") from None

    @contextmanager
    def _association(self, ae, ext_neg=None, evt_handlers=None) -> Iterator:
        """An established association; released when the block ends normally, aborted (A-ABORT, at once)
        when it ends with an exception -- Ctrl-C included: a release would wait for the peer, up to the
        timeout, while it is still sending C-GET sub-operations."""
        self._resolve()
        capture = _Capture()
        _LOG.addHandler(capture)
        old_level, old_propagate = _LOG.level, _LOG.propagate
        _LOG.setLevel(logging.DEBUG if _LOG.isEnabledFor(logging.DEBUG) else logging.INFO)
        _LOG.propagate = False  # our one-line errors replace pynetdicom's multi-line log
        try:
            assoc = ae.associate(self.node.host, self.node.port, ae_title=self.node.aet, ext_neg=ext_neg,
                                 evt_handlers=evt_handlers or [])
        except OSError as exc:
            raise PacsError(f"{self.node}: cannot connect to {self.node.host}:{self.node.port} "
                            f"({exc.strerror or exc})") from None
        finally:
            _LOG.removeHandler(capture)
            _LOG.setLevel(old_level)
            _LOG.propagate = old_propagate
        if not assoc.is_established:
            raise PacsError(f"{self.node}: {self._why(assoc, capture.lines)}")
        try:
            yield assoc
        except BaseException:
            if assoc.is_established:
                assoc.abort()
            raise
        if assoc.is_established:
            assoc.release()

    def _why(self, assoc, lines: list[str]) -> str:
        where = f"{self.node.host}:{self.node.port}"
        # a peer that closes the connection right after its A-ASSOCIATE-RJ can leave the association
        # marked aborted: pynetdicom's log of the rejection (with the reason) is what counts
        if assoc.is_rejected or any(ln.startswith("Association Rejected") for ln in lines):
            reason = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Reason:")), "")
            return f"association rejected by {where}" + (f": {reason}" if reason else "") + (
                f" (called AE title {self.node.aet!r}, calling {self.aet!r})")
        if any("No accepted presentation contexts" in ln for ln in lines):
            return f"{where} accepted none of the proposed presentation contexts"
        text = " ".join(lines).lower()
        if "refused" in text:
            return f"connection refused by {where}"
        if "timed out" in text or "timeout" in text:
            return f"no answer from {where} within {self.timeout:g} s"
        if "unable to connect" in text or "tcp initialisation error" in text:
            err = next((ln for ln in lines if "TCP Initialisation Error" in ln), "")
            return f"cannot connect to {where}" + (f" ({err.split(':', 1)[1].strip()})" if err else "")
        if assoc.is_aborted:
            return f"association aborted by {where}"
        return f"could not connect to {where} (refused, unreachable or timed out after {self.timeout:g} s)"

    def _no_response(self, assoc, op: str = "C-FIND", since: float | None = None) -> str:
        """Why a DIMSE request got no response: the PACS aborted or closed the association before the
        timeout (usually: it does not accept the request from our AE title / host), or nothing came."""
        quick = since is not None and time.perf_counter() - since < 0.9 * self.timeout
        if assoc.is_aborted or quick:
            extra = " (and must know its host and port as a C-MOVE destination)" if op == "C-MOVE" else ""
            return (f"the PACS ended the association without answering; it may not accept {op} from our AE "
                    f"title {self.aet!r} on this host{extra}")
        return f"no response within {self.timeout:g} s (or the connection was lost)"

    # -- operations -------------------------------------------------------------------------------------
    def echo(self) -> float:
        from pynetdicom.sop_class import Verification

        ae = self._ae()
        ae.add_requested_context(Verification)
        t0 = time.perf_counter()
        with self._association(ae) as assoc:
            status = assoc.send_c_echo()
            if status is None or int(status.get("Status", -1)) != 0:
                raise PacsError(f"{self.node}: C-ECHO failed: {_status_text(status)}")
        return time.perf_counter() - t0

    def _find(self, identifier: Dataset) -> list[Dataset]:
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

        ae = self._ae()
        ae.add_requested_context(FIND)
        out: list[Dataset] = []
        with self._association(ae) as assoc:
            t0 = time.perf_counter()
            for status, ident in assoc.send_c_find(identifier, FIND):
                if status is None or "Status" not in status:
                    raise PacsError(f"{self.node}: C-FIND: {self._no_response(assoc, 'C-FIND', t0)}")
                code = int(status.Status)
                if code in (0xFF00, 0xFF01):
                    if ident is not None:
                        out.append(ident)
                elif code != 0x0000:
                    raise PacsError(f"{self.node}: C-FIND failed: {_status_text(status)}")
        return out

    def find_studies(self, query: StudyQuery, limit: int | None = None) -> list[StudyMatch]:
        query = query.normalized()
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        for kw in ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "StudyDescription",
                   "ModalitiesInStudy", "AccessionNumber", "NumberOfStudyRelatedInstances", "StudyTime"):
            setattr(ds, kw, "")
        for kw, value in query.filters().items():
            setattr(ds, kw, value)
        matches, self.notes = check_matches(query, [StudyMatch.from_dataset(d) for d in self._find(ds)])
        matches, self.notes = check_modalities(query, matches, self.notes, self._series_modalities)
        matches.sort(key=lambda m: (m.study_date, m.study_instance_uid), reverse=True)
        return matches[:limit] if limit else matches

    def _series_modalities(self, study_uids: list[str]) -> dict[str, set[str]]:
        """``{study uid: {Modality of each series}}`` by series-level C-FIND, one association for all."""
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

        ae = self._ae()
        ae.add_requested_context(FIND)
        out: dict[str, set[str]] = {}
        with self._association(ae) as assoc:
            for uid in study_uids:
                q = Dataset()
                q.QueryRetrieveLevel = "SERIES"
                q.StudyInstanceUID = uid
                q.SeriesInstanceUID = ""
                q.Modality = ""
                t0 = time.perf_counter()
                for status, ident in assoc.send_c_find(q, FIND):
                    if status is None or "Status" not in status:
                        raise PacsError(f"{self.node}: C-FIND: {self._no_response(assoc, 'C-FIND', t0)}")
                    if int(status.Status) in (0xFF00, 0xFF01) and ident is not None \
                            and str(ident.get("StudyInstanceUID", uid)) == uid and ident.get("Modality"):
                        out.setdefault(uid, set()).add(str(ident.Modality).upper())
        return out

    def list_instances(self, study_instance_uid: str, series_instance_uid: str | None = None
                       ) -> list[InstanceRef]:
        if series_instance_uid:
            series = [series_instance_uid]
        else:
            q = Dataset()
            q.QueryRetrieveLevel = "SERIES"
            q.StudyInstanceUID = study_instance_uid
            q.SeriesInstanceUID = ""
            series = sorted({str(d.SeriesInstanceUID) for d in self._find(q) if d.get("SeriesInstanceUID")})
        refs: list[InstanceRef] = []
        for uid in series:
            q = Dataset()
            q.QueryRetrieveLevel = "IMAGE"
            q.StudyInstanceUID = study_instance_uid
            q.SeriesInstanceUID = uid
            q.SOPInstanceUID = ""
            q.SOPClassUID = ""
            q.InstanceNumber = ""
            found = self._find(q)
            found.sort(key=lambda d: (int(d.get("InstanceNumber") or 0), str(d.SOPInstanceUID)))
            refs += [InstanceRef(study_instance_uid, uid, str(d.SOPInstanceUID), str(d.get("SOPClassUID", "")))
                     for d in found if d.get("SOPInstanceUID")]
        return refs

    def retrieve(self, study_instance_uid: str, series_instance_uid: str, sop_instance_uids: Sequence[str] | None,
                 sink: Sink, sop_class_uids: Iterable[str] = (), cancel: threading.Event | None = None) -> None:
        from pynetdicom import ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, build_role, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

        classes = [UID(c) for c in dict.fromkeys(sop_class_uids) if c]
        if not classes:  # unknown: the common storage classes
            classes = [cx.abstract_syntax for cx in StoragePresentationContexts]
        classes = classes[: _MAX_CONTEXTS - 1]
        errors: list[str] = []

        def on_store(event) -> int:
            if cancel is not None and cancel.is_set():
                return 0xA700  # Out of resources: we no longer want it
            try:
                ds = dcmread(BytesIO(event.encoded_dataset()), force=True)
                sink(ds)
            except Exception as exc:  # a failed write: tell the PACS, report once at the end
                errors.append(str(exc))
                return 0xA700
            return 0x0000

        queries: list[Dataset] = []
        for sop in [None] if sop_instance_uids is None else sop_instance_uids:
            q = Dataset()
            q.QueryRetrieveLevel = "SERIES" if sop is None else "IMAGE"
            q.StudyInstanceUID = study_instance_uid
            q.SeriesInstanceUID = series_instance_uid
            if sop is not None:
                q.SOPInstanceUID = sop
            queries.append(q)

        ae = self._ae()
        server = None
        if self.move_port is None:  # C-GET: the instances come back on our association
            ae.add_requested_context(GET)
            roles = []
            for uid in classes:
                ae.add_requested_context(uid, ALL_TRANSFER_SYNTAXES)
                roles.append(build_role(uid, scp_role=True))
            handlers = [(evt.EVT_C_STORE, on_store)]
            op, send = "C-GET", lambda assoc, q: assoc.send_c_get(q, GET)
        else:  # C-MOVE: the PACS opens an association to our storage SCP (it must know AET -> host:port)
            ae.add_requested_context(MOVE)
            for uid in classes:
                ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
            try:
                server = ae.start_server((self.move_bind, self.move_port), block=False,
                                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
            except OSError as exc:
                raise PacsError(f"{self.node}: cannot listen on {self.move_bind}:{self.move_port} for C-MOVE "
                                f"({exc.strerror or exc})") from None
            roles, handlers = None, []
            op, send = "C-MOVE", lambda assoc, q: assoc.send_c_move(q, self.aet, MOVE)
        try:
            with self._association(ae, ext_neg=roles, evt_handlers=handlers) as assoc:
                for q in queries:
                    if cancel is not None and cancel.is_set():
                        break
                    t0 = time.perf_counter()
                    for status, ident in send(assoc, q):
                        if status is None or "Status" not in status:
                            raise PacsError(f"{self.node}: {op}: {self._no_response(assoc, op, t0)}")
                        code = int(status.Status)
                        if cancel is not None and cancel.is_set() and code == 0xFF00:
                            assoc.abort()
                            return
                        if code == 0xA801:
                            raise PacsError(f"{self.node}: {op} refused: the PACS does not know move "
                                            f"destination {self.aet!r} (add it with this host and port "
                                            f"{self.move_port})")
                        if code == 0xB000:  # PS3.4 C.4.2.1.5/C.4.3.1.4: done, some sub-operations failed
                            self.add_note(_suboperations_note(op, series_instance_uid, status, ident))
                        if code not in (0x0000, 0xFF00, 0xB000, 0xFE00):
                            if errors:  # the sub-operations failed because we could not keep what came
                                raise PacsError(f"{self.node}: could not store a received instance: {errors[0]}")
                            raise PacsError(f"{self.node}: {op} failed: {_status_text(status)}")
        finally:
            if server is not None:
                server.shutdown()
        if errors:
            raise PacsError(f"{self.node}: could not store a received instance: {errors[0]}")

    def store(self, datasets: Sequence[Dataset]) -> StoreOutcome:
        """C-STORE each dataset (PS3.4 B.2). Per SOP class two presentation contexts are proposed: one in the
        dataset's own transfer syntax and one in the uncompressed ones (Explicit, Implicit VR Little Endian),
        so a peer that accepts only uncompressed data still gets compressed instances (JPEG 2000, JPEG-LS,
        RLE...): they are decompressed, in place, before they are sent (PS3.5 A.4; pydicom's decoders).
        An instance that cannot be decompressed is one ``failed`` entry; the others are sent."""
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

        uncompressed = [str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)]
        ae = self._ae()
        wanted: dict[tuple[str, tuple[str, ...]], None] = {}
        for ds in datasets:
            ts = _transfer_syntax(ds)
            sop = str(ds.SOPClassUID)
            if ts not in uncompressed:
                wanted[(sop, (ts,))] = None
            wanted[(sop, tuple(uncompressed))] = None
        if len(wanted) > _MAX_CONTEXTS:
            raise PacsError(f"{self.node}: {len(wanted)} presentation contexts needed in one send; at most "
                            f"{_MAX_CONTEXTS}")
        for sop, ts in wanted:
            ae.add_requested_context(sop, list(ts))
        out = StoreOutcome()
        with self._association(ae) as assoc:
            accepted: dict[str, set[str]] = {}
            for cx in assoc.accepted_contexts:
                accepted.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
            for ds in datasets:
                uid = str(ds.SOPInstanceUID)
                sop, ts = str(ds.SOPClassUID), _transfer_syntax(ds)
                ok = accepted.get(sop, set())
                if not ok:
                    out.failed.append((uid, f"{self.node.host}:{self.node.port} does not accept SOP class {sop}"))
                    continue
                if ts not in ok and ts not in uncompressed:
                    target = next((t for t in uncompressed if t in ok), None)
                    if target is None:
                        out.failed.append((uid, f"transfer syntax {ts} not accepted, and no uncompressed one"))
                        continue
                    try:
                        ds.decompress()  # -> Explicit VR Little Endian
                    except Exception as exc:  # no decoder for it, corrupt data
                        out.failed.append((uid, f"cannot decompress {ts} for a peer that accepts only "
                                                f"uncompressed data ({' '.join(str(exc).split())[:150]})"))
                        continue
                    ds.file_meta.TransferSyntaxUID = target
                try:
                    status = assoc.send_c_store(ds)
                except (ValueError, AttributeError, RuntimeError) as exc:
                    out.failed.append((uid, str(exc).splitlines()[0]))
                    continue
                code = int(status.Status) if status is not None and "Status" in status else -1
                if code in (0x0000, 0xB000, 0xB007, 0xB006):
                    out.stored.append(uid)
                else:
                    out.failed.append((uid, _status_text(status)))
        return out


def _suboperations_note(op: str, series: str, status: Dataset, identifier: Dataset | None) -> str:
    """One line for a C-GET/C-MOVE final response with status B000 (sub-operations complete, one or more
    failures or warnings; PS3.4 C.4.2.1.5, C.4.3.1.4): its Number of Completed/Failed/Warning Sub-operations
    (0000,1021-1023) and the first of the identifier's Failed SOP Instance UID List (0008,0058)."""
    def count(keyword: str) -> str:
        value = status.get(keyword, None)
        return "?" if value in (None, "") else str(int(value))

    failed = identifier.get("FailedSOPInstanceUIDList", None) if identifier is not None else None
    uids = [str(u) for u in (failed if isinstance(failed, (list, tuple)) or type(failed).__name__ == "MultiValue"
                             else [failed] if failed else [])]
    example = f", e.g. {uids[0]}" if uids else ""
    return (f"{op} of series {series} ended with failures (status B000): {count('NumberOfCompletedSuboperations')} "
            f"instances sent, {count('NumberOfFailedSuboperations')} failed, "
            f"{count('NumberOfWarningSuboperations')} with warnings{example}")


def _transfer_syntax(ds: Dataset) -> str:
    """The dataset's transfer syntax UID (file meta), Implicit VR Little Endian when it has none."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return str(meta.TransferSyntaxUID)
    from pydicom.uid import ImplicitVRLittleEndian

    return str(ImplicitVRLittleEndian)
