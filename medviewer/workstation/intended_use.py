"""Intended use -- moved to :mod:`medviewer.inference.applicability` (below ``export``, so nothing in the
export layer imports the workstation); this module re-exports it so existing imports keep working.
"""

from __future__ import annotations

from medviewer.inference.applicability import (  # noqa: F401 - re-exported
    OUT_OF_SCOPE_LABEL,
    OVERRIDDEN_LABEL,
    RADIOGRAPH_MODALITIES,
    Assessment,
    Check,
    CheckStatus,
    HeaderFacts,
    IntendedUsePolicy,
    Status,
    __all__,
    _membership,
    assess,
    check_header,
    findings_withheld,
    header_facts,
    parse_age_string,
    scope_label,
    should_auto_run,
    show_anyway,
)
