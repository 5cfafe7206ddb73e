"""MedViewer training kit (PyTorch): train classifiers, evaluate them honestly, export model packages.

Single-label (softmax, :mod:`training.engine`) and multi-label (a sigmoid per finding, CheXNet-style,
:mod:`training.multilabel`) classifiers; images cached in memory or streamed from disk; one process or
``torchrun`` over GPUs and nodes. ``torch`` is imported only under this package. Preprocessing comes from
:mod:`medviewer.imaging`, so a model sees the same pixels in training and in the app.
"""

from __future__ import annotations

__all__: list[str] = []
