"""Malformed input never hangs, crashes, lies or eats the machine (issue 14, the reading side).

The hostile corpus (``tests/hostile.py``, seeded, generated from pydicom's real test files) goes through
``medviewer info``, ``medviewer render`` and ``medviewer infer`` via the real entry point; every case must
end in a one-line error (exit 1) or a correct image (exit 0), never a traceback, a hang or a memory peak.
A ``hypothesis`` layer mutates the pixel-module attributes of a real CT header.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import struct
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from conftest import REPO, pydicom_test_file
from hostile import Case, build_corpus, build_dicomdir_trap

import medviewer.cli as cli
from medviewer.errors import ReadError
from medviewer.imaging import DisplayPipeline, check_not_blank, display_image
from medviewer.io import read_instance, scan
from medviewer.limits import MAX_FRAME_PIXELS_ENV, LimitError, Limits, get_limits

CASE_TIMEOUT_S = 20


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Case]:
    pydicom_test_file("CT_small.dcm")  # skip cleanly when pydicom's test files are absent
    return build_corpus(tmp_path_factory.mktemp("hostile"), seed=14)


class _Hang(Exception):
    pass


def _alarm(signum, frame):  # noqa: ARG001
    raise _Hang(f"no answer within {CASE_TIMEOUT_S} s")


def run_cli(*argv: object, subcommands: tuple[str, ...] = ("info", "render")) -> tuple[object, str, str]:
    """``medviewer.cli.main`` in-process, output captured, with a SIGALRM watchdog: a blocking ``open()``
    of a FIFO is interrupted and reported as a hang instead of stopping the suite."""
    out, err = io.StringIO(), io.StringIO()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_TIMEOUT_S)
    saved = dict(cli.SUBCOMMANDS)
    cli.SUBCOMMANDS.clear()
    cli.SUBCOMMANDS.update({k: saved[k] for k in subcommands})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code: object = cli.main([str(a) for a in argv])
    except _Hang as exc:
        code = f"HANG: {exc}"
    except BaseException as exc:  # anything escaping main() would be a traceback for a user
        code = f"TRACEBACK: {type(exc).__name__}: {exc}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        cli.SUBCOMMANDS.clear()
        cli.SUBCOMMANDS.update(saved)
    return code, out.getvalue(), err.getvalue()


def _judge(case: Case, command: str, code: object, err: str) -> str | None:
    """None when the front end answered `case` correctly, else what went wrong."""
    if isinstance(code, str):
        return code
    if "Traceback" in err:
        return "traceback on stderr"
    errors = [line for line in err.splitlines() if line.startswith("medviewer: error:")]
    others = [line for line in err.splitlines() if not line.startswith(("medviewer: error:", "medviewer: note:"))]
    if others:
        return f"unexpected stderr: {others[:2]}"
    if code not in (0, 1):
        return f"exit {code}"
    must_fail = case.expect == "error" and (command != "info" or case.stage == "header")
    if must_fail and code == 0:
        return "exit 0 on an input that must be refused"
    if case.expect == "ok" and code != 0:
        return f"refused a good input: {err.strip()}"
    if code == 1 and len(errors) != 1:
        return f"exit 1 without exactly one error line: {err.strip()!r}"
    if must_fail and case.needle and case.needle not in errors[0]:
        return f"error does not name the cause ({case.needle!r}): {errors[0]}"
    if command == "render" and case.expect == "ok" and case.needle and case.needle not in err:
        return f"no note about the fallback ({case.needle!r}): {err.strip()!r}"
    return None


def test_corpus_covers_every_category(corpus):
    categories = {c.category for c in corpus}
    assert {"control", "truncation", "bitflip", "lie", "encapsulation", "blank", "raster", "special"} <= categories
    assert sum(c.expect == "error" for c in corpus) >= 45
    assert len({c.path for c in corpus}) == len(corpus)
    # seeded: the same seed writes the same bytes
    flips = [c for c in corpus if c.category == "bitflip"]
    assert len(flips) >= 12


@pytest.mark.parametrize("command", ["info", "render"])
def test_every_hostile_case_ends_in_one_line_error_or_a_correct_image(corpus, command, tmp_path):
    failures = []
    for case in corpus:
        out_png = tmp_path / f"{case.category}__{case.name}.png"
        argv = [command, case.path] + (["--out", out_png] if command == "render" else [])
        code, _out, err = run_cli(*argv)
        problem = _judge(case, command, code, err)
        if problem is None and command == "render" and code == 0:
            written = out_png.read_bytes()
            import cv2

            img = cv2.imdecode(np.frombuffer(written, np.uint8), cv2.IMREAD_UNCHANGED)
            inst = read_instance(case.path)
            if img is None or img.shape[:2] != (inst.rows, inst.columns):
                problem = f"wrote {None if img is None else img.shape}, header says {inst.rows}x{inst.columns}"
            elif int(img.max()) == int(img.min()):
                problem = "exit 0 with a blank image"
        if problem:
            failures.append(f"{case.category}/{case.name}: {problem}")
    assert not failures, "\n".join(failures)


def test_render_of_a_good_file_is_unchanged_by_the_checks(corpus):
    """The controls render exactly what display_image gives (the checks refuse, they never alter)."""
    for case in (c for c in corpus if c.category == "control"):
        inst = read_instance(case.path)
        image = display_image(inst)
        assert check_not_blank(image, case.path) is image
        assert DisplayPipeline.from_instance(inst).notes == []


# --------------------------------------------------------------------------- specific behaviours
def test_fallback_notes_say_what_was_used(corpus):
    by_name = {c.name: c for c in corpus}
    inst = read_instance(by_name["voi_lut_bad_then_good"].path)
    pipeline = DisplayPipeline.from_instance(inst)
    assert len(pipeline.voi_luts) == 1 and "item 1 ignored" in pipeline.notes[0]
    assert pipeline.notes[-1] == "shown with the next valid VOI LUT"
    original = read_instance(pydicom_test_file("vlut_04.dcm"))
    assert np.array_equal(display_image(inst), display_image(original))  # the good LUT, as in the original

    inst = read_instance(by_name["three_centres_one_width"].path)
    pipeline = DisplayPipeline.from_instance(inst)
    assert pipeline.windows == [] and "automatic window" in pipeline.notes[-1]


def test_truncated_jpeg_lossless_is_refused_not_shown_with_black_below(corpus):
    case = next(c for c in corpus if c.name == "jpeg_ll_top_third")
    # pydicom decodes it without a word: top third of the body, the rest black -- what we must not show
    try:
        partial = pydicom.dcmread(case.path).pixel_array
    except Exception:
        partial = None
    if partial is not None:
        assert (partial[-50:] == partial[-1, -1]).all()  # constant bottom: the missing part
    with pytest.raises(ReadError, match="end-of-image"):
        read_instance(case.path)


def test_j2k_labelled_jpeg_baseline_is_refused(corpus):
    case = next(c for c in corpus if c.name == "j2k_labelled_jpeg_baseline")
    with pytest.raises(ReadError, match="JPEG 2000 codestream, not a JPEG stream"):
        read_instance(case.path)


def test_dicomdir_never_leaves_its_folder(tmp_path, monkeypatch):
    study, outside, needles = build_dicomdir_trap(tmp_path)
    opened: list[str] = []
    real_open = os.open

    def spy(path, *args, **kwargs):
        opened.append(os.path.realpath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    result = scan(study)
    monkeypatch.undo()
    assert len(result.instances) == 1 and result.instances[0].modality == "CT"
    reasons = " | ".join(s.reason for s in result.skipped)
    for needle in needles:
        assert needle in reasons, reasons
    assert str(outside.resolve()) not in opened and "/etc/passwd" not in opened
    code, out, err = run_cli("info", study, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert [i["path"] for st in doc["studies"] for se in st["series"] for i in se["instances"]] == \
        [str(result.instances[0].path)]
    assert len(doc["skipped"]) == len(result.skipped) >= 5


def test_permission_denied_is_named(tmp_path, monkeypatch):
    path = tmp_path / "locked.dcm"
    path.write_bytes(pydicom_test_file("CT_small.dcm").read_bytes())
    real_open = os.open

    def deny(p, *args, **kwargs):
        if os.fspath(p) == str(path):
            raise PermissionError(13, "Permission denied", str(p))
        return real_open(p, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)  # as root, mode 000 would not stop us: simulate the refusal
    with pytest.raises(ReadError, match="permission denied"):
        read_instance(path)
    result = scan(tmp_path)
    assert [(s.path.name, s.reason) for s in result.skipped] == [("locked.dcm", "permission denied")]


def test_unreadable_folder_is_listed_under_skipped(tmp_path, monkeypatch):
    good, locked = tmp_path / "good", tmp_path / "locked"
    good.mkdir()
    locked.mkdir()
    (good / "ct.dcm").write_bytes(pydicom_test_file("CT_small.dcm").read_bytes())
    real_scandir = os.scandir

    def scandir(p="."):
        if os.fspath(p) == str(locked):
            raise PermissionError(13, "Permission denied", os.fspath(p))
        return real_scandir(p)

    monkeypatch.setattr(os, "scandir", scandir)
    result = scan(tmp_path)
    assert len(result.instances) == 1
    assert [(s.path, s.reason) for s in result.skipped] == [(locked, "cannot list folder: permission denied")]


def test_info_on_an_empty_folder_is_one_line(tmp_path):
    code, out, err = run_cli("info", tmp_path)
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [f"medviewer: error: {tmp_path}: no files found (empty folder)"]


def test_info_on_a_folder_of_bad_files_says_so(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    code, out, err = run_cli("info", tmp_path)
    assert code == 1 and "notes.txt" in out
    assert err.startswith("medviewer: error: no readable DICOM, PNG or JPEG images (1 file skipped")


def test_non_utf8_file_name_is_printed_escaped(corpus):
    case = next(c for c in corpus if c.name == "non_utf8_name")
    code, out, err = run_cli("info", case.path.parent, "--json")
    assert code == 0, err
    doc = json.loads(out)
    paths = [i["path"] for st in doc["studies"] for se in st["series"] for i in se["instances"]]
    paths += [p for st in doc["studies"] for se in st["series"] for p in se["duplicates"]]  # same SOP as control
    assert any(p.endswith("special__non_utf8_\\xff\\xfe.dcm") for p in paths)
    out.encode("utf-8")  # printable as UTF-8


# --------------------------------------------------------------------------- limits
def test_limits_defaults_and_environment(monkeypatch):
    for name in (MAX_FRAME_PIXELS_ENV,):
        monkeypatch.delenv(name, raising=False)
    assert get_limits() == Limits()
    monkeypatch.setenv(MAX_FRAME_PIXELS_ENV, "10000")
    assert get_limits().max_frame_pixels == 10_000
    with pytest.raises(ReadError, match=f"limit of 10,000 \\({MAX_FRAME_PIXELS_ENV}\\)"):
        read_instance(pydicom_test_file("CT_small.dcm"))  # 128 x 128 = 16,384
    monkeypatch.setenv(MAX_FRAME_PIXELS_ENV, "lots")
    with pytest.raises(LimitError, match=MAX_FRAME_PIXELS_ENV):
        get_limits()
    code, _, err = run_cli("info", pydicom_test_file("CT_small.dcm"))
    assert code == 1 and err.startswith(f"medviewer: error: {MAX_FRAME_PIXELS_ENV}='lots' is not an integer")


def test_frame_budget_arithmetic():
    limits = Limits(max_frame_pixels=100, max_series_pixels=1000)
    assert limits.frame_problem(10, 10) is None
    assert "per frame" in limits.frame_problem(10, 10, samples=3)
    assert limits.frame_problem(10, 10, frames=10) is None
    assert "11 frames" in limits.frame_problem(10, 10, frames=11)


def test_series_declared_samples(ct_series_dir):
    (series,) = scan(ct_series_dir).series
    assert series.declared_samples == 134 * 512 * 512
    assert series.declared_samples < get_limits().max_series_pixels


def test_check_not_blank():
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert check_not_blank(ramp, "x") is ramp
    with pytest.raises(ReadError, match="every pixel is 255"):
        check_not_blank(np.full((8, 8), 255, np.uint8), "x.dcm")
    with pytest.raises(ReadError, match="window maps all stored values"):
        check_not_blank(np.zeros((4, 4), np.uint8), "x.dcm", stored=np.arange(16).reshape(4, 4))
    with pytest.raises(ReadError, match="blank"):
        check_not_blank(np.full((4, 4, 3), 7, np.uint8), "x.png")


# --------------------------------------------------------------------------- hypothesis: mutated headers
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_INTS = st.one_of(st.integers(-3, 70), st.sampled_from([0, 1, 3, 7, 8, 12, 16, 32, 64, 255, 65535]))
_DS = st.one_of(st.sampled_from(["0", "1", "-1", "1e308", "-1e308", "nan", "inf", "1e-30", "3.5", "", "abc"]),
                st.floats(allow_nan=True, allow_infinity=True).map(lambda f: repr(f)[:16]))
_MUTATIONS = {
    "Rows": _INTS, "Columns": _INTS, "BitsAllocated": _INTS, "BitsStored": _INTS, "HighBit": _INTS,
    "PixelRepresentation": _INTS, "SamplesPerPixel": _INTS,
    "NumberOfFrames": st.sampled_from(["0", "1", "2", "-1", "100000", "x"]),
    "PhotometricInterpretation": st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR",
                                                  "YBR_FULL_422", "HSV", ""]),
    "RescaleSlope": _DS, "RescaleIntercept": _DS, "WindowCenter": _DS, "WindowWidth": _DS,
}


def _set_raw(ds: pydicom.Dataset, keyword: str, value: object) -> None:
    """Put `value` into `ds` as raw bytes, as a non-conformant writer would (pydicom validates on set)."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    tag = Tag(tag_for_keyword(keyword))
    vr = dictionary_VR(tag)
    if vr == "US":
        raw = struct.pack("<H", int(value) & 0xFFFF)
    else:
        raw = str(value).encode("ascii", "replace")
        raw += b" " * (len(raw) % 2)
    ds._dict[tag] = RawDataElement(tag, vr, len(raw), raw, 0, False, True)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.dictionaries(st.sampled_from(sorted(_MUTATIONS)), st.none(), min_size=1, max_size=4)
       .flatmap(lambda d: st.fixed_dictionaries({k: _MUTATIONS[k] for k in d})))
def test_mutated_real_header_reads_or_refuses_in_one_line(tmp_path_factory, edits):
    import warnings

    path = tmp_path_factory.mktemp("mut") / "m.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
        for key, value in edits.items():
            if value == "":
                if key in ds:
                    delattr(ds, key)
                continue
            _set_raw(ds, key, value)
        # _set_raw stores raw bytes, which pydicom writes as given (500 examples: it never refused one);
        # should a pydicom release start refusing, this fails loudly instead of passing untested
        ds.save_as(path, enforce_file_format=False)
        try:
            inst = read_instance(path)
            image = display_image(inst)
        except ReadError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc)
            return
    expected = (inst.rows, inst.columns) + ((3,) if inst.is_color else ())
    assert image.dtype == np.uint8 and image.shape == expected


# --------------------------------------------------------------------------- infer over the whole corpus
@pytest.mark.slow
def test_infer_folder_run_survives_every_bad_file_without_a_memory_peak(corpus, tmp_path):
    """One ``medviewer infer`` over the whole corpus folder (FIFO, loop and bombs included), in a child
    process whose peak RSS is measured: it finishes, scores the good images, gives every bad one an error
    entry, writes strict JSON, and stays under 4 GiB."""
    folder = corpus[0].path.parent
    out = tmp_path / "out"
    probe = (
        "import resource, subprocess, sys, json;"
        "r = subprocess.run([sys.executable, '-m', 'medviewer', 'infer', sys.argv[1], '--out', sys.argv[2],"
        " '--quiet', '--batch', '4'], capture_output=True, text=True, timeout=300);"
        "print(json.dumps({'rc': r.returncode, 'err': r.stderr[-4000:], 'out': r.stdout[-2000:],"
        " 'maxrss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"
    )
    proc = subprocess.run([sys.executable, "-c", probe, str(folder), str(out)], capture_output=True, text=True,
                          timeout=360, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["rc"] == 2, info  # some inputs failed, the rest were scored
    assert "Traceback" not in info["err"], info["err"]
    assert info["maxrss_kib"] < 4 * 1024 * 1024, info["maxrss_kib"]

    def no_constants(name):
        raise AssertionError(f"results.json holds a bare {name}")

    doc = json.loads((out / "results.json").read_text(encoding="utf-8"), parse_constant=no_constants)
    duplicates = {p.name for se in scan(folder).series for p in (d.path for d in se.duplicates)}
    by_name = {}
    for entry in doc["results"] + [dict(e, error=e["reason"]) for e in doc["ignored"]]:
        by_name[entry["path"].rsplit("/", 1)[-1]] = entry
    problems = []
    for case in corpus:
        name = case.path.name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        entry = by_name.get(name) or by_name.get(case.path.name)
        if entry is None and case.path.name in duplicates:
            continue  # a byte copy of another case's SOP Instance: scored once, as the scan intends
        if entry is None:
            problems.append(f"{case.name}: missing from results.json")
        elif case.expect == "error" and not entry.get("error"):
            problems.append(f"{case.name}: scored, but must be refused")
        elif case.expect == "ok" and entry.get("error"):
            problems.append(f"{case.name}: refused: {entry['error']}")
        elif case.expect == "ok" and not all(np.isfinite(v) for v in entry["scores"].values()):
            problems.append(f"{case.name}: non-finite score")
    assert not problems, "\n".join(problems)


def test_truncation_check_is_not_fooled_by_sequence_delimiters_in_the_header(tmp_path):
    """A cut compressed file whose header holds undefined-length sequences (each ends with the same
    (FFFE,E0DD) bytes as encapsulated Pixel Data) is still found truncated."""
    ds = pydicom.dcmread(pydicom_test_file("JPEG-LL.dcm"))
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    ds.ReferencedImageSequence = pydicom.Sequence([item])
    ds["ReferencedImageSequence"].is_undefined_length = True
    whole = tmp_path / "whole.dcm"
    ds.save_as(whole)
    data = whole.read_bytes()
    delimiter = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    assert data.find(delimiter) < data.find(b"\xe0\x7f\x10\x00")  # a delimiter in the header
    read_instance(whole)  # the intact file is fine
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 5000])
    with pytest.raises(ReadError, match="truncated"):
        read_instance(cut)
    code, out, err = run_cli("info", tmp_path, "--json")
    assert code == 0
    assert [s["path"].rsplit("/", 1)[-1] for s in json.loads(out)["skipped"]] == ["cut.dcm"]


def test_infer_writes_results_for_a_non_utf8_file_name(tmp_path):
    name = os.fsdecode(b"scan_\xff\xfe.dcm")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_bytes(pydicom_test_file("CT_small.dcm").read_bytes())
    out = tmp_path / "out"
    code, _, err = run_cli("infer", tmp_path / "in", "--out", out, "--quiet", subcommands=("infer",))
    assert code == 0, err
    csv_text = (out / "results.csv").read_text(encoding="utf-8")  # valid UTF-8
    assert "scan_\\xff\\xfe.dcm" in csv_text
    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [r["error"] for r in doc["results"]] == [None]


# --------------------------------------------------------------------------- model input pixel budget
def _dynamic_hw_package(directory, side: int):
    """A real CAM classifier whose graph input is (N, 1, H, W) with H and W dynamic, and a card declaring
    ``side`` x ``side``: the graph accepts any size, so only the card's declaration bounds the allocation."""
    import onnx
    from onnx_models import cam_model, make_package

    model = cam_model(height=64, width=64)
    for value in (model.graph.input[0], model.graph.output[1]):  # the input and the CAM
        dims = value.type.tensor_type.shape.dim
        dims[2].dim_param, dims[3].dim_param = "H", "W"
    onnx.checker.check_model(model)
    return make_package(directory, model=model, height=side, width=side)


def test_card_declaring_a_20k_dynamic_input_is_refused_before_allocating(tmp_path, monkeypatch):
    import resource

    from medviewer.errors import InferenceError, ModelPackageError
    from medviewer.inference.package import ModelPackage
    from medviewer.inference.session import Session
    from medviewer.limits import MAX_MODEL_INPUT_PIXELS_ENV

    monkeypatch.delenv(MAX_MODEL_INPUT_PIXELS_ENV, raising=False)
    pkg_dir = _dynamic_hw_package(tmp_path / "huge", 20_000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ModelPackageError) as info:
        ModelPackage.load(pkg_dir)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(pkg_dir.resolve()))
    assert "20000x20000 = 400,000,000 pixels exceeds the limit of 16,777,216" in message
    assert MAX_MODEL_INPUT_PIXELS_ENV in message
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB: nothing allocated

    code, out, err = run_cli("models", "validate", pkg_dir, subcommands=("models",))
    assert code == 1 and "Traceback" not in err, err
    assert err.strip().splitlines() == [f"medviewer: error: {message}"]

    # a small dynamic-input package is fine; a session opened after the limit was lowered is refused
    small = _dynamic_hw_package(tmp_path / "small", 64)
    pkg = ModelPackage.load(small)
    assert pkg.card.input.height == 64
    monkeypatch.setenv(MAX_MODEL_INPUT_PIXELS_ENV, "1000")
    with pytest.raises(InferenceError, match=r"64x64 = 4,096 pixels exceeds the limit of 1,000"):
        Session(pkg, "cpu")
    with pytest.raises(ModelPackageError, match="exceeds the limit of 1,000"):
        ModelPackage.load(_dynamic_hw_package(tmp_path / "small2", 40))


# --------------------------------------------------------------------------- infer memory: images in flight
def test_score_instances_keeps_images_in_flight_under_the_sample_budget(model_dirs):
    """With a budget of one image, decoding and postprocessing never overlap two images, and the results
    are the same as with every image in flight at once."""
    import threading

    from onnx_models import make_package

    from medviewer.imaging import display_image
    from medviewer.inference import ModelPackage, open_session, score_instances

    pkg = ModelPackage.load(make_package(model_dirs[1] / "m", height=32, width=32))
    session = open_session(pkg, "cpu")
    files = ["CT_small.dcm", "MR_small.dcm", "CT_small.dcm", "MR_small.dcm", "CT_small.dcm"]
    instances = [read_instance(pydicom_test_file(name)) for name in files]
    live: set[int] = set()
    peak = [0]
    lock = threading.Lock()

    def render(inst):
        with lock:
            live.add(id(inst))
            peak[0] = max(peak[0], len(live))
        return display_image(inst)

    def done(outcome):
        with lock:
            live.discard(id(instances[outcome.index]))

    budget = 128 * 128  # CT_small's samples: one image at a time
    bounded = score_instances(session, instances, batch_size=2, workers=3, render=render, progress=done,
                              max_inflight_samples=budget)
    assert peak[0] == 1 and [o.error for o in bounded] == [None] * 5
    peak[0] = 0
    free = score_instances(session, instances, batch_size=2, workers=3, render=render, progress=done)
    assert peak[0] > 1  # the default budget lets small images overlap
    assert [o.prediction.scores for o in bounded] == [o.prediction.scores for o in free]
    assert all(o.prediction.cams.shape == (2, 0, 0) for o in bounded)  # CAMs dropped, as before


def test_finish_without_cams_gives_the_same_result_one_map_at_a_time(model_dirs):
    from onnx_models import make_package

    from medviewer.imaging import display_image
    from medviewer.inference import ModelPackage, open_session
    from medviewer.inference.heatmap import normalize_cam

    pkg = ModelPackage.load(make_package(model_dirs[1] / "m", height=32, width=32))
    session = open_session(pkg, "cpu")
    image = display_image(read_instance(pydicom_test_file("CT_small.dcm")))
    prepared = session.prepare(image)
    logits, cams, _ = session.run_all(prepared.x[None])
    full = session.finish(prepared, logits[0], cams[0], regions="all")
    lean = session.finish(prepared, logits[0], cams[0], regions="all", keep_cams=False)
    raw = prepared.geometry.to_original(cams[0])
    assert np.array_equal(full.cams, normalize_cam(raw))  # bit for bit what the (K, H, W) stack gave
    assert full.cam_peaks == lean.cam_peaks == {lab: float(raw[i].max()) for i, lab in enumerate(full.labels)}
    assert lean.cams.shape == (2, 0, 0) and lean.scores == full.scores
    assert [(r.label, r.bbox, r.area_px) for r in lean.regions] == [(r.label, r.bbox, r.area_px) for r in full.regions]
    assert full.regions  # the check compares something


@pytest.mark.slow
def test_infer_on_large_float_images_stays_within_one_image_in_flight(tmp_path):
    """Four float32 4096 x 4096 images with a frame budget of 4096^2 samples: ``infer`` runs them one after
    the other with one CAM at a time (peak RSS measured in a child process); before, all four were decoded
    and postprocessed at once, with two full-size CAM stacks each."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    n = 4096
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(4):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = "1.2.3", "1.2.3.4", k + 1
        ds.Modality, ds.PatientID = "OT", "FLOAT"
        ds.Rows = ds.Columns = n
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsAllocated = 1, "MONOCHROME2", 32
        ds.FloatPixelData = (np.sin(xx / n * 3 * (k + 1)) * np.cos(yy / n * 2) * 800 + 1000).astype(np.float32).tobytes()
        ds.save_as(folder / f"float_{k}.dcm", enforce_file_format=True)
    out = tmp_path / "out"
    probe = (
        "import resource, subprocess, sys, json;"
        "r = subprocess.run([sys.executable, '-m', 'medviewer', 'infer', sys.argv[1], '--out', sys.argv[2],"
        " '--quiet'], capture_output=True, text=True, timeout=300);"
        "print(json.dumps({'rc': r.returncode, 'err': r.stderr[-2000:],"
        " 'maxrss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"
    )
    env = {**os.environ, MAX_FRAME_PIXELS_ENV: str(n * n)}
    proc = subprocess.run([sys.executable, "-c", probe, str(folder), str(out)], capture_output=True, text=True,
                          timeout=360, cwd=REPO, env=env)
    info = json.loads(proc.stdout)
    assert info["rc"] == 0, info["err"]
    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [r["error"] for r in doc["results"]] == [None] * 4
    # one image in flight: its float decode, its display image and one 4096^2 map at a time
    assert info["maxrss_kib"] < 600 * 1024, info["maxrss_kib"]  # measured 0.31 GB; 0.85 GB before


def test_info_lists_cut_rasters_as_truncated_and_render_refuses_them(tmp_path):
    import cv2

    image = (np.add.outer(np.arange(300), np.arange(200)) % 251).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "whole.png"), image)
    for ext, fraction in ((".png", 0.8), (".jpg", 0.5)):
        ok, buf = cv2.imencode(ext, image)
        (tmp_path / f"cut{ext}").write_bytes(buf.tobytes()[: int(buf.size * fraction)])
    code, out, err = run_cli("info", tmp_path, "--json")
    assert code == 0, err
    skipped = {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in json.loads(out)["skipped"]}
    assert skipped == {"cut.png": "truncated: no PNG IEND chunk at the end of the file",
                       "cut.jpg": "truncated: no JPEG end-of-image marker (FFD9) at the end of the file"}
    for name in ("cut.png", "cut.jpg"):
        code, _, err = run_cli("render", tmp_path / name, "--out", tmp_path / "x.png")
        assert code == 1 and err.strip().splitlines() == [
            f"medviewer: error: {tmp_path / name}: {skipped[name]}"]


# --------------------------------------------------------------------------- hostile model packages
def test_model_card_nested_100000_deep_is_one_line_in_every_command(tmp_path, monkeypatch):
    """A model.json of 100,000 nested brackets (json.loads raises RecursionError) is refused in one line by
    ``models validate``, ``models import`` and ``infer --model``, never a traceback."""
    import shutil

    from medviewer.inference import registry

    package = tmp_path / "deep"
    shutil.copytree(registry.builtin_models_dir() / registry.DEFAULT_MODEL_NAME, package)
    (package / "model.json").write_text('{"name": ' + "[" * 100_000 + "]" * 100_000 + "}", encoding="utf-8")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))  # import writes into an empty user folder
    monkeypatch.delenv(registry.MODEL_PATH_ENV, raising=False)
    expected = f"medviewer: error: {package / 'model.json'}: not valid JSON (nested too deeply to read)"
    runs = {
        "models validate": (("models", "validate", package), ("models",)),
        "models import": (("models", "import", package), ("models",)),
        "infer --model": (("infer", pydicom_test_file("CT_small.dcm"), "--model", package,
                           "--out", tmp_path / "out", "--quiet"), ("infer",)),
    }
    for what, (argv, subcommands) in runs.items():
        code, _out, err = run_cli(*argv, subcommands=subcommands)
        assert code == 1 and err.strip().splitlines() == [expected], (what, code, err)
    assert not (tmp_path / "xdg").exists() or not any((tmp_path / "xdg").rglob("model.json"))  # nothing imported


def test_gui_model_that_cannot_be_loaded_is_said_on_screen_and_no_other_model_runs(tmp_path):
    """``medviewer --demo --model nosuch --screenshot``: the window's status bar (a dialog when interactive)
    says the model was not loaded, the default model is not run in its place, and the demo, which then
    cannot show what it promises, exits 3 (the ``--screenshot`` exit codes are in ``medviewer --help``)."""
    pytest.importorskip("PySide6")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(QT_QPA_PLATFORM="offscreen", XDG_CONFIG_HOME=str(tmp_path / "config"),
               XDG_DATA_HOME=str(tmp_path / "data"))
    shot = tmp_path / "shot.png"
    proc = subprocess.run([sys.executable, "-m", "medviewer", "--demo", "--model", "nosuch", "--screenshot", shot],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 3, proc.stderr
    assert lines[0].startswith("medviewer: Model not loaded: --model: nosuch: no model named 'nosuch'"), lines
    assert lines[-1] == "medviewer: error: the demo cannot show what it promises: no model is available for the demo"
    assert shot.stat().st_size > 0 and "Traceback" not in proc.stderr
    help_text = subprocess.run([sys.executable, "-m", "medviewer", "--help"], capture_output=True, text=True,
                               env=env, check=True).stdout
    assert "4 the window reported an error" in " ".join(help_text.split())
