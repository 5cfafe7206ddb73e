"""Sessions: provider reporting, probabilities, operating points, batching (medviewer.inference.session)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx_models import cam_model, make_package

from medviewer.errors import InferenceError
from medviewer.inference.card import Task
from medviewer.inference.package import ModelPackage
from medviewer.inference.session import CPU, CUDA, Session, open_session, probabilities


@pytest.fixture
def pkg(tmp_path):
    return ModelPackage.load(make_package(tmp_path / "m"))


def test_cpu_provider_is_reported_without_warning(pkg):
    s = Session(pkg, "cpu")
    assert s.provider == CPU and s.providers == [CPU] and s.provider_short == "cpu"
    assert s.fallback_warning is None and s.notice is None


def test_cuda_request_reports_what_actually_runs(pkg):
    s = Session(pkg, "cuda")
    assert s.provider == s._sess.get_providers()[0]
    if s.provider == CUDA:  # a machine with a working GPU
        assert s.fallback_warning is None
    else:  # onnxruntime-gpu lists CUDA here but it cannot load: a visible warning, not silence
        assert s.provider == CPU
        assert s.fallback_warning.startswith("CUDA was requested but the model runs on the CPU: ")
        assert "\n" not in s.fallback_warning
        assert "MEDVIEWER_DEBUG=1" in s.fallback_warning  # ORT's own log names the missing library


def test_auto_falls_back_quietly_but_says_so_in_notice(pkg):
    s = Session(pkg, "auto")
    assert s.provider in (CUDA, CPU) and s.fallback_warning is None
    assert (s.notice is None) == (s.provider == CUDA or CUDA not in ort.get_available_providers())


def test_cuda_request_on_a_cpu_only_build(pkg, monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    s = Session(pkg, "cuda")
    assert s.provider == CPU and "has no CUDA provider" in s.fallback_warning


def test_unknown_provider(pkg):
    with pytest.raises(InferenceError, match="unknown provider 'tpu'"):
        Session(pkg, "tpu")


def test_open_session_is_created_once(pkg):
    assert open_session(pkg, "cpu") is open_session(pkg, "cpu")
    assert open_session(pkg, "cpu") is not open_session(pkg, "auto")


def test_probabilities():
    z = np.array([[0.0, np.log(3.0)], [10.0, -10.0]])
    np.testing.assert_allclose(probabilities(z, Task.MULTICLASS)[0], [0.25, 0.75])
    np.testing.assert_allclose(probabilities(z, Task.MULTICLASS).sum(axis=1), 1.0)
    np.testing.assert_allclose(probabilities(z, Task.MULTILABEL)[0], [0.5, 0.75])


def _scored(tmp_path, bias, **card_kw):
    d = make_package(tmp_path / f"b{len(list(tmp_path.iterdir()))}", model=cam_model(k=len(bias), bias=bias), **card_kw)
    return Session(ModelPackage.load(d), "cpu").predict([np.zeros((40, 30), np.uint8)])[0]


def test_flagged_at_the_operating_point(tmp_path):
    # an all-black image has no features: the logits are the bias; softmax([0, ln 3]) = [0.25, 0.75]
    p = _scored(tmp_path, [0.0, np.log(3.0)], thresholds={"PNEUMONIA": 0.8})
    assert p.scores == pytest.approx({"NORMAL": 0.25, "PNEUMONIA": 0.75}) and p.flagged == []
    assert p.regions == []
    p = _scored(tmp_path, [0.0, np.log(3.0)], thresholds={"PNEUMONIA": 0.7})
    assert p.flagged == ["PNEUMONIA"] and p.top_label == "PNEUMONIA"


def test_negative_label_is_never_flagged(tmp_path):
    p = _scored(tmp_path, [5.0, 0.0], thresholds={})  # NORMAL wins and has no operating point
    assert p.top_label == "NORMAL" and p.flagged == []
    p = _scored(tmp_path, [0.0, 5.0], thresholds={})  # no operating point: multiclass falls back to argmax
    assert p.flagged == ["PNEUMONIA"]


def test_multilabel_sigmoid_flags_independently(tmp_path):
    p = _scored(tmp_path, [2.0, 0.0, -2.0], labels=("A", "B", "C"), task=Task.MULTILABEL, negative_label=None,
                thresholds={"A": 0.9, "C": 0.1})
    assert p.scores == pytest.approx({"A": 0.8808, "B": 0.5, "C": 0.1192}, abs=1e-4)
    assert p.flagged == ["B", "C"]  # A below its 0.9; B has no operating point (>= 0.5); C above 0.1


def test_fixed_batch_graph_and_batching(tmp_path):
    d = make_package(tmp_path / "fixed", model=cam_model(batch=1))
    s = Session(ModelPackage.load(d), "cpu")
    assert s.fixed_batch == 1
    imgs = [np.full((20 + i, 30), 40 * i, np.uint8) for i in range(5)]
    preds = s.predict(imgs, batch_size=4)
    assert [p.cams.shape[1:] for p in preds] == [(20 + i, 30) for i in range(5)]
    dyn = Session(ModelPackage.load(make_package(tmp_path / "dyn")), "cpu").predict(imgs, batch_size=2)
    for a, b in zip(preds, dyn, strict=True):
        assert a.scores == pytest.approx(b.scores)
    assert all(p.seconds > 0 for p in preds)


def test_regions_selection_and_bad_input(pkg):
    s = Session(pkg, "cpu")
    img = np.zeros((64, 64), np.uint8)
    img[10:20, 30:50] = 255
    assert {r.label for r in s.predict([img], regions="all")[0].regions} == {"PNEUMONIA"}
    assert s.predict([img], regions="none")[0].regions == []
    assert s.predict([img], regions=["NORMAL"])[0].regions == []  # no positive evidence for NORMAL
    with pytest.raises(ValueError, match="unknown labels"):
        s.predict([img], regions=["EFFUSION"])
    with pytest.raises(InferenceError, match="expects the 8-bit display image"):
        s.predict([img.astype(np.float32)])
    with pytest.raises(InferenceError, match="1 images but 2 pixel spacings"):
        s.predict([img], [None, None])


class _FailingCuda:
    """Stands in for a CUDA session on a machine whose GPU fails (creation works, running does not)."""

    def __init__(self, real):
        self.real = real

    def get_providers(self):
        return [CUDA, CPU]

    def get_inputs(self):
        return self.real.get_inputs()

    def run(self, *args):
        raise RuntimeError("CUDA error: out of memory\n(stack trace...)")


def test_cuda_failure_at_run_time_switches_to_cpu_visibly(pkg, monkeypatch):
    from medviewer.inference import _ort

    real = _ort.quiet_session
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(_ort, "quiet_session", lambda m, providers, **kw: _FailingCuda(real(m, [CPU], **kw))
                        if CUDA in providers else real(m, providers, **kw))
    s = Session(pkg, "cuda")
    assert s.provider == CUDA and s.fallback_warning is None
    pred = s.predict([np.zeros((20, 20), np.uint8)])[0]
    assert set(pred.scores) == {"NORMAL", "PNEUMONIA"}
    assert s.provider == CPU and s.providers == [CPU]
    assert s.fallback_warning == ("CUDA was requested but the model runs on the CPU: CUDA failed during inference "
                                  "(CUDA error: out of memory)")


def test_cuda_session_creation_failure_falls_back_with_reason(pkg, monkeypatch, capsys):
    from medviewer.inference import _ort

    real = _ort.quiet_session

    def fake(m, providers, **kw):
        if CUDA in providers:
            raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected ; GPU=0")
        return real(m, providers, **kw)

    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(_ort, "quiet_session", fake)
    s = Session(pkg, "auto")
    assert s.provider == CPU and s.fallback_warning is None
    assert s.notice == ("CUDA not used, running on the CPU: creating the CUDA session failed "
                        "(CUDA failure 100: no CUDA-capable device is detected ; GPU=0)")
    assert capsys.readouterr().out == ""  # no "EP Error" banner on stdout


def test_runtime_imports_neither_torch_nor_qt():
    """The AI runtime, export and CLI modules run where only onnxruntime is installed."""
    import subprocess
    import sys

    code = ("import sys, medviewer.inference as m, medviewer.export, medviewer.cli.infer, medviewer.cli.models\n"
            "[getattr(m, n) for n in m.__all__]\n"
            "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'PySide6', 'training', 'onnx'))\n"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_onnxruntime_loader_noise_is_silenced(pkg, capfd):
    """Asking for CUDA where it cannot load prints nothing from ORT itself (C++ log lines on fd 2)."""
    Session(pkg, "cuda")
    Session(pkg, "auto")
    out, err = capfd.readouterr()
    assert out == "" and err == ""
