"""``medviewer serve``: an unattended AI node that a PACS or a modality sends studies to.

A DICOM Storage SCP (:mod:`medviewer.serve.scp`) writes each instance atomically into a spool folder
(:mod:`medviewer.serve.spool`) before it answers success; a study is complete after ``--study-timeout``
seconds without a new instance; complete studies go through a durable SQLite queue
(:mod:`medviewer.serve.queue`) to workers (:mod:`medviewer.serve.worker`) that score them with every model
whose intended use fits, write a TID 1500 SR and a Secondary Capture per scored image as ``medviewer infer
--dicom`` does, and store them at the destination (``--send``), retrying with backoff while it is down.
Nothing is lost or reported twice when the node is killed and started again: see :mod:`medviewer.serve.queue`.

Qt-free; see ``docs/serve.md`` for the operator's guide and the measured figures.
"""

from __future__ import annotations

from medviewer.serve.node import ServeConfig, ServeNode
from medviewer.serve.queue import SpoolDB, StudyState
from medviewer.serve.scp import StorageSCP
from medviewer.serve.spool import Spool, SpoolError
from medviewer.serve.worker import Scorer, ScoringOptions, Sender, backoff

__all__ = ["ServeConfig", "ServeNode", "SpoolDB", "StudyState", "StorageSCP", "Spool", "SpoolError", "Scorer",
           "ScoringOptions", "Sender", "backoff"]
