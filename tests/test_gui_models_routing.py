"""Routing over several installed models in the workstation (issue 19 item 4), under pytest-qt, offscreen.

Two models are installed: the shipped paediatric ``pneumonia-cxr`` (ages 1-5 y) and a small adult chest
model built here (``adult-cxr``: CR/DX, CHEST, AP/PA, age 18-150 y, multi-label, one operating point per
finding). Run on open scores each image with every model whose intended use its header meets; the AI panel
groups the findings by model:

* the paediatric demo DICOM (Patient's Age 003Y): the pneumonia-cxr section with its finding, the adult model
  listed collapsed, not run, with the age as the reason;
* pydicom's adult RG1_UNCR radiograph (Patient's Age set to 064Y, reduced to 460 px to keep the test quick):
  the adult model's section in scope, pneumonia-cxr out of scope (age), its findings withheld.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from onnx_models import make_package
from test_worklist_models import ADULT_LABELS, PAEDIATRIC, adult_model, adult_radiograph

pytest.importorskip("pytestqt")
from PySide6.QtCore import QSettings  # noqa: E402

from medviewer.gui.ai_panel import ModelSection, ScoreRow  # noqa: E402
from medviewer.gui.main_window import MainWindow  # noqa: E402
from medviewer.gui.settings import Settings  # noqa: E402
from medviewer.inference.applicability import Status  # noqa: E402
from medviewer.inference.registry import DEFAULT_MODEL_NAME, MODEL_PATH_ENV  # noqa: E402

TIMEOUT = 60000


def _window(qtbot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, any_radiograph: bool = False) -> MainWindow:
    """A window with pneumonia-cxr (built in) and adult-cxr installed (``MEDVIEWER_MODEL_PATH``); with
    ``any_radiograph`` also ``any-cxr``, a schema-1 model (no stated intended use: run on every radiograph)."""
    if not PAEDIATRIC.is_file():
        pytest.skip(f"demo study {PAEDIATRIC} is absent (python -m training.demo_data builds it)")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))  # no user models, settings or read state
    adult_model(tmp_path / "models" / "adult-cxr")
    if any_radiograph:
        make_package(tmp_path / "models" / "any-cxr", name="any-cxr", labels=("NORMAL", "PNEUMONIA"))
    monkeypatch.setenv(MODEL_PATH_ENV, str(tmp_path / "models"))
    w = MainWindow(Settings(QSettings(str(tmp_path / "medviewer.ini"), QSettings.IniFormat)), provider="cpu")
    qtbot.addWidget(w)
    w.resize(1400, 1000)
    w.show()
    qtbot.waitUntil(lambda: w.models_ready, timeout=TIMEOUT)
    assert [p.card.name for p in w.ai.ordered_packages()][:2] == [DEFAULT_MODEL_NAME, "adult-cxr"]
    w.panel.auto_run.setChecked(True)
    return w


@pytest.fixture
def win(qtbot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MainWindow:
    return _window(qtbot, tmp_path, monkeypatch)


def _open_and_wait(qtbot, win: MainWindow, path: Path) -> None:
    win.open_paths([str(path)])
    qtbot.waitUntil(lambda: win.active.has_image() and win.prediction_for(win.active) is not None, timeout=TIMEOUT)
    qtbot.waitUntil(win.is_idle, timeout=TIMEOUT)


def _section(win: MainWindow, name: str) -> ModelSection:
    found = [s for s in win.panel.findChildren(ModelSection) if s.result.package.card.name == name
             and s in win.panel.sections]
    assert len(found) == 1, [s.result.package.card.name for s in win.panel.sections]
    return found[0]


def test_both_models_sections_for_a_child_and_for_an_adult(qtbot, win, tmp_path):
    panel = win.panel
    # the child's film: pneumonia-cxr speaks (flagged), the adult model is listed, collapsed, not run (age)
    _open_and_wait(qtbot, win, PAEDIATRIC)
    results = win.ai.results(win.active.source, win.active.state.frame)
    assert [(r.package.card.name, r.entry is not None) for r in results] == [(DEFAULT_MODEL_NAME, True),
                                                                            ("adult-cxr", False)]
    assert panel.scores_box.title().startswith(f"Findings · {DEFAULT_MODEL_NAME} ")
    assert panel.prediction.flagged == ["pneumonia"] and not panel.prediction.withheld
    assert any(r.flagged and r.label == "pneumonia" for r in panel.scores_box.findChildren(ScoreRow))
    adult = _section(win, "adult-cxr")
    assert panel.others_box.isVisible() and not adult.expanded and not adult.body.isVisible()
    assert adult.header.text().startswith("adult-cxr ") and adult.verdict_label.isVisible()
    assert adult.verdict == "not run: patient age 3 y; model: 18\u2013150 y"
    assert adult.result.assessment.status is Status.OUT_OF_SCOPE and not adult.rows
    # the heat map drawn is pneumonia-cxr's, and the overlay's verdict line names the model
    assert win.active.ai.heatmap_on and win.active.ai.verdict.startswith(f"{DEFAULT_MODEL_NAME}: flagged pneumonia")

    # the adult's film (Patient's Age 064Y): both models ran; the adult model's section is in scope, first
    adult_path = adult_radiograph(tmp_path / "rg1-064y.dcm")
    _open_and_wait(qtbot, win, adult_path)
    results = {r.package.card.name: r for r in win.ai.results(win.active.source, win.active.state.frame)}
    assert set(results) == {DEFAULT_MODEL_NAME, "adult-cxr"} and all(r.entry is not None for r in results.values())
    paed, grown = results[DEFAULT_MODEL_NAME], results["adult-cxr"]
    assert paed.assessment.withheld and any("patient age 64 y" in r for r in paed.assessment.reasons)
    assert not paed.entry.prediction.flagged  # withheld: nothing flagged, the scores kept for research
    assert grown.assessment.status is Status.IN_SCOPE and grown.shown
    assert set(grown.entry.prediction.scores) == set(ADULT_LABELS)
    # "Findings" holds the model in scope (with its operating-point ticks); pneumonia-cxr is listed collapsed
    assert panel.scores_box.title().startswith("Findings · adult-cxr ")
    rows = {r.label: r for r in panel.scores_box.findChildren(ScoreRow)}
    assert set(rows) == set(ADULT_LABELS) and rows["Effusion"].threshold == pytest.approx(0.05)
    assert not any(r.muted for r in rows.values())
    pneu = _section(win, DEFAULT_MODEL_NAME)
    assert not pneu.expanded and pneu.verdict.startswith("outside intended use: patient age 64 y")
    assert pneu.verdict_label.text().startswith("Outside intended use: patient age 64 y")
    assert pneu.rows and all(r.muted and not r.flagged for r in pneu.rows)
    pneu.header.click()  # unfolds: the reasons and the grey rows
    assert pneu.expanded and pneu.body.isVisible()
    # the heat map is the in-scope model's; picking a map names the model
    assert win.active.ai.verdict.startswith("adult-cxr: ")
    assert panel.cam_model_sha() == grown.package.sha256
    # the status bar: each model's verdict, the one in scope first; the preferred model stays the selected one
    assert win.status_msg.text() == f"{grown.entry.summary()} · {paed.entry.summary()}"
    assert win.status_msg.text().startswith("adult-cxr: ")
    assert win.prediction_for(win.active).package.card.name == DEFAULT_MODEL_NAME


def test_save_ai_results_writes_one_report_per_model(qtbot, tmp_path, monkeypatch):
    """"Export results as DICOM" on the adult film with three models: the two that may speak on it (adult-cxr in
    scope, any-cxr with no stated intended use) each get their SR + SC, in a folder named after the model;
    pneumonia-cxr (out of scope) gets none."""
    import pydicom

    from medviewer.gui.results_dialog import ResultsDialog

    win = _window(qtbot, tmp_path, monkeypatch, any_radiograph=True)
    _open_and_wait(qtbot, win, adult_radiograph(tmp_path / "rg1-064y.dcm"))
    shown = sorted(r.package.card.name for r in win.ai.results(win.active.source, 0) if r.shown)
    assert shown == ["adult-cxr", "any-cxr"]
    dlg = ResultsDialog(win, to_pacs=False)
    dlg.folder.setText(str(tmp_path / "out"))
    dlg.anonymize.setChecked(False)
    with qtbot.waitSignal(dlg.done_with, timeout=TIMEOUT) as blocker:
        assert dlg.start()
    res = blocker.args[0]
    qtbot.waitUntil(lambda: not dlg.running, timeout=TIMEOUT)
    assert sorted(p.card.name for p, _uids, _n in res["reports"]) == ["adult-cxr", "any-cxr"]
    written = sorted(Path(p).relative_to(tmp_path / "out") for p in res["paths"])
    assert sorted({p.parts[0] for p in written}) == ["adult-cxr", "any-cxr"]
    assert sorted(p.name[:3] for p in written) == ["SC_", "SC_", "SR_", "SR_"]
    for p in res["paths"]:
        if Path(p).name.startswith("SR_"):
            text = str(pydicom.dcmread(p))
            assert Path(p).parent.name in text  # each SR names the model that produced it
            assert DEFAULT_MODEL_NAME not in text
    win.close()
