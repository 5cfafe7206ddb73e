"""Writing what the reader sees: overlay images (heat map, regions, scores) and viewport exports (Qt-free)."""

from __future__ import annotations

from medviewer.export.overlay import (
    IMAGE_SUFFIXES,
    REGION_COLOR,
    draw_caption,
    draw_regions,
    overlay_label,
    render_overlay,
    save_image,
)

__all__ = ["IMAGE_SUFFIXES", "REGION_COLOR", "draw_caption", "draw_regions", "overlay_label", "render_overlay",
           "save_image"]
