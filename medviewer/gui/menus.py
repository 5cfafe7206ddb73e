"""The main window's menus and actions: one QAction per key binding of :mod:`medviewer.workstation.keybindings`,
the window presets of the active image's modality, recent folders, the AI menu's extras (the triage
worklist dock of :mod:`medviewer.gui.worklist_view`, created on first use).

:func:`build_menus` creates them on a window (:class:`MenuHost`: the main window's public commands and its
:class:`~medviewer.workstation.workspace.Workspace`), connects each to those commands, and returns a
:class:`MenuBar` holding what it made; it sets nothing on the window. The window keeps no menu code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import QMenu, QMenuBar

from medviewer.workstation.keybindings import KEYS, PRESET_KEYS, Command
from medviewer.workstation.measure import Shape
from medviewer.workstation.workspace import Workspace

__all__ = ["MenuBar", "MenuHost", "build_menus", "update_recent_menu", "update_presets_menu", "TOOLS", "PROVIDERS"]

#: the tool each tool command selects (None: window/level)
TOOLS = {Command.TOOL_WINDOW: None, Command.TOOL_DISTANCE: Shape.DISTANCE, Command.TOOL_RECT: Shape.RECT,
         Command.TOOL_ELLIPSE: Shape.ELLIPSE}
#: execution providers offered in AI > Execution provider
PROVIDERS = (("auto", "Automatic (CUDA if available, else CPU)"), ("cuda", "CUDA (GPU)"), ("cpu", "CPU"))


class MenuHost(Protocol):
    """What the menus need of the main window: its workspace and settings, and the commands they trigger."""

    workspace: Workspace
    settings: Any
    panel: Any
    active: Any

    def menuBar(self) -> QMenuBar: ...  # Qt API
    def addAction(self, action: QAction) -> None: ...
    def close(self) -> bool: ...
    def isFullScreen(self) -> bool: ...
    def showNormal(self) -> None: ...
    def showFullScreen(self) -> None: ...
    def open_files_dialog(self) -> None: ...
    def open_folder_dialog(self) -> None: ...
    def open_paths(self, paths: list[str]) -> None: ...
    def show_pacs_dialog(self) -> None: ...
    def export_dialog(self) -> None: ...
    def toggle_cine(self) -> None: ...
    def cine_fps(self, delta: int) -> None: ...
    def toggle_overlays(self) -> None: ...
    def set_layout(self, name: str) -> None: ...
    def next_viewport(self) -> None: ...
    def set_tool(self, tool: Shape | None) -> None: ...
    def apply_preset(self, n: int) -> None: ...
    def show_tags(self) -> None: ...
    def run_ai(self) -> None: ...
    def cancel(self) -> None: ...
    def show_model_card(self) -> None: ...
    def set_provider(self, name: str) -> None: ...
    def export_results_dialog(self) -> None: ...
    def save_results_to_pacs(self) -> None: ...
    def import_model_dialog(self) -> None: ...
    def load_models(self) -> None: ...
    def show_shortcuts(self) -> None: ...
    def show_about(self) -> None: ...


@dataclass
class MenuBar:
    """What :func:`build_menus` made.

    Attributes
    ----------
    menus
        Top-level menus by name (``File``, ``View``, ``Tools``, ``AI``, ``Help``).
    actions
        One action per :class:`~medviewer.workstation.keybindings.Command`, with its shortcut.
    recent
        File > Open recent (:func:`update_recent_menu` rebuilds it).
    presets
        View > Window presets (:func:`update_presets_menu` rebuilds it for the active image).
    preset_actions
        The number-key preset actions, in key order.
    auto_run
        AI > Run automatically on open.
    providers
        AI > Execution provider entries by name (``auto``, ``cuda``, ``cpu``).
    """

    menus: dict[str, QMenu]
    actions: dict[Command, QAction]
    recent: QMenu
    presets: QMenu
    auto_run: QAction
    preset_actions: list[QAction] = field(default_factory=list)
    providers: dict[str, QAction] = field(default_factory=dict)


def _handlers(win: MenuHost) -> dict[Command, Callable[[], Any]]:
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


def build_menus(win: MenuHost) -> MenuBar:
    """Create the menu bar of ``win`` and return what it holds; the checked layout, tool and execution
    provider are the workspace's (``win.workspace``)."""
    mb = win.menuBar()
    menus = {name: mb.addMenu(f"&{name}") for name in ("File", "View", "Tools", "AI", "Help")}
    actions: dict[Command, QAction] = {}
    recent: QMenu | None = None
    handlers = _handlers(win)
    tool_group, layout_group = QActionGroup(win), QActionGroup(win)
    file_menu = menus["File"]
    layout_command = {"1x2": Command.LAYOUT_1X2, "2x2": Command.LAYOUT_2X2}.get(win.workspace.layout,
                                                                               Command.LAYOUT_1X1)
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
                act.setChecked(b.command == layout_command)
                layout_group.addAction(act)
            act.triggered.connect(lambda _=False, f=handlers[b.command]: f())
        if b.command in (Command.NEXT_IMAGE_ALT, Command.PREV_IMAGE_ALT):
            win.addAction(act)  # active but not listed twice in the menu
        else:
            menus[b.menu].addAction(act)
        actions[b.command] = act
        if b.command == Command.OPEN_FOLDER:
            recent = file_menu.addMenu("Open recent")
            _action(win, "Query / retrieve from PACS…", win.show_pacs_dialog, file_menu)
        if b.command == Command.LAYOUT_MPR:  # the same layout with the acquired plane (2x2); no key of its own
            _action(win, "Layout MPR 2×2 (acquired plane, axial, coronal, sagittal)", lambda: _mpr_2x2(win),
                    menus["View"])
        if b.command == Command.EXPORT_PNG:
            _action(win, "Save reading state as DICOM (presentation state)", lambda: _save_state(win), file_menu)
            _action(win, "Save reading state to PACS…", lambda: _save_state_to_pacs(win), file_menu)
        if b.command in (Command.EXPORT_PNG, Command.LAST_IMAGE, Command.FLIP_V, Command.FULLSCREEN):
            menus[b.menu].addSeparator()
    actions[Command.TOOL_WINDOW].setChecked(True)
    assert recent is not None  # KEYS has OPEN_FOLDER
    # presets: number keys, menu rebuilt for the active image's modality
    bar = MenuBar(menus=menus, actions=actions, recent=recent, presets=menus["View"].addMenu("Window presets"),
                  auto_run=QAction("Run automatically on open", win))
    for i, key in enumerate(PRESET_KEYS):
        act = _action(win, f"Preset {i + 1}", lambda n=i: win.apply_preset(n))
        act.setShortcut(QKeySequence(key))
        win.addAction(act)
        bar.preset_actions.append(act)
    ai = menus["AI"]
    ai.addSeparator()
    bar.auto_run.setCheckable(True)
    bar.auto_run.toggled.connect(win.panel.auto_run.setChecked)
    ai.addAction(bar.auto_run)
    prov = ai.addMenu("Execution provider")
    group = QActionGroup(win)
    for name, text in PROVIDERS:
        act = _action(win, text, lambda n=name: win.set_provider(n), prov)
        act.setCheckable(True)
        act.setChecked(name == win.workspace.ai.provider)
        group.addAction(act)
        bar.providers[name] = act
    ai.addSeparator()
    _action(win, "Export results as DICOM…", win.export_results_dialog, ai)
    _action(win, "Save results to PACS…", win.save_results_to_pacs, ai)
    ai.addSeparator()
    _action(win, "Triage a folder…", lambda: _worklist(win, True), ai)
    _action(win, "Triage worklist", lambda: _worklist(win, False), ai)
    ai.addSeparator()
    _action(win, "Import model…", win.import_model_dialog, ai)
    _action(win, "Rescan models", win.load_models, ai)
    _action(win, "About MedViewer", win.show_about, menus["Help"])
    update_recent_menu(bar, win)
    return bar


def _mpr_2x2(win: Any) -> None:
    from medviewer.gui.mpr_view import show_mpr_layout

    show_mpr_layout(win, "2x2")


def _save_state(win: Any) -> Any:
    from medviewer.gui.presentation import save_reading_state

    return save_reading_state(win)


def _save_state_to_pacs(win: Any) -> Any:
    from medviewer.gui.presentation import save_reading_state_to_pacs

    return save_reading_state_to_pacs(win)


def _compare_prior(win: Any) -> Any:
    from medviewer.gui.priors import compare_with_prior

    return compare_with_prior(win)


def _worklist(win: Any, ask_folder: bool) -> Any:
    from medviewer.gui.worklist_view import show_worklist  # on first use: the window starts without it

    return show_worklist(win, ask_folder)


def update_recent_menu(bar: MenuBar, win: MenuHost) -> None:
    """Rebuild File > Open recent from ``win.settings.recent``."""
    menu = bar.recent
    menu.clear()
    for p in win.settings.recent:
        menu.addAction(p).triggered.connect(lambda _=False, path=p: win.open_paths([path]))
    if not win.settings.recent:
        menu.addAction("(none)").setEnabled(False)
    else:
        menu.addSeparator()
        menu.addAction("Clear list").triggered.connect(lambda: (win.settings.clear_recent(),
                                                                 update_recent_menu(bar, win)))


def update_presets_menu(bar: MenuBar, workspace: Workspace) -> None:
    """Rebuild View > Window presets for the active image's modality (:meth:`Workspace.presets`)."""
    bar.presets.clear()
    ps = workspace.presets()
    for i, act in enumerate(bar.preset_actions):
        if i < len(ps):
            act.setText(f"{ps[i].name}  (W {ps[i].width:g} / L {ps[i].center:g})")
            bar.presets.addAction(act)
    if not ps:
        bar.presets.addAction("(no presets for this image)").setEnabled(False)
