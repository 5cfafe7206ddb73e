"""The workstation's open path over the hostile corpus (issue 14), under pytest-qt, offscreen.

Every case of ``tests/hostile.py`` is opened through :meth:`MainWindow.open_paths` (the loader in
``gui/loading.py``, scan and decoding in worker tasks) into one window: each ends in a one-line error
dialog or the correct image on screen -- never a traceback, a hang or a crash -- and the window stays usable
afterwards. A folder of many bad files gives one dialog listing them. Worker threads import nothing: the
modules they use are imported on the GUI thread before the first worker starts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import REPO, pydicom_test_file
from hostile import Case, build_corpus

pytest.importorskip("pytestqt")
from PySide6.QtCore import QSettings  # noqa: E402
from PySide6.QtWidgets import QApplication, QMessageBox  # noqa: E402

from medviewer.gui.main_window import MainWindow  # noqa: E402
from medviewer.gui.settings import Settings  # noqa: E402

CASE_TIMEOUT_MS = 20_000
#: one case per category, and the ones that once fooled or crashed the GUI
FAST_CASES = {"control_ct", "control_j2k", "ct_cut_70", "jpeg_ll_top_third", "ct_flip_00", "bits_allocated_0",
              "rescale_slope_1e308", "three_centres_one_width", "modality_lut_data_short", "j2k_labelled_jpeg_baseline",
              "blank_white", "png_bomb_100k", "png_cut_in_idat", "fifo", "symlink_loop", "non_utf8_name",
              "huge_declared_size", "sequences_nested_20000_deep"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Case]:
    pydicom_test_file("CT_small.dcm")
    return build_corpus(tmp_path_factory.mktemp("hostile_gui"), seed=14)


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    """Modal error dialogs shown (QMessageBox.critical patched so it does not block)."""
    seen: list[str] = []
    monkeypatch.setattr("medviewer.gui.dialogs.QMessageBox.critical",
                        lambda parent, title, text: seen.append(f"{title}: {text}"))
    return seen


@pytest.fixture
def new_window(qtbot, tmp_path, monkeypatch):
    """A factory of fresh windows (no model: the open path only), each with its own settings file."""
    monkeypatch.setattr("medviewer.inference.registry.find_models", lambda: [])
    monkeypatch.setattr("medviewer.inference.find_models", lambda: [], raising=False)
    count = [0]

    def make() -> MainWindow:
        count[0] += 1
        ini = tmp_path / f"medviewer{count[0]}.ini"
        w = MainWindow(Settings(QSettings(str(ini), QSettings.IniFormat)), provider="cpu")
        qtbot.addWidget(w)
        w.resize(1000, 700)
        w.show()
        qtbot.waitUntil(lambda: w.models_ready, timeout=CASE_TIMEOUT_MS)
        return w

    return make


@pytest.fixture
def win(new_window) -> MainWindow:
    return new_window()


def _settled(win: MainWindow, n_errors: int) -> bool:
    if win.loader.scanning or not win.is_idle() or win.loader._decode_timer.isActive():
        return False
    return len(win.errors) > n_errors or win.active.has_image()


def _open_case(qtbot, win: MainWindow, errors: list[str], case: Case) -> str | None:
    """Open ``case`` in ``win``; None when it ended correctly, else what went wrong."""
    n_errors, n_dialogs = len(win.errors), len(errors)
    t0 = time.perf_counter()
    win.open_paths([str(case.path)])
    try:
        qtbot.waitUntil(lambda: _settled(win, n_errors), timeout=CASE_TIMEOUT_MS)
    except AssertionError:
        return f"no image and no error within {CASE_TIMEOUT_MS / 1000:.0f} s (a hang)"
    qtbot.wait(20)  # let a late second report arrive, if there were one
    seconds = time.perf_counter() - t0
    new = win.errors[n_errors:]
    src = win.active.source
    # a case that repeats an open SOP Instance UID (a byte copy, a bit flip outside the UIDs) or joins an open
    # series is shown in that series: the case's file, or the instance its UID names, is in what is shown
    in_source = src is not None and any(str(i.path) == str(case.path) for i in src.instances)
    same_uid = src is not None and any(i.sop_instance_uid == _sop_uid(case) for i in src.instances)
    shows_case = win.active.has_image() and (in_source or same_uid)
    if len(new) > 1:
        return f"{len(new)} error reports for one file: {new}"
    if new and ("\n" in new[0] or len(errors) - n_dialogs != 1):
        return f"not one one-line dialog: {new} / {errors[n_dialogs:]}"
    if new and "Traceback" in new[0]:
        return f"traceback in the dialog: {new[0]}"
    if case.expect == "ok" and (new or not shows_case):
        return (f"a good file was not shown: {new}; shown: {win.active.has_image()} "
                f"{[i.path.name for i in src.instances] if src is not None else None}")
    if case.expect == "error" and not (case.category == "blank" and shows_case):
        # a blank (constant) image is shown as it is -- blank -- which is no lie; scoring it is what must
        # not happen (infer refuses it; see the report on the workstation's AI path)
        if not new:
            return "shown without an error, but must be refused"
        if case.needle and case.stage == "header" and case.needle not in new[0]:
            return f"the dialog does not name the cause ({case.needle!r}): {new[0]}"
    if not new and not shows_case:
        return f"neither an error nor the image (status: {win.status_msg.text()!r}, viewport: {win.active.message!r})"
    if seconds > 10:
        return f"took {seconds:.1f} s"
    return None


def _sop_uid(case: Case) -> str | None:
    if case.special:  # never open a FIFO or a device
        return None
    try:
        import pydicom

        return str(pydicom.dcmread(case.path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"],
                                   force=True).SOPInstanceUID)
    except Exception:
        return None


def _window_still_usable(qtbot, win: MainWindow) -> str | None:
    """None when the window still opens and shows a good image (another study) and takes a preset."""
    n = len(win.errors)
    win.open_paths([str(pydicom_test_file("MR_small.dcm"))])
    try:
        qtbot.waitUntil(lambda: _settled(win, n) and win.active.has_image(), timeout=CASE_TIMEOUT_MS)
    except AssertionError:
        return "the window no longer opens a good file"
    if len(win.errors) != n or win.active.current_instance().modality != "MR":
        return f"the window no longer shows a good file: {win.errors[n:]}"
    win.active.set_window(123.0, 45.0)
    return None if (win.active.state.center_w, win.active.state.width_w) == (123.0, 45.0) else "window/level stuck"


def _run(qtbot, new_window, errors, cases) -> None:
    """Each case in a fresh window (what a window shows is then the case's doing), then a good study in the
    same window."""
    failures = []
    for case in cases:
        win = new_window()
        problem = _open_case(qtbot, win, errors, case) or _window_still_usable(qtbot, win)
        if problem:
            failures.append(f"{case.category}/{case.name}: {problem}")
        win.close()
    assert not failures, "\n".join(failures)


def test_open_path_over_one_case_per_category(qtbot, new_window, errors, corpus, capfd):
    cases = [c for c in corpus if c.name in FAST_CASES]
    assert len(cases) == len(FAST_CASES) and {c.category for c in cases} == {c.category for c in corpus}
    _run(qtbot, new_window, errors, cases)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err[-3000:]


@pytest.mark.slow
def test_open_path_over_the_whole_corpus(qtbot, new_window, errors, corpus, capfd):
    _run(qtbot, new_window, errors, corpus)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err[-3000:]


def test_a_folder_of_bad_files_gives_one_dialog_listing_them(qtbot, win, errors, corpus, tmp_path):
    bad = [c for c in corpus if c.expect == "error" and c.stage == "header" and not c.special][:12]
    folder = tmp_path / "bad"
    folder.mkdir()
    for c in bad:
        (folder / c.path.name).write_bytes(c.path.read_bytes())
    win.open_paths([str(folder)])
    qtbot.waitUntil(lambda: _settled(win, 0) and win.loader.batch_dialog is not None, timeout=CASE_TIMEOUT_MS)
    qtbot.wait(100)
    box = win.loader.batch_dialog
    assert errors == [] and len(win.errors) == 1  # no modal dialog per file: one batch dialog
    assert box.isVisible() and box.icon() == QMessageBox.Critical
    assert box.text().startswith(f"{folder}: no readable image; {len(bad)} files could not be opened")
    lines = box.detailedText().splitlines()
    assert len(lines) == len(bad) and {ln.split(": ", 1)[0] for ln in lines} == {str(folder / c.path.name) for c in bad}
    box.close()
    # good and bad files together: the image is shown, the skipped files listed once, as a warning
    (folder / "ct.dcm").write_bytes(pydicom_test_file("CT_small.dcm").read_bytes())
    win.open_paths([str(folder)])
    qtbot.waitUntil(lambda: _settled(win, 1) and win.active.has_image(), timeout=CASE_TIMEOUT_MS)
    box = win.loader.batch_dialog
    assert len(win.errors) == 1 and errors == [] and len(win.loader.warnings) == 1
    assert box.icon() == QMessageBox.Warning and len(box.detailedText().splitlines()) == len(bad)
    assert [w for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox) and w.isVisible()] == [box]
    assert _window_still_usable(qtbot, win) is None


def test_several_series_failing_to_decode_give_one_dialog(qtbot, win, errors, corpus, tmp_path):
    """Two series in two viewports whose frames cannot be decoded: one dialog listing both."""
    import pydicom

    win.set_layout("1x2")
    paths = []
    for k, name in enumerate(("modality_lut_data_short", "modality_lut_bits_7")):
        case = next(c for c in corpus if c.name == name)
        ds = pydicom.dcmread(case.path)
        ds.SeriesInstanceUID = f"{ds.SeriesInstanceUID}.{k + 1}"  # two series, two viewports
        paths.append(tmp_path / case.path.name)
        ds.save_as(paths[-1], enforce_file_format=False)
    win.open_paths([str(p) for p in paths])
    qtbot.waitUntil(lambda: _settled(win, 0) and bool(win.errors), timeout=CASE_TIMEOUT_MS)
    qtbot.wait(DECODE_WAIT_MS)
    shown = [v for v in win.viewports if v.isVisible() and v.source is not None]
    assert len(shown) == 2 and errors == [] and len(win.errors) == 1
    box = win.loader.batch_dialog
    assert box.text().startswith("2 images could not be decoded") and len(box.detailedText().splitlines()) == 2
    assert all("Modality LUT" in ln for ln in box.detailedText().splitlines())


DECODE_WAIT_MS = 500


# --------------------------------------------------------------------------- imports in worker threads
_PROBE = textwrap.dedent("""
    import json, os, sys, threading
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    from pydicom.data import get_testdata_file
    from medviewer.gui.workers import warm_imports
    warmed = warm_imports()
    worker_imports, errors = [], []

    class Spy:  # records every import a thread other than the main one asks for
        def find_spec(self, name, path=None, target=None):
            if threading.current_thread() is not threading.main_thread():
                worker_imports.append(name)
            return None

    sys.meta_path.insert(0, Spy())
    barrier = threading.Barrier(4)

    def job(fn):
        def run():
            barrier.wait()
            try:
                fn()
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
        return run

    files = {n: get_testdata_file(n, download=False) for n in ("CT_small.dcm", "RG1_UNCR.dcm", "JPEG2000.dcm")}

    def scan_it():
        from medviewer.io import scan
        scan([files["CT_small.dcm"]])

    def models():
        from medviewer.inference import find_models
        find_models()

    def infer():
        from medviewer.imaging import display_image
        from medviewer.inference import default_model, open_session
        from medviewer.io import read_instance
        image = display_image(read_instance(files["RG1_UNCR.dcm"]))
        open_session(default_model(), "cpu").predict([image])

    def decode():
        from medviewer.imaging import display_image
        from medviewer.io import read_instance
        display_image(read_instance(files["JPEG2000.dcm"]))

    threads = [threading.Thread(target=job(f)) for f in (scan_it, models, infer, decode)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"warm_s": warmed, "errors": errors, "imports": sorted(set(worker_imports))}))
""")


def test_workers_started_together_import_nothing(tmp_path):
    """Three fresh interpreters each start the four kinds of worker at the same instant after
    :func:`warm_imports`: no import error, and no worker thread imports a module at all."""
    pydicom_test_file("RG1_UNCR.dcm")
    for _ in range(3):
        proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-2000:]
        doc = json.loads(proc.stdout.strip().splitlines()[-1])
        assert doc["errors"] == [] and doc["imports"] == [], doc
