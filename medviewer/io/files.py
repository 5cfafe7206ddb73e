"""Opening files safely: regular files only, never blocking, every OS error named as such.

A FIFO (named pipe) blocks ``open()`` until a writer appears; a character device such as ``/dev/zero``
never ends; a socket cannot be opened at all. Everything that reads a user's file goes through
:func:`open_regular`, which opens with ``O_NONBLOCK`` (so a FIFO cannot block) and then checks with
``fstat`` -- on the descriptor actually opened, so a file swapped between a check and the open is still
caught -- that it is a regular file (``S_ISREG``).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from medviewer.errors import ReadError

__all__ = ["open_regular", "check_regular", "os_error_reason", "special_file_kind"]

_O_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)

_ERRNO_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied (operation not permitted)",
    errno.ENOENT: "no such file",
    errno.ELOOP: "symbolic link loop (or too many levels of symbolic links)",
    errno.ENAMETOOLONG: "file name too long",
    errno.EISDIR: "is a folder, not an image file",
    errno.ENOTDIR: "a component of the path is not a folder",
    errno.ENXIO: "is a socket or a device with nothing behind it, not a regular file",
    errno.EIO: "input/output error reading the file (failing disk or network share)",
}


def os_error_reason(exc: OSError) -> str:
    """A one-line reason for an ``OSError`` from opening or reading a file: ``"permission denied"``,
    ``"symbolic link loop ..."``, ``"file name too long"``, ... (else the system's own message)."""
    reason = _ERRNO_REASONS.get(exc.errno or -1)
    if reason:
        return reason
    return f"cannot read the file: {exc.strerror or exc}"


def special_file_kind(mode: int) -> str | None:
    """``None`` for a regular file, else what it is (``"a FIFO (named pipe)"``, ``"a socket"``, ...)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"


def check_regular(path: str | Path) -> os.stat_result:
    """``os.stat`` `path` (following symbolic links) and make sure it is a regular file; opens nothing.

    Raises
    ------
    ReadError
        Missing, unreadable (named: permission denied, symbolic link loop, file name too long), or a
        folder, FIFO, socket or device.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ReadError(path, os_error_reason(exc)) from None
    except ValueError as exc:  # embedded NUL byte
        raise ReadError(path, f"invalid file name ({exc})") from None
    kind = special_file_kind(st.st_mode)
    if kind == "a folder":
        raise ReadError(path, "is a folder, not an image file")
    if kind is not None:
        raise ReadError(path, f"is {kind}, not a regular file; refused (reading it could block or never end)")
    return st


def open_regular(path: str | Path) -> BinaryIO:
    """Open `path` for binary reading if -- and only if -- it is a regular file; never blocks.

    Returns
    -------
    BinaryIO
        A buffered binary file object (close it, e.g. ``with open_regular(p) as fp``).

    Raises
    ------
    ReadError
        As :func:`check_regular`; the check is made on the opened descriptor (``fstat``).
    """
    try:
        fd = os.open(path, _O_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket (or a FIFO opened for writing)
            try:
                kind = special_file_kind(os.stat(path).st_mode)
            except OSError:
                kind = None
            if kind:
                raise ReadError(path, f"is {kind}, not a regular file; refused") from None
        raise ReadError(path, os_error_reason(exc)) from None
    except ValueError as exc:
        raise ReadError(path, f"invalid file name ({exc})") from None
    try:
        st = os.fstat(fd)
        kind = special_file_kind(st.st_mode)
        if kind == "a folder":
            raise ReadError(path, "is a folder, not an image file")
        if kind is not None:
            raise ReadError(path, f"is {kind}, not a regular file; refused (reading it could block or never end)")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
