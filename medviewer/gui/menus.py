"""The main window's menus and actions: one QAction per key binding of :mod:`medviewer.workstation.keybindings`,
the window presets of the active image's modality, recent folders, the AI menu's extras (the triage
worklist dock of :mod:`medviewer.gui.worklist_view`, created on first use).

:func:`build_menus` creates them on a :class:`~medviewer.gui.main_window.MainWindow` and connects each to
the window's public methods; the window keeps no menu code of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import QMenu

from medviewer.workstation.keybindings import KEYS, PRESET_KEYS, Command
from medviewer.workstation.measure import Shape

__all__ = ["build_menus", "update_recent_menu", "update_presets_menu", "TOOLS", "PROVIDERS"]

#: the tool each tool command selects (None: window/level)
TOOLS = {Command.TOOL_WINDOW: None, Command.TOOL_DISTANCE: Shape.DISTANCE, Command.TOOL_RECT: Shape.RECT,
         Command.TOOL_ELLIPSE: Shape.ELLIPSE}
#: execution providers offered in AI > Execution provider
PROVIDERS = (("auto", "Automatic (CUDA if available, else CPU)"), ("cuda", "CUDA (GPU)"), ("cpu", "CPU"))


def _handlers(win: Any) -> dict[Command, Callable[[], Any]]:
    def vp() -> Any:
        return win.active

    return {
        Command.OPEN_FILES: win.open_files_dialog,
        Command.OPEN_FOLDER: win.open_folder_dialog,
        Command.EXPORT_PNG: win.export_dialog,
        Command.QUIT: win.close,
        Command.NEXT_IMAGE: lambda: vp().step(1),
        Command.PREV_IMAGE: lambda: vp().step(-1),
        Command.NEXT_IMAGE_ALT: lambda: vp().step(1),
        Command.PREV_IMAGE_ALT: lambda: vp().step(-1),
        Command.PAGE_DOWN: lambda: vp().step(10),
        Command.PAGE_UP: lambda: vp().step(-10),
        Command.FIRST_IMAGE: lambda: vp().set_frame(0),
        Command.LAST_IMAGE: lambda: vp().set_frame(vp().state.n_frames - 1),
        Command.DEFAULT_WINDOW: lambda: vp().default_window(),
        Command.INVERT: lambda: vp().toggle_invert(),
        Command.RESET: lambda: vp().reset(),
        Command.FIT: lambda: vp().fit(),
        Command.ACTUAL_SIZE: lambda: vp().actual_size(),
        Command.ROTATE_CW: lambda: vp().rotate(90),
        Command.ROTATE_CCW: lambda: vp().rotate(-90),
        Command.FLIP_H: lambda: vp().flip(True),
        Command.FLIP_V: lambda: vp().flip(False),
        Command.CINE: win.toggle_cine,
        Command.CINE_FASTER: lambda: win.cine_fps(+5),
        Command.CINE_SLOWER: lambda: win.cine_fps(-5),
        Command.TOGGLE_OVERLAYS: win.toggle_overlays,
        Command.LAYOUT_1X1: lambda: win.set_layout("1x1"),
        Command.LAYOUT_1X2: lambda: win.set_layout("1x2"),
        Command.LAYOUT_2X2: lambda: win.set_layout("2x2"),
        Command.LAYOUT_MPR: lambda: win.set_layout("mpr"),
        Command.COMPARE_PRIOR: lambda: _compare_prior(win),
        Command.NEXT_VIEWPORT: win.next_viewport,
        Command.FULLSCREEN: lambda: win.showNormal() if win.isFullScreen() else win.showFullScreen(),
        Command.DELETE_MEASUREMENTS: lambda: vp().delete_measurements(),
        Command.TAGS: win.show_tags,
        Command.RUN_AI: win.run_ai,
        Command.CANCEL: win.cancel,
        Command.HEATMAP: lambda: win.panel.set_heatmap_on(not win.panel.heatmap_on()),
        Command.NEXT_CAM_LABEL: win.panel.next_cam_label,
        Command.MODEL_CARD: win.show_model_card,
        Command.SHORTCUTS: win.show_shortcuts,
    }


def _action(win: Any, text: str, slot: Callable[[], Any], menu: QMenu | None = None) -> QAction:
    act = QAction(text, win)
    act.triggered.connect(lambda _=False, f=slot: f())
    if menu is not None:
        menu.addAction(act)
    return act


def build_menus(win: Any) -> None:
    """Create the menu bar of ``win``: sets ``win.menus`` (name -> QMenu), ``win.actions`` (Command -> QAction),
    ``win.recent_menu``, ``win.presets_menu``, ``win.preset_actions``, ``win.auto_run_action`` and
    ``win.provider_actions`` (name -> QAction)."""
    mb = win.menuBar()
    win.menus = {name: mb.addMenu(f"&{name}") for name in ("File", "View", "Tools", "AI", "Help")}
    win.actions = {}
    handlers = _handlers(win)
    tool_group, layout_group = QActionGroup(win), QActionGroup(win)
    file_menu = win.menus["File"]
    for b in KEYS:
        act = QAction(b.text, win)
        act.setShortcut(QKeySequence(b.key))
        act.setShortcutContext(Qt.WindowShortcut)
        if b.command in TOOLS:
            act.setCheckable(True)
            tool_group.addAction(act)
            act.triggered.connect(lambda _=False, t=TOOLS[b.command]: win.set_tool(t))
        else:
            if b.command.name.startswith("LAYOUT_"):
                act.setCheckable(True)
                layout_group.addAction(act)
            act.triggered.connect(lambda _=False, f=handlers[b.command]: f())
        if b.command in (Command.NEXT_IMAGE_ALT, Command.PREV_IMAGE_ALT):
            win.addAction(act)  # active but not listed twice in the menu
        else:
            win.menus[b.menu].addAction(act)
        win.actions[b.command] = act
        if b.command == Command.OPEN_FOLDER:
            win.recent_menu = file_menu.addMenu("Open recent")
            _action(win, "Query / retrieve from PACS…", win.show_pacs_dialog, file_menu)
        if b.command == Command.EXPORT_PNG:
            _action(win, "Save reading state as DICOM (presentation state)", lambda: _save_state(win), file_menu)
        if b.command in (Command.EXPORT_PNG, Command.LAST_IMAGE, Command.FLIP_V, Command.FULLSCREEN):
            win.menus[b.menu].addSeparator()
    win.actions[Command.TOOL_WINDOW].setChecked(True)
    # presets: number keys, menu rebuilt for the active image's modality
    win.presets_menu = win.menus["View"].addMenu("Window presets")
    win.preset_actions = []
    for i, key in enumerate(PRESET_KEYS):
        act = _action(win, f"Preset {i + 1}", lambda n=i: win.apply_preset(n))
        act.setShortcut(QKeySequence(key))
        win.addAction(act)
        win.preset_actions.append(act)
    ai = win.menus["AI"]
    ai.addSeparator()
    win.auto_run_action = QAction("Run automatically on open", win)
    win.auto_run_action.setCheckable(True)
    win.auto_run_action.toggled.connect(win.panel.auto_run.setChecked)
    ai.addAction(win.auto_run_action)
    prov = ai.addMenu("Execution provider")
    group = QActionGroup(win)
    win.provider_actions = {}
    for name, text in PROVIDERS:
        act = _action(win, text, lambda n=name: win.set_provider(n), prov)
        act.setCheckable(True)
        act.setChecked(name == win.provider)
        group.addAction(act)
        win.provider_actions[name] = act
    ai.addSeparator()
    _action(win, "Export results as DICOM…", win.export_results_dialog, ai)
    _action(win, "Save results to PACS…", win.save_results_to_pacs, ai)
    ai.addSeparator()
    _action(win, "Triage a folder…", lambda: _worklist(win, True), ai)
    _action(win, "Triage worklist", lambda: _worklist(win, False), ai)
    ai.addSeparator()
    _action(win, "Import model…", win.import_model_dialog, ai)
    _action(win, "Rescan models", win.load_models, ai)
    _action(win, "About MedViewer", win.show_about, win.menus["Help"])
    update_recent_menu(win)


def _save_state(win: Any) -> Any:
    from medviewer.gui.presentation import save_reading_state

    return save_reading_state(win)


def _compare_prior(win: Any) -> Any:
    from medviewer.gui.priors import compare_with_prior

    return compare_with_prior(win)


def _worklist(win: Any, ask_folder: bool) -> Any:
    from medviewer.gui.worklist_view import show_worklist  # on first use: the window starts without it

    return show_worklist(win, ask_folder)


def update_recent_menu(win: Any) -> None:
    """Rebuild File > Open recent from ``win.settings.recent``."""
    menu = win.recent_menu
    menu.clear()
    for p in win.settings.recent:
        menu.addAction(p).triggered.connect(lambda _=False, path=p: win.open_paths([path]))
    if not win.settings.recent:
        menu.addAction("(none)").setEnabled(False)
    else:
        menu.addSeparator()
        menu.addAction("Clear list").triggered.connect(lambda: (win.settings.clear_recent(), update_recent_menu(win)))


def update_presets_menu(win: Any) -> None:
    """Rebuild View > Window presets for the active image's modality (``win.presets()``)."""
    if not hasattr(win, "presets_menu"):
        return
    win.presets_menu.clear()
    ps = win.presets()
    for i, act in enumerate(win.preset_actions):
        if i < len(ps):
            act.setText(f"{ps[i].name}  (W {ps[i].width:g} / L {ps[i].center:g})")
            win.presets_menu.addAction(act)
    if not ps:
        win.presets_menu.addAction("(no presets for this image)").setEnabled(False)
