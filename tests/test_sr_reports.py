"""AI reports (TID 1500 SR) among opened files, ours and another vendor's: found, listed, and their image regions
drawn on the referenced image by the workstation's one AI overlay."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest

from medviewer.workstation.sr_reports import SrReports, find_sr_reports, finding_text
from tests.conftest import pydicom_test_file
from tests.vendor_sr import write_vendor_sr


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A folder with CT_small, our SR of it (the shipped model, regions of every positive label) and a vendor's SR."""
    from medviewer.export.dicom_ai import DicomResultWriter
    from medviewer.imaging.pipeline import display_image
    from medviewer.inference import open_session
    from medviewer.inference.registry import default_model
    from medviewer.io import read_instance

    d = tmp_path_factory.mktemp("study")
    src = pydicom_test_file("CT_small.dcm")
    shutil.copy(src, d / "ct.dcm")
    session = open_session(default_model(), "cpu")
    inst = read_instance(src)
    pred = session.predict([display_image(inst)], [inst.pixel_spacing], regions=session.card.positive_labels)[0]
    assert pred.regions  # the test needs something to draw
    DicomResultWriter(d / "ours", session.card).write(pydicom.dcmread(src, stop_before_pixels=True), pred)
    ct = pydicom.dcmread(src)
    write_vendor_sr(ct, d / "vendor.dcm")
    (d / "notes.txt").write_text("not DICOM")
    return d, ct, pred


def test_reports_found_and_regions_on_the_referenced_image(study):
    d, ct, pred = study
    reports = find_sr_reports([d])
    assert sorted(r.manufacturer for r in reports) == ["MedViewer", "Other Vendor"]
    srs = SrReports()
    assert len(srs.add(reports)) == 2 and srs.add(reports) == []  # a report is added once
    regions = srs.regions(str(ct.SOPInstanceUID), 0)
    ours = [r for r in regions if r.label != "Nodule"]
    assert len(ours) == len(pred.regions)
    for got, want in zip(sorted(ours, key=lambda r: r.bbox), sorted(pred.regions, key=lambda r: tuple(r.bbox)),
                         strict=True):
        assert got.label == want.label
        assert np.abs(np.subtract(got.bbox, want.bbox)).max() <= 1, (got.bbox, want.bbox)
    (circle,) = [r for r in regions if r.label == "Nodule"]  # the 3-D point is listed, not drawn
    x0, y0, x1, y1 = circle.bbox
    assert (x0, y0) == (53, 43) and (x1, y1) == (66 + 1, 56 + 1)  # centre (60, 50) radius 6, minus 0.5
    assert srs.regions("1.2.3", 0) == [] and srs.overlay_prediction("1.2.3", 0) is None  # another image
    vendor = next(r for r in reports if r.manufacturer == "Other Vendor")
    assert [finding_text(f) for f in vendor.findings][0] == "Nodule (nodule 1) [CIRCLE]: Diameter 6"


def test_gui_lists_findings_and_draws_regions(study, qtbot, tmp_path):
    pytest.importorskip("pytestqt")
    from PySide6.QtCore import QSettings

    from medviewer.gui.main_window import MainWindow
    from medviewer.gui.settings import Settings

    d, ct, pred = study
    win = MainWindow(Settings(QSettings(str(tmp_path / "mv.ini"), QSettings.IniFormat)), provider="cpu",
                     interactive=False)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.models_ready, timeout=30000)
    win.panel.auto_run.setChecked(False)
    win.open_paths([str(d)])
    qtbot.waitUntil(lambda: win.active.has_image() and not win.loader.scanning and len(win.sr_reports) == 2,
                    timeout=30000)
    texts = [win.sr_panel.list.item(i).text() for i in range(win.sr_panel.list.count())]
    assert any("Other Vendor" in t for t in texts) and any("Nodule (nodule 1)" in t for t in texts)
    assert win.prediction_for(win.active) is None  # no model run: the regions come from the reports
    ai = win.active.ai
    assert ai is not None and not ai.heatmap_on
    assert len(ai.prediction.regions) == len(pred.regions) + 1
    drawn = win.active.render_image(overlays=True)
    win.ai_view.update_layers()
    assert win.active.ai is not None  # kept when the AI layers are redrawn
    win.active.set_ai(None)
    assert drawn != win.active.render_image(overlays=True)  # the outlines were drawn
    win.close()
