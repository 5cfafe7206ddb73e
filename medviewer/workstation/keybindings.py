"""Every keyboard and mouse binding of the workstation, in one place.

"What does H do?" has one answer: :data:`KEYS`. The main window turns each entry into a ``QAction``
with that shortcut, and Help > Shortcuts lists :data:`KEYS` and :data:`MOUSE` verbatim. Keys are
``QKeySequence`` portable strings (``"Ctrl+O"``, ``"PgUp"``); this module itself does not import Qt.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["Command", "Binding", "KEYS", "MOUSE", "PRESET_KEYS", "key_for", "shortcut_table"]


class Command(str, Enum):
    """Commands a key can trigger (names are stable: tests and settings refer to them)."""

    OPEN_FILES = "open_files"
    OPEN_FOLDER = "open_folder"
    EXPORT_PNG = "export_png"
    QUIT = "quit"
    NEXT_IMAGE = "next_image"
    PREV_IMAGE = "prev_image"
    NEXT_IMAGE_ALT = "next_image_alt"
    PREV_IMAGE_ALT = "prev_image_alt"
    PAGE_DOWN = "page_down"
    PAGE_UP = "page_up"
    FIRST_IMAGE = "first_image"
    LAST_IMAGE = "last_image"
    DEFAULT_WINDOW = "default_window"
    INVERT = "invert"
    RESET = "reset"
    FIT = "fit"
    ACTUAL_SIZE = "actual_size"
    ROTATE_CW = "rotate_cw"
    ROTATE_CCW = "rotate_ccw"
    FLIP_H = "flip_h"
    FLIP_V = "flip_v"
    CINE = "cine"
    CINE_FASTER = "cine_faster"
    CINE_SLOWER = "cine_slower"
    TOOL_WINDOW = "tool_window"
    TOOL_DISTANCE = "tool_distance"
    TOOL_RECT = "tool_rect"
    TOOL_ELLIPSE = "tool_ellipse"
    DELETE_MEASUREMENTS = "delete_measurements"
    TOGGLE_OVERLAYS = "toggle_overlays"
    LAYOUT_1X1 = "layout_1x1"
    LAYOUT_1X2 = "layout_1x2"
    LAYOUT_2X2 = "layout_2x2"
    LAYOUT_MPR = "layout_mpr"
    COMPARE_PRIOR = "compare_prior"
    NEXT_VIEWPORT = "next_viewport"
    TAGS = "tags"
    RUN_AI = "run_ai"
    CANCEL = "cancel"
    HEATMAP = "heatmap"
    NEXT_CAM_LABEL = "next_cam_label"
    MODEL_CARD = "model_card"
    SHORTCUTS = "shortcuts"
    FULLSCREEN = "fullscreen"


@dataclass(frozen=True)
class Binding:
    """One shortcut: the command, its key sequence, the menu it lives in and what it does."""

    command: Command
    key: str
    menu: str
    text: str


#: number keys 1..9 apply the n-th window preset of the image's modality (see medviewer.imaging.presets_for)
PRESET_KEYS: tuple[str, ...] = tuple(str(n) for n in range(1, 10))

KEYS: tuple[Binding, ...] = (
    Binding(Command.OPEN_FILES, "Ctrl+O", "File", "Open files…"),
    Binding(Command.OPEN_FOLDER, "Ctrl+Shift+O", "File", "Open folder…"),
    Binding(Command.EXPORT_PNG, "Ctrl+E", "File", "Export viewport as PNG…"),
    Binding(Command.QUIT, "Ctrl+Q", "File", "Quit"),
    Binding(Command.NEXT_IMAGE, "Down", "View", "Next image"),
    Binding(Command.PREV_IMAGE, "Up", "View", "Previous image"),
    Binding(Command.NEXT_IMAGE_ALT, "Right", "View", "Next image"),
    Binding(Command.PREV_IMAGE_ALT, "Left", "View", "Previous image"),
    Binding(Command.PAGE_DOWN, "PgDown", "View", "Forward 10 images"),
    Binding(Command.PAGE_UP, "PgUp", "View", "Back 10 images"),
    Binding(Command.FIRST_IMAGE, "Home", "View", "First image"),
    Binding(Command.LAST_IMAGE, "End", "View", "Last image"),
    Binding(Command.DEFAULT_WINDOW, "0", "View", "Default window (from the file, else automatic)"),
    Binding(Command.INVERT, "I", "View", "Invert grey scale"),
    Binding(Command.RESET, "R", "View", "Reset view (window, zoom, rotation, flips)"),
    Binding(Command.FIT, "F", "View", "Fit image to viewport"),
    Binding(Command.ACTUAL_SIZE, "A", "View", "Actual size (1 image pixel = 1 screen pixel, 1:1)"),
    Binding(Command.ROTATE_CW, "]", "View", "Rotate 90° clockwise"),
    Binding(Command.ROTATE_CCW, "[", "View", "Rotate 90° counter-clockwise"),
    Binding(Command.FLIP_H, "Shift+F", "View", "Flip horizontally"),
    Binding(Command.FLIP_V, "Shift+V", "View", "Flip vertically"),
    Binding(Command.CINE, "C", "View", "Cine play / pause"),
    Binding(Command.CINE_FASTER, "+", "View", "Cine faster (+5 fps)"),
    Binding(Command.CINE_SLOWER, "-", "View", "Cine slower (−5 fps)"),
    Binding(Command.TOGGLE_OVERLAYS, "O", "View", "Show / hide text overlays"),
    Binding(Command.LAYOUT_1X1, "Ctrl+1", "View", "Layout 1×1"),
    Binding(Command.LAYOUT_1X2, "Ctrl+2", "View", "Layout 1×2"),
    Binding(Command.LAYOUT_2X2, "Ctrl+4", "View", "Layout 2×2"),
    Binding(Command.LAYOUT_MPR, "Ctrl+3", "View", "Layout MPR (axial, coronal, sagittal of a CT/MR series)"),
    Binding(Command.COMPARE_PRIOR, "Ctrl+Shift+P", "View",
            "Compare with prior (the patient's latest earlier study of this modality and body part, linked 1×2)"),
    Binding(Command.NEXT_VIEWPORT, "Tab", "View", "Next viewport"),
    Binding(Command.FULLSCREEN, "F11", "View", "Full screen"),
    Binding(Command.TOOL_WINDOW, "W", "Tools", "Window/level tool (left drag)"),
    Binding(Command.TOOL_DISTANCE, "D", "Tools", "Distance (mm)"),
    Binding(Command.TOOL_RECT, "G", "Tools", "Rectangle ROI (mean, SD, min, max, area)"),
    Binding(Command.TOOL_ELLIPSE, "E", "Tools", "Ellipse ROI (mean, SD, min, max, area)"),
    Binding(Command.DELETE_MEASUREMENTS, "Del", "Tools", "Delete measurements on this image"),
    Binding(Command.TAGS, "Ctrl+T", "Tools", "DICOM tag browser…"),
    Binding(Command.RUN_AI, "Ctrl+R", "AI", "Run model on the current image"),
    Binding(Command.CANCEL, "Esc", "AI", "Cancel running inference / current drawing"),
    Binding(Command.HEATMAP, "H", "AI", "Heatmap on / off"),
    Binding(Command.NEXT_CAM_LABEL, "Shift+H", "AI", "Heatmap: next label"),
    Binding(Command.MODEL_CARD, "Ctrl+M", "AI", "Model card…"),
    Binding(Command.SHORTCUTS, "F1", "Help", "Keyboard and mouse shortcuts"),
)

MOUSE: tuple[tuple[str, str], ...] = (
    ("Left drag", "Window/level (horizontal = width, vertical = centre), or draw with the active tool"),
    ("Right drag", "Zoom (up = in)"),
    ("Middle drag", "Pan"),
    ("Wheel", "Scroll images in the series"),
    ("Ctrl + wheel", "Zoom about the cursor"),
    ("Double click (viewport)", "Fit image"),
    ("Double click / drag (series browser)", "Load series into the active viewport"),
    ("Click a flagged region (AI panel)", "Centre and zoom on it"),
    ("Drop files or folders", "Open them"),
)


def key_for(command: Command) -> str:
    """The key sequence bound to ``command`` (KeyError if it has none)."""
    for b in KEYS:
        if b.command == command:
            return b.key
    raise KeyError(command)


def shortcut_table() -> list[tuple[str, str, str]]:
    """``(menu, key, description)`` rows for Help > Shortcuts: keys, presets, then mouse."""
    rows = [(b.menu, b.key, b.text) for b in KEYS]
    rows.append(("View", "1 … 9", "Window presets of the image's modality (e.g. CT: lung, bone, brain…)"))
    rows.extend(("Mouse", what, text) for what, text in MOUSE)
    return rows
