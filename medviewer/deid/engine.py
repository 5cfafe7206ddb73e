"""De-identification of one DICOM dataset with the Basic Application Level Confidentiality Profile.

DICOM PS3.15 Annex E: every attribute listed in Table E.1-1 (:mod:`medviewer.deid.profile`) is removed,
emptied, replaced with a dummy value, kept, cleaned or given a new UID as the table says for the chosen
options, at every nesting level; private attributes are removed unless on the safe list; Patient Identity
Removed (0012,0062), De-identification Method (0012,0063) and its Code Sequence (0012,0064) and
Longitudinal Temporal Information Modified (0028,0303) are set.

UIDs are replaced by ``2.25.<n>`` where ``n`` is an HMAC-SHA256 of the original UID with a key (the bits of
a version-8 UUID set, RFC 9562): the same UID gets the same replacement in every instance and every run
with the same key, so a series stays one series and references (Referenced SOP Instance UID in SR, SEG,
Source Image Sequence) still resolve, and without the key the mapping cannot be inverted or recomputed.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from medviewer.deid.profile import TABLE_EDITION, Option, load_table, lookup
from medviewer.errors import MedViewerError

__all__ = ["DeidOptions", "BurnedInAnnotationError", "anonymize_dataset", "keyed_uid", "pseudonym",
           "load_key", "BASIC_PROFILE_CODE", "changed_uids"]

BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
#: dummy value per VR for action D (PS3.15 E.1.1: "a non-zero length value ... consistent with the VR")
_DUMMY = {"PN": "ANONYMOUS", "LO": "ANONYMOUS", "SH": "ANONYMOUS", "CS": "ANONYMOUS", "AE": "ANONYMOUS",
          "LT": "ANONYMOUS", "ST": "ANONYMOUS", "UT": "ANONYMOUS", "UC": "ANONYMOUS", "DA": "19000101",
          "DT": "19000101000000", "TM": "000000", "AS": "000Y", "DS": "0", "IS": "0", "US": 0, "SS": 0,
          "UL": 0, "SL": 0, "FL": 0.0, "FD": 0.0, "UV": 0, "SV": 0}
_TEXT_VRS = {"PN", "LO", "SH", "LT", "ST", "UT", "UC"}
_FREE_TEXT_VRS = {"PN", "LT", "ST", "UT", "UC"}  # replaced inside a sequence whose action is D
_SESSION_KEY = secrets.token_bytes(32)  # used when no key is given: consistent within this process only


class BurnedInAnnotationError(MedViewerError):
    """The instance declares Burned In Annotation (0028,0301) = YES: its pixels may show identifying text,
    and MedViewer does not mask pixel data, so it refuses to write a de-identified copy."""


@dataclass(frozen=True)
class DeidOptions:
    """Which PS3.15 E.3 options to apply on top of the Basic Profile.

    ``keep_dates``: Retain Longitudinal Temporal Information with Full Dates (113106);
    ``keep_descriptors``: Clean Descriptors (113105), descriptions and comments are kept with every
    identifying value found in the instance's own patient/study attributes (name and its components, IDs,
    birth date, accession number, address, institution, physicians) replaced by ``***``;
    ``keep_uids`` (113110), ``keep_device_identity`` (113109), ``keep_institution_identity`` (113112),
    ``keep_patient_characteristics`` (113108). ``safe_private``: private attributes to retain, as
    ``(group, private creator, element low byte)``, e.g. ``(0x0019, "GEMS_ACQU_01", 0x23)`` (113111 Retain
    Safe Private Option is recorded when the set is non-empty); by default every private attribute is removed.
    """

    keep_dates: bool = False
    keep_descriptors: bool = False
    keep_uids: bool = False
    keep_device_identity: bool = False
    keep_institution_identity: bool = False
    keep_patient_characteristics: bool = False
    safe_private: frozenset[tuple[int, str, int]] = field(default_factory=frozenset)

    @property
    def options(self) -> frozenset[Option]:
        """The table options these settings select."""
        pairs = [(self.keep_dates, Option.RETAIN_FULL_DATES), (self.keep_descriptors, Option.CLEAN_DESCRIPTORS),
                 (self.keep_uids, Option.RETAIN_UIDS), (self.keep_device_identity, Option.RETAIN_DEVICE_IDENTITY),
                 (self.keep_institution_identity, Option.RETAIN_INSTITUTION_IDENTITY),
                 (self.keep_patient_characteristics, Option.RETAIN_PATIENT_CHARACTERISTICS)]
        return frozenset(o for on, o in pairs if on)

    def codes(self) -> list[tuple[str, str]]:
        """De-identification Method codes (DCM, CID 7050): 113100 then one per option, in table order."""
        codes = [BASIC_PROFILE_CODE] + [o.code for o in Option if o in self.options]
        if self.safe_private:
            codes.append(("113111", "Retain Safe Private Option"))
        return codes


def load_key(path: str | Path) -> bytes:
    """Read a pseudonymisation key file (any bytes, at least 16 after stripping whitespace).

    Raises :class:`MedViewerError` when the file is missing, unreadable or too short.
    """
    p = Path(path)
    try:
        key = p.read_bytes().strip()
    except OSError as exc:
        raise MedViewerError(f"{p}: cannot read the pseudonym key ({exc.strerror or exc}); create one with "
                             f"'python -c \"import secrets; print(secrets.token_hex(32))\" > {p}'") from None
    if len(key) < 16:
        raise MedViewerError(f"{p}: pseudonym key too short ({len(key)} bytes, need at least 16)")
    return key


def keyed_uid(uid: str, key: bytes) -> str:
    """The replacement of ``uid``: ``2.25.`` + the decimal of a version-8 UUID made from
    HMAC-SHA256(key, uid) (PS3.5 B.2: UUID-derived UIDs). Deterministic in (uid, key); at most 44 chars."""
    digest = bytearray(hmac.new(key, uid.strip("\0 ").encode("ascii", "replace"), hashlib.sha256).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x80  # version 8
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC variant
    return "2.25." + str(int.from_bytes(digest, "big"))


def pseudonym(value: str, key: bytes, prefix: str = "ANON") -> str:
    """A 16-character pseudonym of ``value`` (e.g. a Patient ID): ``prefix`` + HMAC-SHA256 hex, upper case."""
    mac = hmac.new(key, b"patient:" + value.encode("utf-8", "replace"), hashlib.sha256).hexdigest()
    return (prefix + mac.upper())[:16]


def _phi_strings(ds: Dataset) -> list[str]:
    """Identifying values of ``ds`` to scrub from kept descriptors (longest first, 3+ characters)."""
    values: set[str] = set()
    for kw in ("PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthName",
               "PatientMotherBirthName", "AccessionNumber", "PatientBirthDate", "PatientAddress",
               "InstitutionName", "InstitutionAddress", "ReferringPhysicianName", "PerformingPhysicianName",
               "OperatorsName", "NameOfPhysiciansReadingStudy", "StudyID", "IssuerOfPatientID",
               "PatientTelephoneNumbers", "MedicalRecordLocator"):
        value = ds.get(kw)
        if value is None or value == "":
            continue
        items = value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
        for v in items:
            text = str(v).strip()
            values.add(text)
            values.update(part.strip() for part in re.split(r"[\^=\s,]+", text))
            if kw == "PatientBirthDate" and len(text) == 8 and text.isdigit():
                values.update({f"{text[:4]}-{text[4:6]}-{text[6:]}", f"{text[6:]}.{text[4:6]}.{text[:4]}",
                               f"{text[4:6]}/{text[6:]}/{text[:4]}"})
    return sorted((v for v in values if len(v) >= 3), key=len, reverse=True)


def _scrub(text: str, phi: list[str]) -> str:
    for value in phi:
        text = re.sub(re.escape(value), "***", text, flags=re.IGNORECASE)
    return text


class _Deidentifier:
    def __init__(self, options: DeidOptions, key: bytes, phi: list[str]):
        self.options = options
        self.opts = options.options
        self.key = key
        self.phi = phi
        self.table = load_table()

    # -- value replacements -------------------------------------------------------------------------
    def new_uid(self, value):
        if value is None or value == "":
            return value
        if isinstance(value, str):
            return keyed_uid(value, self.key)
        return [keyed_uid(str(v), self.key) for v in value]

    def clean(self, elem) -> None:
        if elem.VR in _TEXT_VRS and elem.value not in (None, ""):
            if elem.VM > 1:
                elem.value = [_scrub(str(v), self.phi) for v in elem.value]
            else:
                elem.value = _scrub(str(elem.value), self.phi)

    def dummy(self, elem) -> None:
        if elem.VR == "UI":
            elem.value = self.new_uid(elem.value) or keyed_uid("dummy", self.key)
        elif elem.VR in _DUMMY:
            elem.value = _DUMMY[elem.VR]
        elif elem.VR in ("OB", "OW", "UN", "OD", "OF", "OL", "OV"):
            elem.value = b"\0\0"
        else:
            elem.value = None

    # -- traversal ----------------------------------------------------------------------------------
    def private_keep(self, ds: Dataset) -> set[int]:
        """Private tags of ``ds`` on the safe list, with their private creator elements."""
        keep: set[int] = set()
        if not self.options.safe_private:
            return keep
        for elem in ds:
            tag = elem.tag
            if not tag.is_private or tag.element < 0x1000:
                continue
            creator_tag = (tag.group << 16) | (tag.element >> 8)
            creator = ds.get(creator_tag)
            name = str(creator.value).strip() if creator is not None else ""
            if (tag.group, name, tag.element & 0xFF) in self.options.safe_private:
                keep.update({int(tag), creator_tag})
        return keep

    def walk(self, ds: Dataset, in_dummy: bool = False) -> None:
        keep_private = self.private_keep(ds)
        overlay_groups_removed: set[int] = set()
        for tag in list(ds.keys()):
            elem = ds[tag]
            if tag.is_private:
                if int(tag) not in keep_private:
                    del ds[tag]
                continue
            row = lookup(int(tag), self.table)
            if row is None:
                if elem.VR == "SQ":
                    self.walk_items(elem, in_dummy)
                elif in_dummy and elem.VR in _FREE_TEXT_VRS and elem.value not in (None, ""):
                    self.dummy(elem)  # free text inside a sequence the profile replaces (e.g. SR TEXT values)
                elif in_dummy and elem.VR in ("DA", "DT", "TM") and Option.RETAIN_FULL_DATES not in self.opts:
                    self.dummy(elem)
                continue
            action = row.action(self.opts)
            if action == "X/Z" and elem.VR == "SQ" and elem.value:
                # X for a Type 3, Z for a Type 2 sequence; a Type 3 sequence must not be empty (PS3.5 7.5), so
                # the items stay with their content replaced by the profile (Z allows a dummy value)
                action = "D"
            action = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "U*"}.get(action, action)
            if action == "X":
                del ds[tag]
                if tag.group & 0xFF00 == 0x6000 and tag.element == 0x3000:
                    overlay_groups_removed.add(tag.group)
            elif action == "Z":
                if tag == 0x00100010:  # Patient's Name: a pseudonym (Z allows a dummy value), as Patient ID
                    elem.value = self.patient_pseudonym(ds)
                elif elem.VR == "SQ":
                    elem.value = Sequence()
                else:
                    elem.value = None if elem.VR not in _TEXT_VRS | {"CS", "DA", "DT", "TM", "UI", "AE"} else ""
            elif action == "D":
                if tag == 0x00100020:
                    elem.value = self.patient_pseudonym(ds)
                elif elem.VR == "SQ":
                    self.walk_items(elem, in_dummy=True)
                else:
                    self.dummy(elem)
            elif action == "U":
                if elem.VR == "SQ":
                    self.walk_items(elem, in_dummy)
                else:
                    elem.value = self.new_uid(elem.value)
            elif action in ("U*", "K", "C"):
                if elem.VR == "SQ":
                    self.walk_items(elem, in_dummy and action != "K")
                elif action == "C":
                    self.clean(elem)
            else:  # pragma: no cover - load_table() validates the codes
                raise ValueError(f"unknown action {action!r} for {row.tag}")
        for group in overlay_groups_removed:
            # Overlay Data is X: the rest of its overlay plane (rows, columns, origin ...) goes with it, or
            # the Overlay Plane Module would be left incomplete (PS3.3 C.9.2)
            for tag in [t for t in ds.keys() if t.group == group]:
                del ds[tag]

    def walk_items(self, elem, in_dummy: bool) -> None:
        for item in elem.value or []:
            self.walk(item, in_dummy)

    def patient_pseudonym(self, ds: Dataset) -> str:
        pid = ds.get("PatientID")
        if pid is None or str(pid) == "":
            return ""
        return pseudonym(str(pid), self.key)


def anonymize_dataset(ds: Dataset, options: DeidOptions | None = None, key: bytes | None = None) -> Dataset:
    """A de-identified copy of ``ds`` (the input is not changed), PS3.15 E.1 Basic Profile plus ``options``.

    ``key``: bytes for the keyed UID and patient pseudonym mapping (see :func:`keyed_uid`); the same key
    gives the same UIDs and pseudonyms in every run, ``None`` uses a random key that lives as long as the
    process (consistent across the instances of one run, not reproducible). Patient's Name and Patient ID
    become the same 16-character pseudonym of the original Patient ID. Pixel data is left untouched.

    Raises :class:`BurnedInAnnotationError` when Burned In Annotation (0028,0301) is ``YES``.
    """
    options = options or DeidOptions()
    key = _SESSION_KEY if key is None else key
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        raise BurnedInAnnotationError(
            "Burned In Annotation is YES: the pixels may show identifying text; MedViewer does not mask "
            "pixel data, so no de-identified copy is written")
    out = copy.deepcopy(ds)
    phi = _phi_strings(ds) if Option.CLEAN_DESCRIPTORS in options.options else []
    _Deidentifier(options, key, phi).walk(out)

    out.PatientIdentityRemoved = "YES"
    methods = [f"{TABLE_EDITION} Basic Profile (MedViewer)"] + [o.code[1] for o in Option if o in options.options]
    if Option.CLEAN_DESCRIPTORS in options.options:
        methods.append("Descriptors: the instance's identifying values replaced by ***")
    if options.safe_private:
        methods.append("Retain Safe Private Option")
    out.DeidentificationMethod = methods if len(methods) > 1 else methods[0]
    seq = Sequence()
    for value, meaning in options.codes():
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        seq.append(item)
    out.DeidentificationMethodCodeSequence = seq
    out.LongitudinalTemporalInformationModified = "UNMODIFIED" if options.keep_dates else "REMOVED"

    out.file_meta = _file_meta(ds, out)
    return out


def _file_meta(ds: Dataset, out: Dataset) -> FileMetaDataset:
    """File Meta Information (PS3.10 7.1) for the de-identified copy: the SOP Class and Transfer Syntax of
    the original, the new SOP Instance UID, MedViewer as the implementation; no Source/Sending/Receiving AE
    titles or private meta information (they name the sites). A bare dataset (no meta) gets the transfer
    syntax it was read with."""
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    from medviewer import __version__

    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    new_meta = FileMetaDataset()
    new_meta.FileMetaInformationVersion = b"\x00\x01"
    sop_class = meta.get("MediaStorageSOPClassUID") or out.get("SOPClassUID")
    if sop_class:
        new_meta.MediaStorageSOPClassUID = sop_class
    if "SOPInstanceUID" in out:
        new_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    ts = meta.get("TransferSyntaxUID")
    if not ts:
        implicit, little = getattr(ds, "original_encoding", (True, True))
        ts = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    new_meta.TransferSyntaxUID = ts
    new_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    new_meta.ImplementationVersionName = f"MEDVIEWER_{__version__}"[:16]
    return new_meta


def changed_uids(before: Iterable[str], key: bytes) -> dict[str, str]:
    """``{original: replacement}`` for ``before`` under ``key`` (for callers that must rewrite references
    held outside the datasets, e.g. a results file)."""
    return {uid: keyed_uid(uid, key) for uid in before}
