"""The triage worklist (medviewer.workstation.worklist) on real images with the shipped model.

A folder holds the paediatric demo CR (pneumonia, within the model's intended use), pydicom's CT_small and
RG1_UNCR (an adult CR: outside the intended use) and, when ../shared/data is present, a normal paediatric
radiograph of the Kermany set.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medviewer.workstation.worklist import StudyTriage, Worklist, triage_folder
from tests.conftest import KERMANY, REPO, pydicom_test_file

DEMO = REPO / "resources" / "demo" / "paediatric-cxr-pneumonia.dcm"


@pytest.fixture(scope="module")
def session():
    from medviewer.inference import open_session
    from medviewer.inference.registry import default_model

    return open_session(default_model(), "cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    if not DEMO.is_file():
        pytest.skip(f"demo study {DEMO} is absent (python -m training.demo_data builds it)")
    d = tmp_path_factory.mktemp("worklist")
    shutil.copy(DEMO, d / DEMO.name)
    for name in ("CT_small.dcm", "RG1_UNCR.dcm"):
        shutil.copy(pydicom_test_file(name), d / name)
    normal = sorted((KERMANY / "train" / "NORMAL").glob("*.jpeg"))[:1] if KERMANY.is_dir() else []
    for f in normal:
        shutil.copy(f, d / f.name)
    return d


def test_triage_order_scope_and_read_state(session, folder, tmp_path):
    import pydicom

    state = tmp_path / "read.json"
    seen = []
    wl = triage_folder(session, [folder], worklist=Worklist(state), progress=lambda d, t: seen.append((d, t)))
    rows = wl.sorted()
    n_files = len(list(folder.iterdir()))
    assert len(rows) == n_files and seen[-1] == (n_files, n_files)

    demo_uid = str(pydicom.dcmread(DEMO, stop_before_pixels=True).StudyInstanceUID)
    first = rows[0]
    assert first.study_instance_uid == demo_uid and first.applicability == "in_scope"
    assert first.top_label == "pneumonia" and "pneumonia" in first.flagged and first.top_probability > 0.5

    by_id = {r.patient_id: r for r in rows}
    ct = next(r for r in rows if r.study_instance_uid ==
              str(pydicom.dcmread(pydicom_test_file("CT_small.dcm"), stop_before_pixels=True).StudyInstanceUID))
    assert ct.applicability == "out_of_scope" and ct.top_probability is None and not ct.flagged
    assert any("modality CT" in r for r in ct.reasons)
    # every study the model may speak about comes before every study it may not
    groups = [r.applicability in ("in_scope", "unknown") for r in rows]
    assert groups == sorted(groups, reverse=True)
    probs = [r.top_probability for r in rows if r.top_probability is not None]
    assert probs == sorted(probs, reverse=True)
    assert by_id  # patient IDs are read from the headers

    # read/unread survives a new worklist on the same state file
    assert not first.read
    wl.mark_read(demo_uid)
    assert wl.sorted()[0].read
    again = triage_folder(session, [DEMO], worklist=Worklist(state))
    assert again.sorted()[0].read and again.rows()[0]["read"] is True
    Worklist(state).mark_read(demo_uid, False)
    assert not Worklist(state).entry(demo_uid).read


def test_sort_key_is_by_in_scope_probability():
    a = StudyTriage("1.1")
    a.add({"normal": 0.2, "pneumonia": 0.8}, ["pneumonia"], {"status": "in_scope"}, ["pneumonia"], "1.1.1")
    b = StudyTriage("1.2")
    b.add({"normal": 0.05, "pneumonia": 0.95}, ["pneumonia"], {"status": "out_of_scope", "reasons": ["age"]},
          ["pneumonia"])
    b.add({"normal": 0.7, "pneumonia": 0.3}, [], {"status": "in_scope"}, ["pneumonia"], "1.2.2")
    c = StudyTriage("1.3")
    c.add({"pneumonia": 0.99}, ["pneumonia"], {"status": "out_of_scope", "reasons": ["modality CT"]}, ["pneumonia"])
    d = StudyTriage("1.4", error="unreadable")
    order = sorted([d, c, b, a], key=StudyTriage.sort_key)
    assert [s.study_instance_uid for s in order] == ["1.1", "1.2", "1.3", "1.4"]
    # b's out-of-scope image (0.95) does not count; its in-scope one (0.3) does
    assert b.top_probability == pytest.approx(0.3) and b.top_sop_instance_uid == "1.2.2" and b.reasons == ["age"]
    assert (c.applicability, d.applicability) == ("out_of_scope", "not_scored")
