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

from medviewer.pacs.model import InstanceRef, PacsClient, Sink, StoreOutcome, StudyMatch, StudyQuery
from medviewer.pacs.node import ENV_PASSWORD, ENV_TOKEN, ENV_USER, Credentials, Node, PacsError, Protocol

__all__ = ["WebClient"]

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
        with self._errors("QIDO-RS"):
            found = self._search_all(self._client.search_for_studies, "StudyInstanceUID", limit=limit,
                                     search_filters=query.filters(), fields=_STUDY_FIELDS)
        matches = [StudyMatch.from_dataset(d) for d in found]
        matches.sort(key=lambda m: (m.study_date, m.study_instance_uid), reverse=True)
        return matches[:limit] if limit else matches

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
                for ds in self._client.iter_series(study_instance_uid, series_instance_uid):
                    if cancel is not None and cancel.is_set():
                        return
                    sink(ds)
                return
            for sop in sop_instance_uids:
                if cancel is not None and cancel.is_set():
                    return
                sink(self._client.retrieve_instance(study_instance_uid, series_instance_uid, sop))

    def store(self, datasets: Sequence[Dataset]) -> StoreOutcome:
        out = StoreOutcome()
        if not datasets:
            return out
        with self._errors("STOW-RS"):
            rsp = self._client.store_instances(list(datasets))
        failed = {str(item.get("ReferencedSOPInstanceUID", "")): int(item.get("FailureReason", 0))
                  for item in rsp.get("FailedSOPSequence", [])} if rsp is not None else {}
        for ds in datasets:
            uid = str(ds.SOPInstanceUID)
            if uid in failed:
                out.failed.append((uid, f"failure reason 0x{failed[uid]:04X}"))
            else:
                out.stored.append(uid)
        return out
