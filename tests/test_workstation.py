"""The Qt-free workstation layer without a window: reading session, AI controller, model choice, policies.

Real files only: the shipped model ``pneumonia-cxr``, the paediatric demo CR, pydicom-data's adult chest CR
(RG1_UNCR.dcm), pydicom's CT_small.dcm and the shared 134-slice CT (skipped when ../shared is absent).
"""

from __future__ import annotations

import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import pydicom_test_file
from onnx_models import make_package

from medviewer.errors import MedViewerError
from medviewer.inference import DEFAULT_MODEL_NAME, ModelPackage, default_model, open_session
from medviewer.io import read_instance, scan
from medviewer.resources import demo_dir
from medviewer.workstation.ai import AiController, choose_package
from medviewer.workstation.frames import FrameSource, frame_identity
from medviewer.workstation.session import PredictionKey, ReadingSession

TIMEOUT = 120


def _paediatric() -> Path:
    p = demo_dir() / "paediatric-cxr-pneumonia.dcm"
    if not p.is_file():
        pytest.skip(f"the paediatric demo study is not available ({p})")
    return p


def _source(path: Path) -> FrameSource:
    return FrameSource([read_instance(path)])


def _ready(ai: AiController) -> AiController:
    ai.load_models().result(timeout=TIMEOUT)
    assert ai.package is not None
    return ai


def _recorder(ai: AiController) -> dict[str, list]:
    seen: dict[str, list] = {"prediction_ready": [], "failed": [], "cancelled": [], "finished": [], "started": []}
    for name, got in seen.items():
        getattr(ai.events, name).connect(lambda *a, got=got: got.append(a))
    return seen


def test_the_layer_imports_neither_qt_nor_torch():
    import subprocess

    code = ("import sys; import medviewer.workstation.ai, medviewer.workstation.session, medviewer.workstation.frames; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'torch', 'training')]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_model_choice_policy(tmp_path):
    a = ModelPackage.load(make_package(tmp_path / "a", name="alpha"))
    b = ModelPackage.load(make_package(tmp_path / "b", name="beta"))
    shipped = default_model()
    assert shipped.card.name == DEFAULT_MODEL_NAME
    assert choose_package([a, shipped, b]) is shipped  # the default model by name
    assert choose_package([a, b]) is a  # else the first found
    assert choose_package([a, shipped, b], saved="beta") is b  # the reader's last choice, by name
    assert choose_package([a, shipped, b], saved=str(b.path)) is b  # or by path
    assert choose_package([a, shipped, b], requested=a, saved="beta") is a  # --model wins
    assert choose_package([a, shipped], saved="gone") is shipped
    assert choose_package([]) is None


def test_load_models_selects_the_default_and_reports_a_bad_request(tmp_path):
    ai = AiController(provider="cpu")
    changed: list = []
    ai.events.model_changed.connect(changed.append)
    _ready(ai)
    assert ai.package.card.name == DEFAULT_MODEL_NAME and changed[-1] is ai.package and ai.models_ready
    loaded: list = []
    ai.events.models_loaded.connect(lambda pkgs, pick, err: loaded.append((pkgs, pick, err)))
    ai.load_models(select=str(tmp_path / "no-such-model")).result(timeout=TIMEOUT)
    pkgs, pick, err = loaded[-1]
    assert err and "no-such-model" in err and "\n" not in err
    assert pick is not None and pick.card.name == DEFAULT_MODEL_NAME  # the others stay usable
    custom = make_package(tmp_path / "custom", name="custom-cam")
    ai.load_models(select=str(custom)).result(timeout=TIMEOUT)
    assert ai.package.card.name == "custom-cam" and any(p.card.name == "custom-cam" for p in ai.packages)


def test_run_keeps_the_result_keyed_by_sop_instance_frame_and_model_sha(tmp_path):
    path = _paediatric()
    reading = ReadingSession()
    ai = _ready(AiController(reading, provider="cpu"))
    seen = _recorder(ai)
    src = _source(path)
    job = ai.run(src, 0)
    entry = job.future.result(timeout=TIMEOUT)
    inst = src.instance(0)
    assert job.key == PredictionKey(inst.sop_instance_uid, 0, ai.package.sha256)
    assert reading.prediction(job.key) is entry and ai.result(src, 0) is entry
    assert entry.prediction.applicability["status"] == "in_scope" and entry.prediction.flagged == ["pneumonia"]
    assert entry.provider == "CPUExecutionProvider" and entry.summary().startswith(f"{DEFAULT_MODEL_NAME}: flagged pneumonia (P=0.")
    assert [e[0] for e in seen["prediction_ready"]] == [entry] and len(seen["finished"]) == 1
    assert not ai.busy and not seen["failed"] and not seen["cancelled"]
    # the same image in another source (another viewport, a reopened series) finds the cached result
    assert ai.result(_source(path), 0) is entry
    # another model's weights never see this result: the key holds the model's SHA-256
    other = ModelPackage.load(make_package(tmp_path / "other", name="other-cam", labels=("NORMAL", "PNEUMONIA")))
    ai.select(other)
    assert ai.key(src, 0).model_sha256 == other.sha256 != job.key.model_sha256
    assert ai.result(src, 0) is None
    entry2 = ai.run(src, 0).future.result(timeout=TIMEOUT)
    assert entry2.package is other and set(entry2.prediction.scores) == {"NORMAL", "PNEUMONIA"}
    ai.select(str(ai.packages[0].path) if ai.packages[0].card.name == DEFAULT_MODEL_NAME else entry.package)
    assert ai.result(src, 0) is entry  # back to the first model: its result again, not re-run
    assert len(reading.predictions()) == 2
    ai.shutdown()


def test_one_session_cache_for_every_front_end():
    a = _ready(AiController(provider="cpu"))
    b = _ready(AiController(provider="cpu"))
    assert a.session() is b.session() is open_session(a.package, "cpu")
    assert a.session().provider == "CPUExecutionProvider"
    with pytest.raises(MedViewerError, match="no model selected"):
        AiController().session()


def test_cancel_drops_the_result(monkeypatch):
    """A run cancelled while the network runs finishes in the background; its result is never kept."""
    from medviewer.inference.session import Session

    path = _paediatric()
    reading = ReadingSession()
    ai = _ready(AiController(reading, provider="cpu"))
    seen = _recorder(ai)
    entered, release = threading.Event(), threading.Event()
    real_predict = Session.predict

    def slow(self, *a, **k):
        entered.set()
        assert release.wait(TIMEOUT)
        return real_predict(self, *a, **k)

    monkeypatch.setattr(Session, "predict", slow)
    src = _source(path)
    job = ai.run(src, 0)
    assert entered.wait(TIMEOUT) and ai.busy
    assert ai.cancel() and job.cancelled and not ai.busy
    assert not ai.cancel()  # nothing left to cancel
    release.set()
    assert job.future.result(timeout=TIMEOUT) is None
    assert ai.wait(TIMEOUT) and not ai.pending()
    assert reading.prediction(job.key) is None and ai.result(src, 0) is None
    assert not seen["prediction_ready"] and not seen["failed"]
    assert [c[0] for c in seen["cancelled"]] == [job] and [f[0] for f in seen["finished"]] == [job]
    # a new run replaces (cancels) the one under way
    entered.clear()
    release.clear()
    first = ai.run(src, 0)
    assert entered.wait(TIMEOUT)
    second = ai.run(src, 0)
    assert first.cancelled and not second.cancelled and ai.job is second
    release.set()
    assert first.future.result(timeout=TIMEOUT) is None
    entry = second.future.result(timeout=TIMEOUT)
    assert entry is not None and reading.prediction(second.key) is entry
    ai.shutdown()


def test_failure_is_one_line_and_the_controller_goes_on(monkeypatch):
    from medviewer.errors import InferenceError
    from medviewer.inference.session import Session

    ai = _ready(AiController(provider="cpu"))
    seen = _recorder(ai)
    src = _source(_paediatric())

    def broken(self, *a, **k):
        raise InferenceError("pneumonia-cxr: inference failed on CPUExecutionProvider (out of memory)")

    monkeypatch.setattr(Session, "predict", broken)
    job = ai.run(src, 0)
    with pytest.raises(InferenceError):
        job.future.result(timeout=TIMEOUT)
    assert seen["failed"] and seen["failed"][0][0] is job and "out of memory" in seen["failed"][0][1]
    assert not ai.busy and ai.result(src, 0) is None
    monkeypatch.undo()
    assert ai.run(src, 0).future.result(timeout=TIMEOUT) is not None
    ai.shutdown()


def test_a_blank_image_is_refused_not_scored(tmp_path):
    """A constant (blank white) CR is refused with one line, as ``medviewer infer`` refuses it: never scored."""
    import pydicom

    ds = pydicom.dcmread(_paediatric())
    ds.PixelData = b"\xff" * len(ds.PixelData)
    blank = tmp_path / "blank.dcm"
    ds.save_as(blank)
    ai = _ready(AiController(provider="cpu"))
    seen = _recorder(ai)
    src = _source(blank)
    job = ai.run(src, 0)
    with pytest.raises(MedViewerError):
        job.future.result(timeout=TIMEOUT)
    assert seen["failed"] and "constant" in seen["failed"][0][1] and "\n" not in seen["failed"][0][1]
    assert ai.result(src, 0) is None
    (outcome,) = ai.score([read_instance(blank)], batch_size=1)
    assert not outcome.ok and "constant" in outcome.error
    ai.shutdown()


def test_auto_run_gate_from_the_model_card():
    """Run on open: a chest X-ray model is not run on a CT slice by itself; on a CR it is, once per image."""
    ai = _ready(AiController(provider="cpu"))
    ct = _source(pydicom_test_file("CT_small.dcm"))
    run, reason = ai.auto_run_check(ct, 0)
    assert not run and "CT" in reason
    assert ai.auto_run_check(ct, 0) is None  # decided once per image and model
    cr = _source(pydicom_test_file("RG1_UNCR.dcm"))
    assert ai.auto_run_check(cr, 0) == (True, None)
    assert ai.auto_run_check(cr, 0) is None
    # an image that already has a result needs no decision
    paed = _source(_paediatric())
    ai.run(paed, 0).future.result(timeout=TIMEOUT)
    assert ai.auto_run_check(paed, 0) is None
    # an adult CR is run on open (the modality fits) and its result is then out of scope, with the reason
    entry = ai.run(cr, 0).future.result(timeout=TIMEOUT)
    app = entry.prediction.applicability
    assert app["status"] == "out_of_scope" and entry.prediction.flagged == []
    assert entry.summary().startswith(f"{DEFAULT_MODEL_NAME}: outside intended use: ") and "age" in entry.summary()
    ai.shutdown()


def test_score_runs_the_same_policy_as_run():
    """``medviewer infer``'s path (score) and the workstation's (run) give the same result for the same image."""
    ai = _ready(AiController(provider="cpu"))
    path = pydicom_test_file("RG1_UNCR.dcm")
    (outcome,) = ai.score([read_instance(path)], batch_size=1)
    entry = ai.run(_source(path), 0).future.result(timeout=TIMEOUT)
    assert outcome.ok and outcome.prediction.applicability == entry.prediction.applicability
    assert outcome.prediction.scores == pytest.approx(entry.prediction.scores, abs=1e-6)
    assert outcome.prediction.flagged == entry.prediction.flagged == []
    ai.shutdown()


def test_gui_controller_and_medviewer_infer_decide_alike_on_real_files(tmp_path):
    """The workstation's AiController (what the GUI runs) and the ``medviewer infer`` command give the same
    scores, flagged findings and intended-use decision for the same real files with the shipped model: the
    paediatric demo CR is in scope and flagged, the adult CR (age) and the CT slice (modality) are out of
    scope with nothing flagged."""
    import json

    from medviewer.cli import main

    files = {"paediatric": _paediatric(), "adult": Path(pydicom_test_file("RG1_UNCR.dcm")),
             "ct": Path(pydicom_test_file("CT_small.dcm"))}
    out = tmp_path / "out"
    assert main(["infer", *map(str, files.values()), "--out", str(out), "--provider", "cpu", "--quiet"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["model"]["name"] == DEFAULT_MODEL_NAME
    by_path = {Path(r["path"]).resolve(): r for r in doc["results"]}
    ai = _ready(AiController(ReadingSession(), provider="cpu"))
    try:
        gui = {name: ai.run(_source(path), 0).future.result(timeout=TIMEOUT) for name, path in files.items()}
    finally:
        ai.shutdown()
    assert doc["model"]["sha256"] == ai.package.card.sha256
    for name, path in files.items():
        cli, entry = by_path[path.resolve()], gui[name]
        pred = entry.prediction
        assert cli["error"] is None, (name, cli["error"])
        assert cli["scores"] == pytest.approx(pred.scores, abs=1e-5), name
        assert cli["flagged"] == list(pred.flagged), name
        assert cli["applicability"]["status"] == pred.applicability["status"], name
        assert cli["applicability"].get("reasons") == pred.applicability.get("reasons"), name
    status = {name: gui[name].prediction.applicability["status"] for name in files}
    assert status == {"paediatric": "in_scope", "adult": "out_of_scope", "ct": "out_of_scope"}
    assert gui["paediatric"].prediction.flagged == ["pneumonia"]
    assert gui["adult"].prediction.flagged == gui["ct"].prediction.flagged == []
    assert any("age" in r for r in gui["adult"].prediction.applicability["reasons"])
    assert any("CT" in r for r in gui["ct"].prediction.applicability["reasons"])


def test_measurements_are_the_sessions_and_announced():
    """Measurements by frame change only through add/remove, which emit the session's events (what every
    viewport showing the frame observes); reads are copies."""
    reading = ReadingSession()
    seen: list[tuple] = []
    reading.events.measurement_added.connect(lambda uid, m: seen.append(("added", uid, m)))
    reading.events.measurement_removed.connect(lambda uid, m: seen.append(("removed", uid, m)))
    a, b, c = object(), object(), object()
    reading.measurements.add(("ct", 0), a)
    reading.measurements.add(("ct", 0), b)
    reading.measurements.add(("ct", 3), c)
    assert seen == [("added", ("ct", 0), a), ("added", ("ct", 0), b), ("added", ("ct", 3), c)]
    assert reading.measurements[("ct", 0)] == [a, b] and len(reading.measurements) == 2
    reading.measurements[("ct", 0)].append(c)  # a copy: the session is not changed behind its events
    assert reading.measurements[("ct", 0)] == [a, b]
    seen.clear()
    assert reading.measurements.remove(("ct", 0), b) == [b] and reading.measurements[("ct", 0)] == [a]
    assert reading.measurements.remove(("ct", 0)) == [a] and ("ct", 0) not in reading.measurements
    assert reading.measurements.remove(("ct", 0)) == [] and reading.measurements.get(("ct", 0)) is None
    assert seen == [("removed", ("ct", 0), b), ("removed", ("ct", 0), a)]
    assert list(reading.measurements) == [("ct", 3)]
    thumbs = []
    reading.events.thumbnail_added.connect(lambda key, img: thumbs.append((key, img.shape)))
    reading.set_thumbnail("ct", np.zeros((72, 60), np.uint8))
    assert thumbs == [("ct", (72, 60))] and reading.thumbnails["ct"].shape == (72, 60)


def test_reading_session_preview_then_full_series(ct_series_dir, tmp_path):
    """The first file is shown while the folder is scanned; the full series takes over its decoded pixels."""
    reading = ReadingSession()
    events: list[tuple] = []
    reading.events.preview_added.connect(lambda key, src: events.append(("preview", key, len(src))))
    reading.events.series_added.connect(lambda key, src: events.append(("series", key, len(src))))
    reading.events.study_opened.connect(lambda st: events.append(("study", st.study_instance_uid)))
    previews = []
    res = scan(ct_series_dir, on_first=lambda inst: previews.append(reading.preview(inst)))
    (key, pre), = previews
    assert pre.n_cached() == 1 and len(pre) == 1 and reading.source(key) is pre
    keys = reading.add_scan(res)
    full = reading.sources[key]
    assert keys == [key] and len(full) == 134 and key not in reading.previews and reading.source(key) is full
    k = full.index_of(pre.instance(0))
    assert k == 0 and full.cached(k) is pre.cached(0)  # adopted: not decoded again
    assert full.n_cached() == 1
    assert [e[0] for e in events] == ["preview", "study", "series"]
    assert reading.add_scan(scan(ct_series_dir)) == []  # opened again: nothing new
    # a preview of an already open series is that series
    assert reading.preview(read_instance(next(ct_series_dir.glob("*.dcm"))))[1] is full


def test_more_files_of_an_open_series_join_it_in_slice_order(ct_series_dir):
    """Opening a file of a series that is already open adds it to that series (ordered by position, decoded
    pixels kept) instead of showing the open series without it."""
    reading = ReadingSession()
    files = sorted(ct_series_dir.glob("*.dcm"))
    (key,) = reading.add_scan(scan(files[:5]))
    first = reading.sources[key]
    first.decode(0)
    assert reading.add_scan(scan([files[60]])) == [key]
    merged = reading.sources[key]
    assert merged is not first and len(merged) == 6
    assert {i.path.name for i in merged.instances} == {f.name for f in files[:5]} | {files[60].name}
    z = [float(i.image_position_patient[2]) for i in merged.instances]
    assert z == sorted(z) or z == sorted(z, reverse=True)  # the new slice sits at its position
    assert merged.cached(merged.index_of(first.instance(0))) is first.cached(0)
    assert reading.add_scan(scan([files[60]])) == [] and reading.sources[key] is merged


def test_frame_identity_and_adopt_on_multiframe():
    path = pydicom_test_file("emri_small.dcm")  # MR, 10 frames
    a, b = _source(path), _source(path)
    assert len(a) == 10 and frame_identity(a, 3) == (a.instance(3).sop_instance_uid, 3)
    a.decode(3)
    assert b.adopt(a) == 1 and b.cached(3) is a.cached(3) and b.cached(2) is None
    assert np.array_equal(b.decode(3), read_instance(path).stored_pixels(3))


def test_scan_on_first_is_reused_not_read_twice(tmp_path, monkeypatch):
    import medviewer.io  # noqa: F401 - the package's ``scan`` function shadows its module

    scan_mod = sys.modules["medviewer.io.scan"]
    d = tmp_path / "s"
    d.mkdir()
    (d / "0-notes.txt").write_text("not an image")
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(pydicom_test_file(name), d / name)
    reads: list[str] = []
    real = scan_mod.read_instance
    monkeypatch.setattr(scan_mod, "read_instance", lambda p: (reads.append(Path(p).name), real(p))[1])
    firsts = []
    res = scan_mod.scan(d, on_first=firsts.append)
    assert [f.path.name for f in firsts] == ["CT_small.dcm"]  # the text file is skipped, the next one shown
    assert sorted(reads) == sorted(["0-notes.txt", "CT_small.dcm", "MR_small.dcm"])  # each file read once
    assert firsts[0] in res.instances and [s.path.name for s in res.skipped] == ["0-notes.txt"]
    firsts.clear()
    scan_mod.scan(d / "CT_small.dcm", on_first=firsts.append)
    assert firsts == []  # one file: nothing to show early


def test_measurements_know_which_series_are_unsaved():
    """A reader's add or remove marks the series unsaved; what a saved state brings or takes back does not;
    mark_saved clears one series."""
    from medviewer.workstation.session import Measurements

    store = Measurements()
    loaded, own = object(), object()
    store.add(("s1", 0), loaded, loaded=True)
    assert store.unsaved_series() == []
    store.add(("s1", 2), own)
    store.remove(("s2", 0))  # nothing there: no change
    assert store.unsaved_series() == ["s1"]
    store.mark_saved("s1")
    store.remove(("s1", 0), loaded, loaded=True)  # a state withdrawn when another is chosen
    assert store.unsaved_series() == []
    store.remove(("s1", 2), own)  # the reader deletes a measurement: that is a change to save too
    store.add(("s2", 1), object())
    assert store.unsaved_series() == ["s1", "s2"]
