"""The PACS dialog shows the PACS client's warnings instead of dropping them (pytest-qt, offscreen): a PACS
that ignores the modality key, a C-GET that ends with failed sub-operations. The dialog is a view of the
Qt-free PacsBrowser; peers are pynetdicom SCPs on 127.0.0.1."""

from __future__ import annotations

import pytest

from tests.test_pacs_browser import partial_get_scp  # noqa: F401 - fixture
from tests.test_pacs_defects import audit_dir, careless_find_scp  # noqa: F401 - fixtures

pytest.importorskip("pytestqt", reason="pytest-qt is not installed")


def test_dialog_shows_the_notes_of_a_search_and_of_a_partial_retrieval(
        careless_find_scp, partial_get_scp, audit_dir, tmp_path, qtbot):  # noqa: F811 - fixtures
    from medviewer.gui.pacs_dialog import PacsDialog

    find_port, _received, studies = careless_find_scp
    get_port, get_study, _uids = partial_get_scp
    dlg = PacsDialog()
    qtbot.addWidget(dlg)
    dlg.show()
    assert not dlg.notes.isVisible()

    dlg.node.setEditText(f"dicom://PEER@127.0.0.1:{find_port}")
    dlg.modality.setText("MR")
    dlg.search()
    qtbot.waitUntil(lambda: not dlg.busy, timeout=20000)
    assert dlg.table.rowCount() == 2 and dlg.status.text() == "2 studies"
    assert str(studies[0].StudyInstanceUID) not in {m["StudyInstanceUID"] for m in dlg.matches}
    assert dlg.notes.isVisible() and "the PACS ignored the modality key: 1 of 3" in dlg.notes.text()
    assert dlg.notes.text().count("⚠") == 2 and dlg.notes.text() == "\n".join(f"⚠ {n}" for n in dlg.browser.notes)

    # a partial C-GET: the B000 note and the missing count, and no studyRetrieved
    from PySide6.QtWidgets import QTableWidgetItem

    dlg.node.setEditText(f"dicom://PARTIAL@127.0.0.1:{get_port}")
    dlg.browser.matches = [type(dlg.browser.matches[0])(get_study)]
    dlg.table.setRowCount(1)
    dlg.table.setItem(0, 0, QTableWidgetItem(get_study))
    dlg.table.selectRow(0)
    dlg.out_dir.setText(str(tmp_path))
    retrieved = []
    dlg.studyRetrieved.connect(retrieved.append)
    dlg.retrieve()
    assert not dlg.notes.isVisible()  # the search's warnings withdrawn when the next operation starts
    qtbot.waitUntil(lambda: not dlg.busy, timeout=30000)
    assert dlg.status.text().startswith("Partial: 2 of 6 instances missing")
    text = dlg.notes.text()
    assert dlg.notes.isVisible() and "C-GET of series" in text and "2 failed" in text, text
    assert "2 of 6 instances the PACS lists did not arrive" in text
    assert retrieved == [] and dlg.progress.value() == 4

    # a failure: status line, no stale warnings
    dlg.node.setEditText("dicom://A@no-such-host.invalid:104")
    dlg.echo()
    qtbot.waitUntil(lambda: not dlg.busy, timeout=20000)
    assert dlg.status.text().startswith("Echo failed:") and "\n" not in dlg.status.text()
    assert not dlg.notes.isVisible()
