"""Talking to a PACS: query, retrieve and store over DIMSE (pynetdicom) and DICOMweb (dicomweb-client).

Qt-free. :func:`connect` turns a node (``http(s)://host:port/path``, ``dicom://AET@host:port`` or a saved
name) into a :class:`~medviewer.pacs.model.PacsClient`; :func:`~medviewer.pacs.retrieve.retrieve_study`
retrieves a study into a folder with resume and verification.

Example
-------
>>> from medviewer.pacs import connect, StudyQuery, retrieve_study  # doctest: +SKIP
>>> with connect("dicom://ORTHANC@pacs:4242") as pacs:  # doctest: +SKIP
...     studies = pacs.find_studies(StudyQuery(patient_id="P001"))
...     result = retrieve_study(pacs, studies[0].study_instance_uid, Path("incoming"), progress=True)
"""

from __future__ import annotations

from medviewer.pacs.model import STUDY_KEYWORDS, InstanceRef, PacsClient, StoreOutcome, StudyMatch, StudyQuery
from medviewer.pacs.node import (
    DEFAULT_AET,
    Credentials,
    Node,
    PacsError,
    Protocol,
    credentials_from_env,
    load_nodes,
    parse_node,
    remove_node,
    resolve_node,
    save_node,
)
from medviewer.pacs.retrieve import RetrieveResult, retrieve_study

__all__ = [
    "DEFAULT_AET", "STUDY_KEYWORDS", "Credentials", "InstanceRef", "Node", "PacsClient", "PacsError", "Protocol",
    "RetrieveResult", "StoreOutcome", "StudyMatch", "StudyQuery", "connect", "credentials_from_env",
    "load_nodes", "parse_node", "remove_node", "resolve_node", "retrieve_study", "save_node",
]


def connect(node: str | Node, *, aet: str = DEFAULT_AET, timeout: float = 30.0,
            credentials: Credentials | None = None, move_port: int | None = None,
            move_bind: str = "0.0.0.0") -> PacsClient:
    """A client for ``node`` (a :class:`Node`, URL or saved name).

    Parameters
    ----------
    aet
        Our calling AE title (DIMSE only).
    timeout
        Seconds for connecting and for each message/response.
    credentials
        DICOMweb credentials; default :func:`credentials_from_env`.
    move_port, move_bind
        DIMSE only: retrieve with C-MOVE to a storage SCP on ``move_bind:move_port`` instead of C-GET.

    Raises
    ------
    PacsError
        Not a node or saved name; a bad local AE title.
    """
    if not isinstance(node, Node):
        node = resolve_node(node)
    if node.protocol == Protocol.DIMSE:
        from medviewer.pacs.dimse import DimseClient
        from medviewer.pacs.node import _AET_RE

        if not _AET_RE.match(aet) or not aet.strip():
            raise PacsError(f"{aet!r}: a local AE title is 1-16 printable characters without backslash")
        return DimseClient(node, aet=aet, timeout=timeout, move_port=move_port, move_bind=move_bind)
    from medviewer.pacs.web import WebClient

    return WebClient(node, credentials if credentials is not None else credentials_from_env(node), timeout)
