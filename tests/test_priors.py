"""Compare with prior, without a window: real CT and MR files re-labelled as one patient's studies of different
dates (same Patient ID, new Study Instance UIDs), found in opened folders and on a real Orthanc (127.0.0.1)."""

from __future__ import annotations

import pytest

from medviewer.io.scan import scan
from medviewer.workstation.priors import (
    LOCAL,
    StudyFacts,
    fetch_prior,
    find_priors,
    format_study_date,
    prior_series,
)
from tests.conftest import pydicom_test_file
from tests.orthanc import orthanc_unavailable, start_orthanc
from tests.priors_data import relabel

CT, MR = pydicom_test_file("CT_small.dcm"), pydicom_test_file("MR_small.dcm")
PID = "PRIOR-7"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The current CT of the abdomen and the patient's other studies, one folder each."""
    root = tmp_path_factory.mktemp("priors")
    uids = {
        "current": relabel([CT], root / "current", patient_id=PID, study_date="20240501", body_part="ABDOMEN",
                           series_description="Abdomen 5mm"),
        "prior": relabel([CT], root / "prior", patient_id=PID, study_date="20230110", body_part="ABDOMEN",
                         series_description="ABDOMEN 5MM"),
        "older": relabel([CT], root / "older", patient_id=PID, study_date="20220101", body_part="ABDOMEN"),
        "chest": relabel([CT], root / "chest", patient_id=PID, study_date="20231201", body_part="CHEST"),
        "mr": relabel([MR], root / "mr", patient_id=PID, study_date="20240101", body_part="ABDOMEN"),
        "later": relabel([CT], root / "later", patient_id=PID, study_date="20250101", body_part="ABDOMEN"),
        "same_day_before": relabel([CT], root / "sameday", patient_id=PID, study_date="20240501",
                                   study_time="080000", body_part="ABDOMEN"),
        "other_patient": relabel([CT], root / "other", patient_id="SOMEONE-ELSE", study_date="20231230",
                                 body_part="ABDOMEN"),
    }
    return root, uids


def _current(result, uid):
    study = next(st for st in result.studies if st.study_instance_uid == uid)
    return study, study.series[0]


def test_chooses_the_most_recent_comparable_opened_study(folders):
    root, uids = folders
    result = scan(root)
    _, series = _current(result, uids["current"])
    search = find_priors(series, result.studies)
    assert search.modality == "CT" and search.body_part == "ABDOMEN"
    # same day, earlier Study Time: the morning's CT is the prior of the afternoon's
    assert search.chosen.study_instance_uid == uids["same_day_before"] and search.chosen.origin == LOCAL
    assert [c.study_instance_uid for c in search.candidates] == [uids[k] for k in ("same_day_before", "prior", "older")]
    why = {s.study_instance_uid: r for s, r in search.rejected}
    assert why == {uids["later"]: "not earlier", uids["mr"]: "no CT", uids["chest"]: "other body part (CHEST)"}
    assert uids["other_patient"] not in {s.study_instance_uid for s in search.earlier}
    assert search.message().startswith("Prior 2024-05-01 CT ABDOMEN")


def test_without_the_same_day_study_the_previous_year_is_chosen(folders):
    root, uids = folders
    result = scan([p for p in sorted(root.iterdir()) if p.name != "sameday"])
    study, series = _current(result, uids["current"])
    search = find_priors(series, result.studies)
    assert search.chosen.study_instance_uid == uids["prior"]
    assert search.chosen.study_date == "20230110" and format_study_date(search.chosen.study_date) == "2023-01-10"
    prior = next(st for st in result.studies if st.study_instance_uid == uids["prior"])
    assert prior_series(series, prior).series_description == "ABDOMEN 5MM"
    assert "current 2024-05-01" in search.message()


def test_no_prior_says_why(folders):
    root, uids = folders
    result = scan([root / "current", root / "chest", root / "mr", root / "later"])
    _, series = _current(result, uids["current"])
    search = find_priors(series, result.studies)
    assert search.chosen is None
    msg = search.message()
    assert msg.startswith("No comparable prior (CT ABDOMEN before 2024-05-01) among 3 other studies of patient PRIOR-7")
    assert "other body part (CHEST)" in msg and "no CT" in msg
    alone = scan(root / "current")
    search = find_priors(alone.series[0], alone.studies)
    assert search.message() == f"No prior: no other study of patient {PID} found"


def test_no_patient_id_matches_nothing(folders, tmp_path):
    root, _ = folders
    relabel([CT], tmp_path / "a", patient_id="", study_date="20240501")
    relabel([CT], tmp_path / "b", patient_id="", study_date="20230101")
    result = scan(tmp_path)
    current = next(st for st in result.studies if st.study_date == "20240501")
    search = find_priors(current.series[0], result.studies)
    assert search.chosen is None and search.message() == "No prior: the current study has no Patient ID to match"


def test_an_unreachable_pacs_is_a_note_and_the_opened_prior_still_wins(folders):
    root, uids = folders
    result = scan([root / "current", root / "prior"])
    _, series = _current(result, uids["current"])
    search = find_priors(series, result.studies, node="dicom://NOBODY@127.0.0.1:9")
    assert search.chosen.study_instance_uid == uids["prior"]
    assert len(search.notes) == 1 and search.notes[0].startswith("PACS dicom://NOBODY@127.0.0.1:9 not searched:")
    assert "\n" not in search.message()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, folders):
    """A real Orthanc holding a more recent prior than the opened one, a chest CT and another patient's CT."""
    why = orthanc_unavailable()
    if why:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("pacs")
    uids = {
        "pacs_prior": relabel([CT], root / "p1", patient_id=PID, study_date="20230615", body_part="ABDOMEN",
                              study_description="CT ABDOMEN (PACS)"),
        "pacs_chest": relabel([CT], root / "p2", patient_id=PID, study_date="20240301", body_part="CHEST"),
        "pacs_other": relabel([CT], root / "p3", patient_id="SOMEONE-ELSE", study_date="20240401",
                              body_part="ABDOMEN"),
    }
    orth = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        orth.upload(sorted(root.rglob("*.dcm")))
        yield orth, uids
    finally:
        orth.stop()


def test_prior_found_on_the_pacs_by_patient_id_and_retrieved(folders, orthanc, tmp_path):
    root, uids = folders
    orth, remote = orthanc
    result = scan([root / "current", root / "prior"])
    _, series = _current(result, uids["current"])
    search = find_priors(series, result.studies, node=orth.dimse_url)
    assert search.notes == []
    got = {s.study_instance_uid: s for s in search.earlier}
    assert remote["pacs_other"] not in got and uids["prior"] in got
    # the PACS's chest CT cannot be told apart at the study level: it is the newest candidate, then the
    # abdomen CT of June 2023; fetching checks the body part in the files and moves on
    assert [c.study_instance_uid for c in search.candidates] == [remote["pacs_chest"], remote["pacs_prior"],
                                                                  uids["prior"]]
    assert search.chosen.remote and search.chosen.origin == orth.dimse_url
    scanned, facts = fetch_prior(search, tmp_path / "incoming")
    assert facts.study_instance_uid == remote["pacs_prior"] and facts.body_parts == ("ABDOMEN",)
    study = next(st for st in scanned.studies if st.study_instance_uid == remote["pacs_prior"])
    assert prior_series(series, study) is study.series[0]
    assert isinstance(StudyFacts.from_study(study), StudyFacts) and not facts.remote


def test_a_remote_candidate_of_another_body_part_gives_way_to_the_opened_prior(folders, orthanc, tmp_path):
    root, uids = folders
    orth, remote = orthanc
    result = scan([root / "current", root / "prior"])
    _, series = _current(result, uids["current"])
    search = find_priors(series, result.studies, node=orth.dimse_url)
    search.candidates = [c for c in search.candidates if c.study_instance_uid != remote["pacs_prior"]]
    assert [c.study_instance_uid for c in search.candidates] == [remote["pacs_chest"], uids["prior"]]
    scanned, facts = fetch_prior(search, tmp_path / "incoming")  # the chest CT is retrieved, checked, passed over
    assert scanned is None and facts.study_instance_uid == uids["prior"] and not facts.remote
    search.candidates = search.candidates[:1]
    with pytest.raises(ValueError, match=r"no comparable prior once retrieved: 2024-03-01 CT CHEST.*other body part"):
        fetch_prior(search, tmp_path / "incoming")
