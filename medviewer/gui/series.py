"""Moved: :class:`FrameSource` lives in :mod:`medviewer.workstation.frames` (Qt-free); re-exported here."""

from __future__ import annotations

from medviewer.workstation.frames import FrameSource, frame_identity, valid_spacing

__all__ = ["FrameSource", "valid_spacing", "frame_identity"]
