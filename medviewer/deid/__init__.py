"""De-identification: DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile (Qt-free).

:func:`anonymize_dataset` (``ds, options, key -> Dataset``) is the one entry point every export path
calls; :class:`DeidOptions` selects the E.3 options; Table E.1-1 is data (``table_e1_1.csv``, loaded by
:func:`load_table`).
"""

from medviewer.deid.engine import (
    BASIC_PROFILE_CODE,
    BurnedInAnnotationError,
    DeidOptions,
    anonymize_dataset,
    keyed_uid,
    load_key,
    pseudonym,
)
from medviewer.deid.profile import TABLE_EDITION, Option, ProfileRow, load_table, lookup

__all__ = ["anonymize_dataset", "DeidOptions", "BurnedInAnnotationError", "keyed_uid", "pseudonym", "load_key",
           "BASIC_PROFILE_CODE", "Option", "ProfileRow", "load_table", "lookup", "TABLE_EDITION"]
