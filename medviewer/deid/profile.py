"""DICOM PS3.15 Table E.1-1 as data: which action the Basic Profile and its options take per attribute.

The table lives in ``table_e1_1.csv`` beside this module (PS3.15 2026c; provenance in
``_build_table.py``). Action codes (PS3.15 E.1.1): ``D`` replace with a dummy value, ``Z`` replace with a
zero-length (or dummy) value, ``X`` remove, ``K`` keep, ``C`` clean, ``U`` replace with a consistent new UID;
``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D`` and ``X/Z/U*`` depend on the attribute's Type in the IOD.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from pathlib import Path

__all__ = ["Option", "ProfileRow", "load_table", "lookup", "TABLE_PATH", "TABLE_EDITION"]

TABLE_PATH = Path(__file__).with_name("table_e1_1.csv")
TABLE_EDITION = "PS3.15 2026c Table E.1-1"


class Option(str, Enum):
    """Retain/clean options of PS3.15 E.3 that change Table E.1-1's action; value = the table's CSV column.

    ``code`` is the CID 7050 code recorded in De-identification Method Code Sequence (0012,0064).
    """

    RETAIN_UIDS = "rtn_uids"
    RETAIN_DEVICE_IDENTITY = "rtn_device"
    RETAIN_INSTITUTION_IDENTITY = "rtn_institution"
    RETAIN_PATIENT_CHARACTERISTICS = "rtn_patient"
    RETAIN_FULL_DATES = "rtn_dates_full"
    CLEAN_DESCRIPTORS = "clean_descriptors"

    @property
    def code(self) -> tuple[str, str]:
        """``(code value, code meaning)`` in DCM (PS3.16 CID 7050)."""
        return _OPTION_CODES[self]


_OPTION_CODES = {
    Option.RETAIN_UIDS: ("113110", "Retain UIDs Option"),
    Option.RETAIN_DEVICE_IDENTITY: ("113109", "Retain Device Identity Option"),
    Option.RETAIN_INSTITUTION_IDENTITY: ("113112", "Retain Institution Identity Option"),
    Option.RETAIN_PATIENT_CHARACTERISTICS: ("113108", "Retain Patient Characteristics Option"),
    Option.RETAIN_FULL_DATES: ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    Option.CLEAN_DESCRIPTORS: ("113105", "Clean Descriptors Option"),
}


@dataclass(frozen=True)
class ProfileRow:
    """One row of Table E.1-1.

    ``tag`` is the 8-hex-digit tag, with ``X`` for the repeating-group wildcards (``50XXXXXX`` Curve Data,
    ``60XX3000`` Overlay Data); ``basic`` the Basic Profile action; ``options`` the action each option
    column gives (only non-blank entries).
    """

    tag: str
    keyword: str
    name: str
    basic: str
    options: dict[str, str] = field(default_factory=dict)

    def action(self, options: frozenset[Option] | set[Option] = frozenset()) -> str:
        """The action under the Basic Profile with ``options``: an option's ``K`` wins over its ``C``,
        which wins over the Basic Profile (PS3.15 E.3: the options override the basic action)."""
        given = [self.options[o.value] for o in options if o.value in self.options]
        if "K" in given:
            return "K"
        if "C" in given:
            return "C"
        return self.basic


@lru_cache(maxsize=1)
def load_table(path: Path = TABLE_PATH) -> dict[str, ProfileRow]:
    """Read Table E.1-1 from ``path``; returns ``{tag: ProfileRow}`` (tags upper-case, 8 characters).

    Raises ``OSError`` when the file is missing and ``ValueError`` on a malformed row.
    """
    rows: dict[str, ProfileRow] = {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(line for line in f if not line.startswith("#"))
        for rec in reader:
            tag = rec["tag"].upper()
            if len(tag) != 8 or rec["basic"] not in {"D", "Z", "X", "K", "C", "U", "X/Z", "X/D", "Z/D",
                                                      "X/Z/D", "X/Z/U*"}:
                raise ValueError(f"{path}: bad row {rec}")
            opts = {o.value: rec[o.value] for o in Option if rec.get(o.value)}
            rows[tag] = ProfileRow(tag, rec["keyword"], rec["name"], rec["basic"], opts)
    return rows


def lookup(tag: int, table: dict[str, ProfileRow] | None = None) -> ProfileRow | None:
    """The row for the integer ``tag`` (e.g. ``0x00100010``), matching the repeating groups 50xx and 60xx;
    ``None`` when Table E.1-1 does not list the attribute."""
    table = load_table() if table is None else table
    text = f"{tag:08X}"
    row = table.get(text)
    if row is None and text[:2] in ("50", "60"):
        row = table.get(text[:2] + "XX" + text[4:]) or table.get(text[:2] + "XXXXXX")
    return row
