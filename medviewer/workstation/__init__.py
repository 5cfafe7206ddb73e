"""The workstation's application logic, Qt-free: what the GUI and the command line share.

* :mod:`medviewer.workstation.intended_use`: whether a model may speak about an image (the model card's
  applicability and the out-of-distribution score), one policy for every front end.

Nothing here imports Qt or torch; the Qt views in :mod:`medviewer.gui` observe and call these objects.
"""

from __future__ import annotations

__all__: list[str] = []
