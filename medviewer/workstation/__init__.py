"""The workstation's application logic, Qt-free: what the GUI and the command line share.

* :mod:`medviewer.workstation.session`: the reading session -- opened studies, frame sources by series
  key, measurements, AI results keyed by SOP Instance UID + frame + model SHA-256 -- with psygnal events;
* :mod:`medviewer.workstation.ai`: the AI controller -- model choice, the one ONNX Runtime session cache,
  run/cancel on futures, the model card's intended-use and run-on-open policies (used by the GUI and by
  ``medviewer infer``);
* :mod:`medviewer.workstation.frames`: a series flattened to frames with a thread-safe pixel cache;
* :mod:`medviewer.workstation.intended_use`: whether a model may speak about an image (the model card's
  applicability and the out-of-distribution score), one policy for every front end.

Nothing here imports Qt or torch; the Qt views in :mod:`medviewer.gui` observe and call these objects.
"""

from __future__ import annotations

__all__: list[str] = []
