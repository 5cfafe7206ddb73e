"""View > Link viewports: the Qt side of :mod:`medviewer.workstation.linking`.

:func:`install_linking` adds the submenu to a main window and links its viewports' models. The actions
"Link scroll", "Link zoom/pan" and "Link window/level" toggle the property for the *active* viewport (each
viewport links what it chooses; a change propagates between viewports that link the same property);
"Link all viewports" and "Unlink all" set every viewport at once. A linked viewport paints a small badge
naming what it shares.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu

from medviewer.workstation.linking import ViewportLinker

__all__ = ["install_linking", "LINK_ACTIONS"]

#: property -> action text, in menu order
LINK_ACTIONS = {"scroll": "Link scroll", "zoom": "Link zoom/pan", "window": "Link window/level"}


def _view_menu(window: Any) -> QMenu:
    menus = getattr(window, "menus", None)
    if isinstance(menus, dict) and isinstance(menus.get("View"), QMenu):
        return menus["View"]
    for action in window.menuBar().actions():
        if action.menu() is not None and action.text().replace("&", "") == "View":
            return action.menu()
    return window.menuBar().addMenu("&View")


def install_linking(window: Any, linker: ViewportLinker | None = None) -> ViewportLinker:
    """Link the models of ``window.viewports`` (with ``linker``, e.g. the workspace's, else a new one) and
    add View > Link viewports to ``window``.

    ``window`` is the main window: it has ``viewports`` (:class:`~medviewer.gui.viewport.Viewport` s),
    ``active`` (the active one) and a menu bar with a View menu (created when missing).

    Returns
    -------
    ViewportLinker
        The linker; its actions are in ``linker.actions`` (property -> QAction).
    """
    if linker is None:
        linker = ViewportLinker([vp.model for vp in window.viewports])
    menu = _view_menu(window).addMenu("Link viewports")
    actions: dict[str, QAction] = {}
    for what, text in LINK_ACTIONS.items():
        act = QAction(text, window)
        act.setCheckable(True)
        act.setObjectName(f"link_{what}")
        act.setStatusTip(f"{text} of the active viewport with the other linked viewports")
        act.triggered.connect(lambda on, w=what: window.active.model.set_linked(w, bool(on)))
        menu.addAction(act)
        actions[what] = act
    menu.addSeparator()
    link_all = menu.addAction("Link all viewports")
    link_all.triggered.connect(lambda: linker.link_all(on=True))
    unlink = menu.addAction("Unlink all")
    unlink.triggered.connect(lambda: linker.link_all(on=False))

    def sync() -> None:  # the checks show the active viewport's links
        links = window.active.model.links
        for what, act in actions.items():
            act.setChecked(what in links)

    menu.aboutToShow.connect(sync)
    for vp in window.viewports:
        vp.model.links_changed.connect(sync)
        vp.activated.connect(lambda _vp: sync())
    sync()
    linker.actions = actions  # type: ignore[attr-defined]
    linker.menu = menu  # type: ignore[attr-defined]
    return linker
