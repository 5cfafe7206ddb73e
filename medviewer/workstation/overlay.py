"""The one AI overlay -- moved to :mod:`medviewer.inference.overlay` (below ``export``, so nothing in the export
layer imports the workstation); this module re-exports it so existing imports keep working.
"""

from __future__ import annotations

from medviewer.inference.overlay import (  # noqa: F401 - re-exported
    REGION_COLOR,
    SCOPE_COLOR,
    AiOverlay,
    __all__,
    ai_overlay_layer,
    opencv_matrix,
    overlay_key,
    overlay_layer,
    text_scale_for,
)
