"""Shared fixtures: real data locations (pydicom test files, pydicom-data, ../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
CT_SERIES = SHARED_DATA / "ct-pancreas-cbct-seg-001"
KERMANY = SHARED_DATA / "kermany-cxr-224"


@pytest.fixture(scope="session")
def ct_series_dir() -> Path:
    """The shared 134-slice abdominal CT series; skips when ../shared/data is absent."""
    if not CT_SERIES.is_dir():
        pytest.skip(f"shared CT series not found at {CT_SERIES} (../shared/data is absent)")
    return CT_SERIES


@pytest.fixture(scope="session")
def kermany_dir() -> Path:
    """The shared Kermany chest X-ray train split; skips when ../shared/data is absent."""
    if not (KERMANY / "train").is_dir():
        pytest.skip(f"Kermany data not found at {KERMANY} (../shared/data is absent)")
    return KERMANY


def pydicom_test_file(name: str) -> Path:
    """Path of a pydicom test file or pydicom-data file by name (uses the local cache, no download)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} not available offline")
    return Path(path)


@pytest.fixture
def model_dirs(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """Isolated ``(builtin, user)`` model directories: model discovery sees only what a test puts there."""
    from medviewer.inference import registry

    builtin, user = tmp_path / "builtin", tmp_path / "user"
    builtin.mkdir()
    monkeypatch.setattr(registry, "builtin_models_dir", lambda: builtin)
    monkeypatch.setattr(registry, "user_models_dir", lambda: user)
    monkeypatch.delenv(registry.MODEL_PATH_ENV, raising=False)
    return builtin, user


@pytest.fixture(autouse=True, scope="session")
def _audit_log_in_tmp(tmp_path_factory) -> None:
    """Commands run by tests (infer, anonymize) write their audit records to a temporary folder, never to
    the developer's real audit log (tests that check the log set MEDVIEWER_AUDIT_DIR themselves)."""
    os.environ.setdefault("MEDVIEWER_AUDIT_DIR", str(tmp_path_factory.mktemp("audit")))


@pytest.fixture(autouse=True)
def _no_unsaved_prompt_on_close(request, monkeypatch) -> None:
    """Windows that tests close (pytest-qt closes each at teardown) would ask about unsaved measurements in a
    modal dialog that nobody answers; they close as if "Discard" was chosen. Tests of the prompt itself are
    marked ``unsaved_prompt`` and get the real one."""
    if "qtbot" not in request.fixturenames or request.node.get_closest_marker("unsaved_prompt") is not None:
        return  # no window (and no Qt import for tests without one), or the test of the prompt itself
    import medviewer.gui.presentation as gui_presentation

    monkeypatch.setattr(gui_presentation, "ask_to_save_unsaved", lambda win: True)
