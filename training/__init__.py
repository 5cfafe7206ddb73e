"""MedViewer training kit (PyTorch): train classifiers, evaluate them honestly, export model packages.

``torch`` is imported only under this package. Preprocessing comes from :mod:`medviewer.imaging`, so a
model sees the same pixels in training and in the app.
"""

from __future__ import annotations

__all__: list[str] = []
