"""Persistent user settings (QSettings): layout, heatmap, provider, auto-run, folders, recent studies."""

from __future__ import annotations

from PySide6.QtCore import QSettings

from medviewer.providers import Provider

__all__ = ["Settings", "LAYOUTS", "ORGANISATION", "APPLICATION"]

ORGANISATION = "MedViewer"
APPLICATION = "MedViewer"
#: layout name -> (rows, columns)
LAYOUTS: dict[str, tuple[int, int]] = {"1x1": (1, 1), "1x2": (1, 2), "2x2": (2, 2)}
_MAX_RECENT = 10


def _bool(v: object, default: bool) -> bool:
    if v is None:
        return default
    if isinstance(v, bool):
        return v
    return str(v).lower() in ("1", "true", "yes", "on")


class Settings:
    """Typed access to the application's QSettings.

    Parameters
    ----------
    qsettings
        The store; default ``QSettings("MedViewer", "MedViewer")`` (native format). Tests pass a
        ``QSettings(path, QSettings.IniFormat)`` in a temporary directory.
    """

    def __init__(self, qsettings: QSettings | None = None) -> None:
        self.q = qsettings if qsettings is not None else QSettings(ORGANISATION, APPLICATION)

    def _get(self, key: str, default: object) -> object:
        v = self.q.value(key)
        return default if v is None else v

    @property
    def layout(self) -> str:
        v = str(self._get("view/layout", "1x1"))
        return v if v in LAYOUTS else "1x1"

    @layout.setter
    def layout(self, v: str) -> None:
        if v not in LAYOUTS:
            raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {v!r}")
        self.q.setValue("view/layout", v)

    @property
    def heatmap_opacity(self) -> float:
        try:
            return min(1.0, max(0.0, float(self._get("ai/heatmap_opacity", 0.45))))
        except (TypeError, ValueError):
            return 0.45

    @heatmap_opacity.setter
    def heatmap_opacity(self, v: float) -> None:
        self.q.setValue("ai/heatmap_opacity", float(v))

    @property
    def colormap(self) -> str:
        return str(self._get("ai/colormap", "jet"))

    @colormap.setter
    def colormap(self, v: str) -> None:
        self.q.setValue("ai/colormap", str(v))

    @property
    def heatmap_on(self) -> bool:
        return _bool(self.q.value("ai/heatmap_on"), True)

    @heatmap_on.setter
    def heatmap_on(self, v: bool) -> None:
        self.q.setValue("ai/heatmap_on", bool(v))

    @property
    def provider(self) -> str:
        """The saved execution provider preference (a :class:`medviewer.providers.Provider` value:
        ``"auto"``, ``"cpu"`` or ``"cuda"``); ``"auto"`` when unset or unreadable."""
        try:
            return Provider.parse(self._get("ai/provider", Provider.AUTO.value)).value
        except ValueError:
            return Provider.AUTO.value

    @provider.setter
    def provider(self, v: str | Provider) -> None:
        """Save ``v`` (any case; :meth:`medviewer.providers.Provider.parse`). Raises ValueError for any other
        name, with the one-line message listing the valid ones."""
        self.q.setValue("ai/provider", Provider.parse(v).value)

    @property
    def auto_run(self) -> bool:
        return _bool(self.q.value("ai/auto_run"), True)

    @auto_run.setter
    def auto_run(self, v: bool) -> None:
        self.q.setValue("ai/auto_run", bool(v))

    @property
    def model(self) -> str:
        return str(self._get("ai/model", ""))

    @model.setter
    def model(self, v: str) -> None:
        self.q.setValue("ai/model", str(v))

    @property
    def last_folder(self) -> str:
        return str(self._get("files/last_folder", ""))

    @last_folder.setter
    def last_folder(self, v: str) -> None:
        self.q.setValue("files/last_folder", str(v))

    @property
    def recent(self) -> list[str]:
        v = self.q.value("files/recent")
        if v is None:
            return []
        if isinstance(v, str):
            return [v] if v else []
        return [str(x) for x in v]

    def add_recent(self, path: str) -> None:
        """Put ``path`` first in the recent list (at most 10 entries, no duplicates)."""
        items = [p for p in self.recent if p != path]
        self.q.setValue("files/recent", [path, *items][:_MAX_RECENT])

    def clear_recent(self) -> None:
        self.q.setValue("files/recent", [])

    def sync(self) -> None:
        self.q.sync()
