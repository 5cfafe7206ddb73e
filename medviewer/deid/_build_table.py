"""Maintainer script (not imported at run time): regenerate ``table_e1_1.csv``, DICOM PS3.15 Table E.1-1.

Sources, both MIT-licensed transcriptions of the standard's table:

* the Basic Profile column, for every attribute the 2026c edition lists: the action lists of
  ``dicom-anonymizer`` 2.1.0 (``dicomanonymizer/dicom_anonymization_databases/dicomfields_2026c.py``);
* the option columns (Retain UIDs, Device Identity, Institution Identity, Patient Characteristics,
  Longitudinal Temporal Information with Full / Modified Dates, Clean Descriptors, Clean Structured Content,
  Clean Graphics): the transcription of Table E.1-1 in innolitics' ``dicom-standard``
  (``standard/confidentiality_profile_attributes.json``), copied below as tag lists.

``source`` = ``T``: the attribute has an entry in an option column of that transcription; ``R``: it has
none there (the transcription lacks some newer rows), so its option columns follow the rules the table
itself follows: a DA/DT/TM attribute (not Patient's Birth Date/Time) is K under Retain Longitudinal Full
Dates and C under Modified Dates, a U attribute is K under Retain UIDs; other option columns stay blank.

Run: ``pip install dicom-anonymizer==2.1.0 && python -m medviewer.deid._build_table``.
"""

from __future__ import annotations

import csv
from pathlib import Path

# --- option columns, transcribed from innolitics/dicom-standard (Table E.1-1) --------------------------
DATES = """00080022 0008002A 00080032 00380020 00380021 00080023 00080033 00080025 00080035 00189517 00404011
30080054 00340007 0016008D 003A0314 00080015 3010004D 3010004C 300A0741 001021D0 30080056 0040A192 0040A193
00080024 00080034 300A0760 00400250 00404051 00400251 00400244 00404050 00400245 00404052 300A073A 300A0006
300A0007 00400004 00400005 00404008 00404010 00400002 00404005 00400003 00080021 00080031 0018936A 00189369
00189516 30060008 30060009 00080020 00080030 00080201 30080250 30080251 300A0736""".split()
CLEAN_DESC = """00184000 00181400 001811BB 00189424 001021B0 00081084 00081080 00102110 300A00C3 300A00DD 00120072
00120051 00400310 00400280 300A02EB 3010000F 30100017 00180010 0018A003 0018937F 00082111 0016004B 00380040
300A0016 30100037 30100035 30100038 30100036 300A0676 3010007F 300A0072 00209158 300A0196 00084000 00204000
00402400 40080300 300A0742 300A0783 40080115 4008010B 22000002 00500021 0016002B 00102000 0018937B 00102180
00104000 00380500 00400254 300A000E 3010007B 30100081 30100061 00181030 300A0619 300A0623 300A067D 300A067C
300C0113 0040100A 00321030 3010005C 00402001 00401002 00321066 00321067 00400275 00321070 00401400 00321060
00189937 00189185 40084000 30060028 30060038 30060026 30060088 30060085 3010005A 300A0004 300A0002 300A0003
30100054 300A062A 30100056 00400007 0008103E 00380062 300A01B2 300A01A6 00400602 00400600 30060006 30060002
30060004 00324000 00081030 300A0608 30100077 3010007A 300A0734 30100033 30100034 00384000""".split()
DEVICE = """00181007 0018700A 00500020 3010002D 00181000 00181002 00181008 00181005 0016004F 00160050 00160051
0016004E 0018100B 30100043 00400241 00404030 00400242 00404028 00181004 00400011 00400001 00404027 00400010
00404025 00321020 00321021 300A0216 30080105 00081010 00185011 300A00B2 0018100A 00181009 00189371 00189373
00189367""".split()
INSTITUTION = "00120060 00120081 00120030 00120031 00080081 00081040 00081041 00080082 00080080".split()
PATIENT = {"00102110": "C", "00102160": "K", "00101010": "K", "00102203": "K", "00100040": "K", "00101020": "K",
           "00101030": "K", "00380500": "C", "001021C0": "K", "00400012": "C", "001021A0": "K", "00380050": "C"}
STRUCTURED = ["00400555", "0040A730", "00400610"]
GRAPHICS = ["50XXXXXX", "00700001", "60XX4000", "60XX3000"]
UIDS_EXTRA = {"00081140": "K", "00081111": "K", "00081110": "K", "00082112": "K", "00081120": "X",
              "00001000": "K"}
UIDS_NOT_RETAINED = {"04000100", "0040A124"}  # Digital Signature UID, UID: U without a Retain UIDs entry
# every tag the innolitics transcription lists (option columns known, blank = no entry in the table)
TRANSCRIBED_PREFIXES = None  # filled from the lists above plus the U rows; see _source()

CATEGORIES = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D",
              "X_Z_TAGS": "X/Z", "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*"}
COLUMNS = ["tag", "keyword", "name", "basic", "rtn_uids", "rtn_device", "rtn_institution", "rtn_patient",
           "rtn_dates_full", "rtn_dates_modified", "clean_descriptors", "clean_structured", "clean_graphics",
           "source"]


def _tag_text(t: tuple) -> str:
    if len(t) == 2:
        return f"{t[0]:04X}{t[1]:04X}"
    group, elem, gmask, emask = t  # masked repeating groups (50xx,xxxx), (60xx,4000)
    g = f"{group:04X}"[:2] + ("XX" if gmask == 0xFF00 else f"{group:04X}"[2:])
    e = "XXXX" if emask == 0x0000 else f"{elem:04X}"
    return g + e


def main() -> None:
    from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
    from pydicom.datadict import dictionary_description, dictionary_VR, keyword_for_tag

    db = dicom_anonymization_database_selector("dicomfields_2026c")
    transcribed = set(DATES) | set(CLEAN_DESC) | set(DEVICE) | set(INSTITUTION) | set(PATIENT) | set(STRUCTURED)
    transcribed |= set(GRAPHICS) | set(UIDS_EXTRA)
    rows = []
    for cat, code in CATEGORIES.items():
        for t in db[cat]:
            tag = _tag_text(t)
            try:
                num = int(tag, 16)
                keyword, name, vr = keyword_for_tag(num), dictionary_description(num), dictionary_VR(num)
            except (KeyError, ValueError):
                keyword, name, vr = "", {"50XXXXXX": "Curve Data", "60XX4000": "Overlay Comments",
                                         "60XX3000": "Overlay Data"}.get(tag, ""), ""
            rtn_uids = UIDS_EXTRA.get(tag, "K" if code == "U" and tag not in UIDS_NOT_RETAINED else "")
            known = tag in transcribed or code == "U"
            dates_k = tag in DATES or (not known and vr in ("DA", "DT", "TM") and tag not in ("00100030", "00100032"))
            rows.append({
                "tag": tag, "keyword": keyword, "name": name, "basic": code, "rtn_uids": rtn_uids,
                "rtn_device": "K" if tag in DEVICE else "", "rtn_institution": "K" if tag in INSTITUTION else "",
                "rtn_patient": PATIENT.get(tag, ""), "rtn_dates_full": "K" if dates_k else "",
                "rtn_dates_modified": "C" if dates_k else "", "clean_descriptors": "C" if tag in CLEAN_DESC else "",
                "clean_structured": "C" if tag in STRUCTURED else "", "clean_graphics": "C" if tag in GRAPHICS else "",
                "source": "T" if known else "R",
            })
    rows.sort(key=lambda r: r["tag"])
    out = Path(__file__).with_name("table_e1_1.csv")
    with open(out, "w", newline="", encoding="utf-8") as f:
        f.write("# DICOM PS3.15 (2026c) Table E.1-1 Application Level Confidentiality Profile Attributes.\n"
                "# Generated by medviewer/deid/_build_table.py (see its docstring for the sources).\n"
                "# basic: Basic Profile action (D dummy, Z zero length, X remove, K keep, C clean, U new UID;\n"
                "#   X/Z, X/D, Z/D, X/Z/D, X/Z/U* depend on the attribute's Type in the IOD). Option columns: the\n"
                "#   action of that option where the table gives one. source: T option entry transcribed, R by rule.\n")
        w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    print(f"{len(rows)} rows -> {out}; {sum(r['source'] == 'R' for r in rows)} with options by rule")


if __name__ == "__main__":
    main()
