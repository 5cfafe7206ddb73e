"""PACS nodes: parsing ``http(s)://host:port/path`` and ``dicom://AET@host:port``, saved names, credentials.

A node is where studies live: a DICOMweb service (PS3.18: QIDO-RS, WADO-RS, STOW-RS) given by its base
URL, or a DIMSE application entity (PS3.7, PS3.8: C-ECHO, C-FIND, C-GET, C-STORE) given as
``dicom://AET@host:port``. Nodes can be saved under a name (``medviewer pacs add NAME NODE``) in
``platformdirs.user_config_dir("medviewer")/pacs_nodes.json``; a saved name can then be used wherever a
node is expected.

Credentials are never part of a node, a saved file, the command line or a log line. For DICOMweb they
come from the environment -- ``MEDVIEWER_PACS_TOKEN`` (bearer token) or ``MEDVIEWER_PACS_USER`` +
``MEDVIEWER_PACS_PASSWORD`` (HTTP basic) -- or, when the optional ``keyring`` package is installed, from
the OS keyring (service ``medviewer-pacs``, entry ``USER@NODE`` where USER is ``MEDVIEWER_PACS_USER`` and
NODE the node's saved name or URL).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from medviewer.errors import MedViewerError

__all__ = [
    "PacsError",
    "Node",
    "Protocol",
    "parse_node",
    "resolve_node",
    "nodes_file",
    "load_nodes",
    "save_node",
    "remove_node",
    "Credentials",
    "credentials_from_env",
    "DEFAULT_AET",
]

#: the local application entity title when none is given (``--aet``)
DEFAULT_AET = "MEDVIEWER"
ENV_TOKEN = "MEDVIEWER_PACS_TOKEN"
ENV_USER = "MEDVIEWER_PACS_USER"
ENV_PASSWORD = "MEDVIEWER_PACS_PASSWORD"
KEYRING_SERVICE = "medviewer-pacs"

_AET_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 6.2 AE: 16 chars, no backslash or control
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class PacsError(MedViewerError, RuntimeError):
    """A PACS operation failed: bad node, refused association, HTTP error, timeout, missing study.

    The message is one line naming the node and the cause.
    """


class Protocol:
    """The two ways of talking to a PACS."""

    DICOMWEB = "dicomweb"
    DIMSE = "dimse"


@dataclass(frozen=True)
class Node:
    """A PACS node.

    Attributes
    ----------
    protocol
        :attr:`Protocol.DICOMWEB` or :attr:`Protocol.DIMSE`.
    url
        The node as written: ``http(s)://host:port/path`` or ``dicom://AET@host:port``.
    host, port
        Network address.
    aet
        The remote (called) AE title, DIMSE only (else None).
    name
        The saved name it was resolved from, or None.
    """

    protocol: str
    url: str
    host: str
    port: int
    aet: str | None = None
    name: str | None = None

    def __str__(self) -> str:
        return self.name or self.url


def parse_node(text: str) -> Node:
    """Parse ``http(s)://host[:port][/path]`` or ``dicom://AET@host:port``.

    Raises
    ------
    PacsError
        Anything else (the message says which forms are accepted), user info in an HTTP URL (credentials
        belong in the environment), an AE title longer than 16 characters or with a backslash.
    """
    text = text.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise PacsError(f"{text}: not a PACS node ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise PacsError(f"{text}: no host in the DICOMweb URL")
        if parts.username or parts.password:
            raise PacsError(f"{text}: credentials do not belong in the URL; set {ENV_USER}/{ENV_PASSWORD} "
                            f"or {ENV_TOKEN}")
        url = text.rstrip("/")
        return Node(Protocol.DICOMWEB, url, parts.hostname, port or (443 if scheme == "https" else 80))
    if scheme == "dicom":
        aet = parts.username
        if not aet or not parts.hostname or port is None:
            raise PacsError(f"{text}: a DIMSE node is dicom://AET@host:port")
        if not _AET_RE.match(aet) or aet.strip() == "":
            raise PacsError(f"{text}: AE title {aet!r} is not 1-16 printable characters without backslash")
        return Node(Protocol.DIMSE, f"dicom://{aet}@{parts.hostname}:{port}", parts.hostname, port, aet)
    raise PacsError(f"{text}: not a PACS node; use http(s)://host:port/path (DICOMweb), "
                    "dicom://AET@host:port (DIMSE) or a saved name (medviewer pacs list)")


def nodes_file() -> Path:
    """The saved-nodes file: ``$MEDVIEWER_CONFIG_DIR/pacs_nodes.json`` when that variable is set, else
    ``platformdirs.user_config_dir("medviewer")/pacs_nodes.json``."""
    root = os.environ.get("MEDVIEWER_CONFIG_DIR")
    if not root:
        import platformdirs

        root = platformdirs.user_config_dir("medviewer")
    return Path(root) / "pacs_nodes.json"


def load_nodes() -> dict[str, str]:
    """Saved nodes, name -> node text (empty when none are saved).

    Raises
    ------
    PacsError
        The file exists but is not a JSON object of strings.
    """
    path = nodes_file()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PacsError(f"{path}: not a saved-nodes file ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise PacsError(f"{path}: not a saved-nodes file (expected an object of name: node)")
    return data


def _write(nodes: dict[str, str]) -> Path:
    path = nodes_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(sorted(nodes.items())), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def save_node(name: str, node_text: str) -> Node:
    """Save ``node_text`` under ``name`` (replacing a node of that name); returns the parsed node.

    Raises
    ------
    PacsError
        A bad name (letters, digits, ``.``, ``_``, ``-``; it must not look like a URL) or a bad node.
    """
    if not _NAME_RE.match(name):
        raise PacsError(f"{name}: a node name is 1-64 letters, digits, '.', '_' or '-'")
    node = parse_node(node_text)
    nodes = load_nodes()
    nodes[name] = node.url
    _write(nodes)
    return Node(node.protocol, node.url, node.host, node.port, node.aet, name)


def remove_node(name: str) -> None:
    """Forget a saved node.

    Raises
    ------
    PacsError
        No node of that name.
    """
    nodes = load_nodes()
    if name not in nodes:
        raise PacsError(f"{name}: no saved node of that name (medviewer pacs list)")
    del nodes[name]
    _write(nodes)


def resolve_node(text: str) -> Node:
    """A node from a URL or a saved name (URLs win: a name never contains ``://``).

    Raises
    ------
    PacsError
        Neither a valid node nor a saved name.
    """
    if "://" in text:
        return parse_node(text)
    nodes = load_nodes()
    if text in nodes:
        node = parse_node(nodes[text])
        return Node(node.protocol, node.url, node.host, node.port, node.aet, text)
    raise PacsError(f"{text}: not a PACS node or saved name; use http(s)://host:port/path, "
                    "dicom://AET@host:port or a name from 'medviewer pacs list'")


@dataclass(frozen=True)
class Credentials:
    """HTTP credentials: a bearer token, or a user and password. ``repr`` hides the secrets."""

    token: str | None = None
    user: str | None = None
    password: str | None = None

    def __repr__(self) -> str:
        kind = "token" if self.token else "basic" if self.user else "none"
        return f"Credentials({kind})"

    @property
    def present(self) -> bool:
        return bool(self.token or (self.user and self.password is not None))


def credentials_from_env(node: Node | None = None) -> Credentials:
    """Credentials from ``MEDVIEWER_PACS_TOKEN`` or ``MEDVIEWER_PACS_USER`` + ``MEDVIEWER_PACS_PASSWORD``;
    with only a user set, the password is looked up in the OS keyring when ``keyring`` is installed."""
    token = os.environ.get(ENV_TOKEN) or None
    user = os.environ.get(ENV_USER) or None
    password = os.environ.get(ENV_PASSWORD)
    if user and password is None and node is not None:
        try:
            import keyring  # optional

            password = keyring.get_password(KEYRING_SERVICE, f"{user}@{node}")
        except Exception:  # no keyring package or no backend: basic auth needs the variable then
            password = None
    return Credentials(token=token, user=user, password=password)
