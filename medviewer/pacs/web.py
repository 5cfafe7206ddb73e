"""DICOMweb transport (PS3.18) with dicomweb-client: QIDO-RS, WADO-RS, STOW-RS.

The node's URL is the service root (e.g. ``http://host:8042/dicom-web``). Credentials come from the
environment or the keyring (:func:`~medviewer.pacs.node.credentials_from_env`): a bearer token header or
HTTP basic auth on the ``requests`` session; they are never logged. HTTP failures become one-line
:class:`~medviewer.pacs.node.PacsError` s: connection refused, timeout, 401/403 (with what to set), 404,
other status codes with the server's reason.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from typing import Any

from pydicom.dataset import Dataset

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
from medviewer.pacs.node import ENV_PASSWORD, ENV_TOKEN, ENV_USER, Credentials, Node, PacsError, Protocol

__all__ = ["WebClient"]

#: WADO-RS Accept: the instances in the transfer syntax they are stored in (no transcoding by the server)
_AS_STORED = (("application/dicom", "*"),)
_STUDY_FIELDS = ["StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "StudyDescription",
                 "ModalitiesInStudy", "AccessionNumber", "NumberOfStudyRelatedInstances"]


def _session():
    import requests

    class _Session(requests.Session):
        """Sends QIDO-RS wild cards as ``*`` rather than ``%2A``: both are valid in a URL query (RFC 3986
        3.4), but some servers (Orthanc's DICOMweb plugin 1.7) do not percent-decode the matching value,
        so ``PatientID=AB%2A`` would match nothing."""

        def request(self, method, url, *args, **kwargs):  # type: ignore[override]
            if isinstance(url, str) and "?" in url:
                base, query = url.split("?", 1)
                url = base + "?" + query.replace("%2A", "*").replace("%2a", "*")
            return super().request(method, url, *args, **kwargs)

    return _Session()


class WebClient(PacsClient):
    """A DICOMweb node.

    Parameters
    ----------
    node
        A :class:`Node` with ``protocol == "dicomweb"``.
    credentials
        Bearer token or user/password (or none).
    timeout
        Seconds for connecting and for each read.
    """

    def __init__(self, node: Node, credentials: Credentials | None = None, timeout: float = 30.0) -> None:
        if node.protocol != Protocol.DICOMWEB:
            raise PacsError(f"{node}: not a DICOMweb node")
        import logging

        from dicomweb_client.api import DICOMwebClient

        logging.getLogger("dicomweb_client").setLevel(logging.CRITICAL)  # its error logs repeat ours
        self.node = node
        self.timeout = float(timeout)
        self._credentials = credentials or Credentials()
        session = _session()
        if self._credentials.token:
            session.headers["Authorization"] = f"Bearer {self._credentials.token}"
        elif self._credentials.user:
            session.auth = (self._credentials.user, self._credentials.password or "")
        self._session = session
        self._client = DICOMwebClient(node.url, session=session, timeout=self.timeout)
        # dicomweb-client retries every exception 5 times with exponential back-off (30 s for a closed
        # port); a reader wants the one-line error now, and can run the command again
        self._client.set_http_retry_params(retry=False)

    def close(self) -> None:
        self._session.close()

    @contextmanager
    def _errors(self, what: str):
        import requests

        where = f"{self.node.host}:{self.node.port}"
        try:
            yield
        except PacsError:
            raise
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            reason = (exc.response.reason or "") if exc.response is not None else str(exc)
            if code == 401:
                hint = ("the credentials were refused" if self._credentials.present else
                        f"set {ENV_TOKEN}, or {ENV_USER} and {ENV_PASSWORD}")
                raise PacsError(f"{self.node}: {what}: 401 Unauthorized ({hint})") from None
            if code == 403:
                raise PacsError(f"{self.node}: {what}: 403 Forbidden (the user may not do this)") from None
            raise PacsError(f"{self.node}: {what}: HTTP {code} {reason}".rstrip()) from None
        except requests.Timeout:
            raise PacsError(f"{self.node}: {what}: no answer from {where} within {self.timeout:g} s") from None
        except requests.ConnectionError as exc:
            text = str(exc).lower()
            if any(k in text for k in ("nameresolution", "name or service not known", "getaddrinfo failed",
                                       "no address associated", "temporary failure in name resolution")):
                raise PacsError(f"{self.node}: {what}: unknown host {self.node.host!r}") from None
            cause = "connection refused" if "refused" in text else "cannot connect"
            raise PacsError(f"{self.node}: {what}: {cause} ({where})") from None
        except requests.RequestException as exc:
            raise PacsError(f"{self.node}: {what}: {' '.join(str(exc).split())}") from None
        except ValueError as exc:  # undecodable JSON / multipart from something that is not DICOMweb
            raise PacsError(f"{self.node}: {what}: unexpected answer ({' '.join(str(exc).split())[:200]}); "
                            "is this the DICOMweb root URL?") from None

    @staticmethod
    def _datasets(results: list[dict[str, Any]]) -> list[Dataset]:
        return [Dataset.from_json(r) for r in results or []]

    @staticmethod
    def _search_all(search, key: str, limit: int | None = None, **kwargs: Any) -> list[Dataset]:
        """All results of a QIDO-RS search, paging with ``offset`` ourselves: some servers ignore
        ``offset`` on some queries (Orthanc's plugin 1.7 with wild cards), which would make
        dicomweb-client's ``get_remaining`` loop forever, so a page that brings nothing new ends it."""
        seen: dict[str, Dataset] = {}
        offset = 0
        for _ in range(10_000):
            page = WebClient._datasets(search(offset=offset, limit=limit, **kwargs))
            fresh = [d for d in page if str(d.get(key, "")) not in seen]
            for d in fresh:
                seen[str(d.get(key, ""))] = d
            if not fresh or (limit is not None and len(seen) >= limit):
                break
            offset += len(page)
        return list(seen.values())

    def echo(self) -> float:
        t0 = time.perf_counter()
        with self._errors("QIDO-RS"):
            self._client.search_for_studies(limit=1, fields=["StudyInstanceUID"])
        return time.perf_counter() - t0

    def find_studies(self, query: StudyQuery, limit: int | None = None) -> list[StudyMatch]:
        query = query.normalized()
        with self._errors("QIDO-RS"):
            found = self._search_all(self._client.search_for_studies, "StudyInstanceUID", limit=limit,
                                     search_filters=query.filters(), fields=_STUDY_FIELDS)
        matches, self.notes = check_matches(query, [StudyMatch.from_dataset(d) for d in found])
        matches, self.notes = check_modalities(query, matches, self.notes, self._series_modalities)
        matches.sort(key=lambda m: (m.study_date, m.study_instance_uid), reverse=True)
        return matches[:limit] if limit else matches

    def _series_modalities(self, study_uids: list[str]) -> dict[str, set[str]]:
        """``{study uid: {Modality of each series}}`` by QIDO-RS ``/studies/{uid}/series``."""
        out: dict[str, set[str]] = {}
        with self._errors("QIDO-RS"):
            for uid in study_uids:
                for d in self._datasets(self._client.search_for_series(study_instance_uid=uid, fields=["Modality"])):
                    if d.get("Modality"):
                        out.setdefault(uid, set()).add(str(d.Modality).upper())
        return out

    def list_instances(self, study_instance_uid: str, series_instance_uid: str | None = None
                       ) -> list[InstanceRef]:
        with self._errors("QIDO-RS"):
            found = self._search_all(
                self._client.search_for_instances, "SOPInstanceUID",
                study_instance_uid=study_instance_uid, series_instance_uid=series_instance_uid,
                fields=["SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "InstanceNumber"])
        found.sort(key=lambda d: (str(d.get("SeriesInstanceUID", "")), int(d.get("InstanceNumber") or 0),
                                  str(d.get("SOPInstanceUID", ""))))
        return [InstanceRef(study_instance_uid, str(d.get("SeriesInstanceUID", series_instance_uid or "")),
                            str(d.SOPInstanceUID), str(d.get("SOPClassUID", "")))
                for d in found if d.get("SOPInstanceUID")]

    def retrieve(self, study_instance_uid: str, series_instance_uid: str, sop_instance_uids: Sequence[str] | None,
                 sink: Sink, sop_class_uids: Iterable[str] = (), cancel: threading.Event | None = None) -> None:
        with self._errors("WADO-RS"):
            if sop_instance_uids is None:
                # transfer-syntax=*: the instances as stored; without it a server must transcode to Explicit VR
                # Little Endian (PS3.18 8.7.3.5.2), which Orthanc cannot do for some JPEG 2000 (HTTP 500)
                for ds in self._client.iter_series(study_instance_uid, series_instance_uid, media_types=_AS_STORED):
                    if cancel is not None and cancel.is_set():
                        return
                    sink(ds)
                return
            for sop in sop_instance_uids:
                if cancel is not None and cancel.is_set():
                    return
                sink(self._client.retrieve_instance(study_instance_uid, series_instance_uid, sop,
                                                    media_types=_AS_STORED))

    def store(self, datasets: Sequence[Dataset]) -> StoreOutcome:
        """STOW-RS (PS3.18 10.5): POST the instances as ``multipart/related; type="application/dicom"``.

        An instance counts as stored only when the server's Store Instances Response lists it in the
        Referenced SOP Sequence (0008,1199); one in the Failed SOP Sequence (0008,1198) is failed with its
        Failure Reason, and one in neither -- e.g. a server answering 200 with no response body -- is failed
        with that said. HTTP 409 (none stored) is read the same way; other HTTP errors raise.
        """
        out = StoreOutcome()
        if not datasets:
            return out
        with self._errors("STOW-RS"):
            rsp, code = self._stow(datasets)
        referenced = {str(item.get("ReferencedSOPInstanceUID", "")) for item in rsp.get("ReferencedSOPSequence", [])}
        failed = {}
        for item in rsp.get("FailedSOPSequence", []):
            reason = item.get("FailureReason", None)
            failed[str(item.get("ReferencedSOPInstanceUID", ""))] = (
                f"failure reason 0x{int(reason):04X}" if reason not in (None, "") else "failed (no reason given)")
        if code in (200, 202) and not referenced and not failed:
            self.add_note(f"STOW-RS: HTTP {code} without a Store Instances Response (no Referenced or Failed SOP "
                          f"Sequence): {len(datasets)} instance{'s' * (len(datasets) != 1)} not confirmed")
        for ds in datasets:
            uid = str(ds.SOPInstanceUID)
            if uid in failed:
                out.failed.append((uid, failed[uid]))
            elif uid in referenced:
                out.stored.append(uid)
            elif code == 409:
                out.failed.append((uid, "HTTP 409 Conflict: not stored"))
            else:
                out.failed.append((uid, f"not confirmed: HTTP {code} without this instance in the STOW-RS response's "
                                        "Referenced SOP Sequence"))
        return out

    def _stow(self, datasets: Sequence[Dataset]) -> tuple[Dataset, int]:
        """POST the instances; returns the parsed Store Instances Response (empty when the body was) and the
        HTTP status. Raises ``requests.HTTPError`` for statuses other than 200, 202 and 409."""
        import uuid
        from io import BytesIO

        import pydicom

        boundary = uuid.uuid4().hex
        parts = []
        for ds in datasets:
            with BytesIO() as b:
                pydicom.dcmwrite(b, ds, enforce_file_format=True)
                parts.append(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
                             + b.getvalue() + b"\r\n")
        body = b"".join(parts) + b"--" + boundary.encode() + b"--\r\n"
        headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                   "Accept": "application/dicom+json, application/json"}
        r = self._session.post(f"{self.node.url}/studies", data=body, headers=headers, timeout=self.timeout)
        if r.status_code not in (200, 202, 409):
            r.raise_for_status()
            raise PacsError(f"{self.node}: STOW-RS: HTTP {r.status_code} {r.reason or ''}".rstrip())
        rsp = Dataset()
        ctype = r.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if r.content and ctype.endswith("json"):
            data = r.json()
            if isinstance(data, list):  # a few servers wrap the response data set in a list
                data = data[0] if data else {}
            if isinstance(data, dict):
                rsp = Dataset.from_json(data)
        elif r.content and ctype.endswith("xml"):
            from xml.etree.ElementTree import fromstring

            from dicomweb_client.web import _load_xml_dataset

            rsp = _load_xml_dataset(fromstring(r.content))
        return rsp, r.status_code
