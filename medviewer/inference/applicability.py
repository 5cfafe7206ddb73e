"""Applicability (intended use): whether a model may speak about an image -- one policy for every front end.

A model card (schema 2) states its intended use machine-readably
(:class:`medviewer.inference.card.Applicability`: modalities, body parts, views, patient age, photometric
interpretation) and carries an image-based out-of-distribution detector
(:class:`medviewer.inference.ood.OODDetector`). :class:`IntendedUsePolicy` checks both for every scored
image and decides:

* ``in_scope``: every header check passed or was unknown, the applicability gate (card schema 3) says
  the image looks like what the model was made for, and the OOD score is within the threshold;
* ``out_of_scope``: a present tag contradicts the card, or the gate's in-scope probability is below its
  threshold ("looks like an adult chest film (0.97)"), or the pixels are out of distribution. Then
  nothing is flagged and no region is drawn (the scores stay, for research); the reasons are one line
  each, in words a radiologist reads ("patient age 64 y; model: 1-5 y");
* ``unknown``: the card states no intended use and has no detector (schema 1): results are shown as the
  model gives them, with that said.

A missing or empty tag is "unknown", never a failure: tags are missing in many real studies, which is why
the pixels are checked too. ``ignore_intended_use=True`` overrides the decision (findings are shown); the
override is recorded in the result.

The decision is a frozen, typed :class:`Assessment` (a :class:`Status`, the reasons, the checks, and
whether the reader overrode it); it travels from the policy to every view on
:attr:`medviewer.inference.session.Prediction.applicability`. The withhold rule is written once,
:attr:`Assessment.withheld`; :meth:`Assessment.to_dict` / :meth:`Assessment.from_dict` are for the edges only
(``results.json``, DICOM SR, the CLI, the ``serve`` status).

This module is Qt-free and sits in ``inference`` (below ``export`` and ``workstation``, which both use it;
:mod:`medviewer.workstation.intended_use` re-exports it): ``medviewer infer`` and the workstation call the
same functions.

Example
-------
>>> policy = IntendedUsePolicy(package.card)  # doctest: +SKIP
>>> a = policy.apply(instance, prediction)  # doctest: +SKIP
>>> a.status, a.withheld, a.reasons  # doctest: +SKIP
(<Status.OUT_OF_SCOPE: 'out_of_scope'>, True, ('patient age 64 y; model: 1–5 y',))
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from enum import Enum
from typing import Any

import numpy as np

from medviewer.inference.card import Applicability, ModelCard

#: modalities a schema-1 card (no stated intended use) is run on automatically: projection radiographs and
#: secondary captures / other (which PNG/JPEG files read as)
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG", "OT", "SC", "XC"})

__all__ = [
    "RADIOGRAPH_MODALITIES",
    "Status",
    "CheckStatus",
    "Check",
    "Assessment",
    "HeaderFacts",
    "header_facts",
    "check_header",
    "assess",
    "IntendedUsePolicy",
    "should_auto_run",
    "parse_age_string",
    "findings_withheld",
    "scope_label",
    "OUT_OF_SCOPE_LABEL",
    "OVERRIDDEN_LABEL",
    "show_anyway",
]


class Status(str, Enum):
    """The applicability of a model to one image."""

    IN_SCOPE = "in_scope"
    OUT_OF_SCOPE = "out_of_scope"
    UNKNOWN = "unknown"  #: the card states no intended use and has no OOD detector (schema 1)


class CheckStatus(str, Enum):
    """The outcome of one check."""

    PASS = "pass"
    FAIL = "fail"
    UNKNOWN = "unknown"  #: the tag is missing or empty, or the card does not constrain it


@dataclass(frozen=True)
class Check:
    """One criterion: what the image says, what the model accepts, and the outcome."""

    name: str
    status: CheckStatus
    value: str | None
    expected: str | None
    reason: str | None = None

    def to_dict(self) -> dict:
        return {"status": self.status.value, "value": self.value, "expected": self.expected, "reason": self.reason}


#: the line drawn on an out-of-scope image (viewport, PNG export, overlays), withheld / shown anyway
OUT_OF_SCOPE_LABEL = "AI: OUTSIDE THE MODEL'S INTENDED USE"
OVERRIDDEN_LABEL = "AI SHOWN ANYWAY: OUTSIDE THE MODEL'S INTENDED USE"


def _number(value: Any) -> float | None:
    """A serialised score back to a float: ``None`` stays None, ``"inf"`` (how :meth:`Assessment.to_dict`
    writes an infinite OOD score into JSON) is ``inf``; anything unreadable is None."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, eq=False)
class Assessment(Mapping):
    """Applicability of a model to one image (see the module docstring): a frozen, typed value.

    Attributes
    ----------
    status
        :class:`Status`.
    reasons
        One line per failed criterion, in words a radiologist reads ("patient age 64 y; model: 1-5 y").
    checks
        Criterion name -> :class:`Check` (``modality``, ``body_part``, ``view``, ``photometric``, ``age``,
        ``appearance``, ``image``).
    ood_score, ood_threshold
        The image's out-of-distribution score and the card's threshold (None: no detector).
    overridden
        The reader (or ``--ignore-intended-use``) asked to see the findings anyway.
    gate
        :meth:`medviewer.inference.gate.GateVerdict.to_dict` when the card has a gate.

    ``to_dict()`` is what ``results.json`` stores per image under ``"applicability"``; :meth:`from_dict`
    reads it back. For code written against that dict, an Assessment also reads like it (a read-only
    :class:`~collections.abc.Mapping` over ``to_dict()``, equal to a dict with the same content); new code
    uses the attributes.
    """

    status: Status
    reasons: tuple[str, ...] = ()
    checks: Mapping[str, Check] = field(default_factory=dict)
    ood_score: float | None = None
    ood_threshold: float | None = None
    overridden: bool = False
    gate: dict | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))
        object.__setattr__(self, "reasons", tuple(str(r) for r in self.reasons))
        object.__setattr__(self, "overridden", bool(self.overridden))

    # -- the one rule ----------------------------------------------------------------------------------
    @property
    def out_of_scope(self) -> bool:
        """True when the policy found the image outside the model's intended use (overridden or not)."""
        return self.status == Status.OUT_OF_SCOPE

    @property
    def in_scope(self) -> bool:
        """True unless out of scope (``unknown`` counts as in scope: nothing is known against it)."""
        return self.status != Status.OUT_OF_SCOPE

    @property
    def withheld(self) -> bool:
        """True when out of scope and not overridden: no flag, heat map or region may be shown or exported
        for the result -- the one withhold rule every view and export follows."""
        return self.status == Status.OUT_OF_SCOPE and not self.overridden

    @property
    def scope_label(self) -> str | None:
        """The line drawn on an out-of-scope image (:data:`OUT_OF_SCOPE_LABEL`, or :data:`OVERRIDDEN_LABEL`
        once shown anyway); None in scope."""
        if self.status != Status.OUT_OF_SCOPE:
            return None
        return OVERRIDDEN_LABEL if self.overridden else OUT_OF_SCOPE_LABEL

    def with_override(self) -> Assessment:
        """The same assessment, overridden (the reader pressed "Show anyway")."""
        return replace(self, overridden=True)

    def summary(self) -> str:
        """One line for a status bar or a CSV cell."""
        if self.status == Status.OUT_OF_SCOPE:
            text = "outside intended use: " + "; ".join(self.reasons)
            return text + (" (overridden: shown anyway)" if self.overridden else "")
        if self.status == Status.UNKNOWN:
            return "intended use not stated by the model card (schema 1)"
        return "within intended use"

    # -- the edges -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready: ``{"status", "reasons", "checks", "ood_score", "ood_threshold", "overridden"[, "gate"]}``
        (an infinite OOD score is written ``"inf"``)."""
        ood = self.ood_score
        return {
            "status": self.status.value,
            "reasons": list(self.reasons),
            "checks": {k: c.to_dict() for k, c in self.checks.items()},
            "ood_score": None if ood is None else (round(float(ood), 4) if np.isfinite(ood) else "inf"),
            "ood_threshold": None if self.ood_threshold is None else round(float(self.ood_threshold), 4),
            "overridden": self.overridden,
            **({"gate": self.gate} if self.gate is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Assessment:
        """Read :meth:`to_dict`'s form back (``results.json``, an SR, a test's literal). Missing keys take
        their defaults; a missing status is ``unknown``.

        Raises
        ------
        ValueError
            ``status`` is not one of :class:`Status`' values.
        """
        if isinstance(data, Assessment):
            return data
        checks = {}
        for name, c in dict(data.get("checks") or {}).items():
            if isinstance(c, Check):
                checks[str(name)] = c
            elif isinstance(c, Mapping):
                checks[str(name)] = Check(str(name), CheckStatus(c.get("status", CheckStatus.UNKNOWN.value)),
                                          c.get("value"), c.get("expected"), c.get("reason"))
        gate = data.get("gate")
        return cls(Status(data.get("status") or Status.UNKNOWN.value), tuple(data.get("reasons") or ()), checks,
                   _number(data.get("ood_score")), _number(data.get("ood_threshold")),
                   bool(data.get("overridden", False)), dict(gate) if isinstance(gate, Mapping) else None)

    @classmethod
    def coerce(cls, value: Assessment | Mapping[str, Any] | None) -> Assessment | None:
        """``value`` as an Assessment: itself, :meth:`from_dict` of a mapping, or None."""
        if value is None or isinstance(value, Assessment):
            return value
        return cls.from_dict(value)

    # -- read-only mapping over to_dict() (code written against the dict form) -------------------------
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    def __repr__(self) -> str:
        return f"Assessment({self.status.value}, reasons={list(self.reasons)}, overridden={self.overridden})"


# ---------------------------------------------------------------------------------------------- header
@dataclass(frozen=True)
class HeaderFacts:
    """What the header (or, for PNG/JPEG, the pixels) says about the criteria; None = unknown."""

    modality: str | None = None
    body_part: str | None = None
    view: str | None = None
    view_source: str | None = None
    age_years: float | None = None
    age_source: str | None = None
    photometric: str | None = None


def _text(ds: Any, keyword: str) -> str | None:
    """The first value of ``keyword`` as stripped text through the header reader
    (:func:`medviewer.io.header.text`), ``None`` when absent, empty or unreadable (a malformed element must
    not break the policy: it is unknown)."""
    from medviewer.io import header  # on first use: the GUI imports this module before its window shows

    first = header.text(ds, keyword).split("\\", 1)[0].strip()
    return first or None


_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def parse_age_string(text: str | None) -> float | None:
    """Patient's Age (0010,1010), VR AS ``nnnD|W|M|Y`` (PS3.5 Table 6.2-1) -> years, or None if absent,
    malformed or the placeholder ``"000Y"`` (e.g. ``"064Y"`` -> 64.0, ``"018M"`` -> 1.5)."""
    if not text:
        return None
    m = _AGE.match(text)
    if not m:
        return None
    if int(m.group(1)) == 0 and m.group(2).upper() == "Y":
        return None  # "000Y" is a common placeholder of anonymisers; a newborn is coded in days or weeks
    return int(m.group(1)) * _AGE_UNIT_YEARS[m.group(2).upper()]


def _date(text: str | None) -> date | None:
    if not text:
        return None
    digits = re.sub(r"[^0-9]", "", text)[:8]
    if len(digits) != 8:
        return None
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None


#: View Code Sequence (0054,0220) codes (SNOMED CT and the legacy SRT codes of PS3.16 CID 4010) -> View Position
_VIEW_CODES = {
    "399348003": "AP", "R-10206": "AP", "399173006": "PA", "R-10214": "PA",
    "399198007": "RL", "R-10232": "RL", "399067008": "LL", "R-10236": "LL",
}
_VIEW_WORDS = (("antero-posterior", "AP"), ("anteroposterior", "AP"), ("postero-anterior", "PA"),
               ("posteroanterior", "PA"), ("right lateral", "RL"), ("left lateral", "LL"), ("lateral", "LATERAL"))


def _view(ds: Any) -> tuple[str | None, str | None]:
    vp = _text(ds, "ViewPosition")
    if vp:
        return vp.upper(), "View Position"
    try:
        seq = ds.get("ViewCodeSequence") if ds is not None else None
        item = seq[0] if seq else None
    except Exception:
        item = None
    if item is None:
        return None, None
    code = _text(item, "CodeValue")
    if code and code in _VIEW_CODES:
        return _VIEW_CODES[code], "View Code Sequence"
    meaning = (_text(item, "CodeMeaning") or "").lower()
    for word, view in _VIEW_WORDS:
        if word in meaning:
            return view, "View Code Sequence"
    return None, None


def _age(ds: Any) -> tuple[float | None, str | None]:
    years = parse_age_string(_text(ds, "PatientAge"))
    if years is not None:
        return years, "Patient's Age"
    born = _date(_text(ds, "PatientBirthDate"))
    if born is None:
        return None, None
    for kw, name in (("StudyDate", "Study Date"), ("SeriesDate", "Series Date"),
                     ("AcquisitionDate", "Acquisition Date"), ("ContentDate", "Content Date")):
        when = _date(_text(ds, kw))
        if when is not None and when >= born:
            return (when - born).days / 365.25, f"Patient's Birth Date and {name}"
    return None, None


def _raster_photometric(image_u8: np.ndarray | None) -> str | None:
    if image_u8 is None:
        return None
    if image_u8.ndim == 2:
        return "MONOCHROME2"
    if image_u8.ndim == 3 and image_u8.shape[2] >= 3:
        grey = np.array_equal(image_u8[..., 0], image_u8[..., 1]) and np.array_equal(image_u8[..., 1], image_u8[..., 2])
        return "MONOCHROME2" if grey else "RGB"
    return None


def header_facts(instance: Any, image_u8: np.ndarray | None = None) -> HeaderFacts:
    """Read the criteria from an :class:`medviewer.io.Instance` (its header ``dataset``).

    For PNG/JPEG (no header) everything is unknown except the photometric interpretation, read from the
    display image ``image_u8`` (uint8 ``(H, W)`` or ``(H, W, 3)``): grey (R = G = B) is MONOCHROME2.
    """
    ds = getattr(instance, "dataset", None)
    if ds is None or not getattr(instance, "is_dicom", ds is not None):
        return HeaderFacts(photometric=_raster_photometric(image_u8))
    modality = _text(ds, "Modality")
    view, view_src = _view(ds)
    age, age_src = _age(ds)
    body = _text(ds, "BodyPartExamined")
    photometric = _text(ds, "PhotometricInterpretation")
    return HeaderFacts(modality=modality.upper() if modality else None, body_part=body.upper() if body else None,
                       view=view, view_source=view_src, age_years=age, age_source=age_src,
                       photometric=photometric.upper() if photometric else None)


def _fmt_years(y: float) -> str:
    if y < 1:
        months = int(y * 12 + 1e-9)
        return f"{months} mo"
    return f"{int(y + 1e-9)} y"


def _fmt_range(lo: float, hi: float) -> str:
    return f"{lo:g}\u2013{hi:g} y"


def _membership(name: str, label: str, value: str | None, accepted: list[str], source: str | None = None) -> Check:
    want = [a.upper() for a in accepted]
    expected = ", ".join(want) if want else None
    if not want:
        return Check(name, CheckStatus.UNKNOWN, value, None)
    if not value:
        return Check(name, CheckStatus.UNKNOWN, None, expected)
    if value.upper() in want:
        return Check(name, CheckStatus.PASS, value, expected)
    shown = value if not source or source == label else f"{value} ({source})"
    return Check(name, CheckStatus.FAIL, value, expected, f"{label} {shown}; model: {expected}")


def check_header(app: Applicability | None, facts: HeaderFacts) -> dict[str, Check]:
    """Each criterion of ``app`` against ``facts``: ``{"modality", "body_part", "view", "age",
    "photometric"}`` -> :class:`Check`. With ``app`` None (schema 1 card) every check is unknown."""
    app = app or Applicability()
    checks = {
        "modality": _membership("modality", "modality", facts.modality, app.modalities),
        "body_part": _membership("body_part", "body part", facts.body_part, app.body_parts),
        "view": _membership("view", "view", facts.view, app.views, facts.view_source),
        "photometric": _membership("photometric", "photometric interpretation", facts.photometric, app.photometric),
    }
    if app.age_years is None:
        checks["age"] = Check("age", CheckStatus.UNKNOWN, None if facts.age_years is None else _fmt_years(facts.age_years), None)
    else:
        lo, hi = app.age_years
        expected = _fmt_range(lo, hi)
        if facts.age_years is None:
            checks["age"] = Check("age", CheckStatus.UNKNOWN, None, expected)
        else:
            completed = int(facts.age_years + 1e-9) if facts.age_years >= 1 else facts.age_years
            ok = lo <= completed <= hi
            shown = _fmt_years(facts.age_years)
            checks["age"] = Check("age", CheckStatus.PASS if ok else CheckStatus.FAIL, shown, expected,
                                  None if ok else f"patient age {shown}; model: {expected}")
    return checks


def assess(card: ModelCard, facts: HeaderFacts, ood_score: float | None, ood_threshold: float | None = None, *,
           ignore_intended_use: bool = False, gate: dict[str, float] | None = None) -> Assessment:
    """The decision for one image from its header facts, gate probabilities and OOD score -- the one rule
    (see the module docstring): out of scope when any present tag contradicts the card, OR the gate's
    in-scope probability is below ``card.gate.threshold``, OR ``ood_score`` exceeds the OOD threshold.

    ``gate`` is :attr:`medviewer.inference.session.Prediction.gate` (class -> probability); with a gate in
    the card but no probabilities (``None``) the appearance check is "unknown".
    """
    from medviewer.inference.gate import verdict  # the GUI imports this module before its window shows

    checks = check_header(card.applicability, facts)
    thr = ood_threshold if ood_threshold is not None else (card.ood.threshold if card.ood is not None else None)
    reasons = [c.reason for c in checks.values() if c.status == CheckStatus.FAIL and c.reason]
    gate_dict = None
    if card.gate is not None:
        expected = f"{card.gate.phrase(card.gate.in_scope_class)} >= {card.gate.threshold:.2f}"
        if gate is None:
            checks["appearance"] = Check("appearance", CheckStatus.UNKNOWN, None, expected)
        else:
            v = verdict(card.gate, gate)
            gate_dict = v.to_dict()
            shown = f"{v.looks_like.replace('_', ' ')} {v.looks_like_probability:.2f}"
            checks["appearance"] = Check("appearance", CheckStatus.PASS if v.in_scope else CheckStatus.FAIL,
                                         shown, expected, v.reason)
            if v.reason:
                reasons.append(v.reason)
    if thr is not None:
        if ood_score is None:
            checks["image"] = Check("image", CheckStatus.UNKNOWN, None, f"OOD score <= {thr:.3g}")
        elif not np.isfinite(ood_score) or ood_score > thr:
            checks["image"] = Check("image", CheckStatus.FAIL, f"{ood_score:.3g}", f"<= {thr:.3g}",
                                    "the image does not look like the model's training images "
                                    f"(out-of-distribution score {ood_score:.3g} > {thr:.3g})")
            reasons.append(checks["image"].reason or "")
        else:
            checks["image"] = Check("image", CheckStatus.PASS, f"{ood_score:.3g}", f"<= {thr:.3g}")
    if reasons:
        status = Status.OUT_OF_SCOPE
    elif card.applicability is None and card.ood is None and card.gate is None:
        status = Status.UNKNOWN
    else:
        status = Status.IN_SCOPE
    return Assessment(status, tuple(reasons), checks, ood_score, thr,
                      overridden=ignore_intended_use and bool(reasons), gate=gate_dict)


class IntendedUsePolicy:
    """Applies a model card's intended use to predictions: the one policy of every front end.

    Parameters
    ----------
    card
        The model's card.
    ignore_intended_use
        Show findings on out-of-scope images anyway (recorded as ``overridden`` in the assessment).

    Calling the policy (``policy(instance, display_u8, prediction)``, the signature
    :func:`medviewer.inference.batch.score_instances` expects) is :meth:`apply`.
    """

    def __init__(self, card: ModelCard, *, ignore_intended_use: bool = False) -> None:
        self.card = card
        self.ignore_intended_use = bool(ignore_intended_use)

    def apply(self, instance: Any, prediction: Any, image_u8: np.ndarray | None = None) -> Assessment:
        """Assess ``prediction`` (a :class:`medviewer.inference.session.Prediction`) of ``instance`` and record
        the result (the :class:`Assessment`) in ``prediction.applicability``. Out of scope (and not overridden): ``flagged`` and
        ``regions`` move to ``suppressed_flags`` / ``suppressed_regions``; the scores are kept."""
        inst = getattr(instance, "instance", instance)  # a batch FrameRef wraps its instance
        facts = header_facts(inst, image_u8)
        a = assess(self.card, facts, prediction.ood_score, ignore_intended_use=self.ignore_intended_use,
                   gate=getattr(prediction, "gate", None))
        if a.status == Status.OUT_OF_SCOPE and not self.ignore_intended_use and prediction.flagged is not None:
            prediction.suppressed_flags = list(prediction.flagged)
            prediction.suppressed_regions = list(prediction.regions)
            prediction.flagged = []
            prediction.regions = []
        prediction.applicability = a
        return a

    def __call__(self, instance: Any, image_u8: np.ndarray | None, prediction: Any) -> Assessment:
        return self.apply(instance, prediction, image_u8)


def findings_withheld(applicability: Assessment | Mapping[str, Any] | None) -> bool:
    """:attr:`Assessment.withheld` of a result's applicability (an Assessment, its dict form, or None: not
    withheld) -- for callers that hold whatever ``Prediction.applicability`` holds."""
    a = Assessment.coerce(applicability)
    return a is not None and a.withheld


def scope_label(applicability: Assessment | Mapping[str, Any] | None) -> str | None:
    """:attr:`Assessment.scope_label` of a result's applicability (None in scope or when not assessed)."""
    a = Assessment.coerce(applicability)
    return None if a is None else a.scope_label


def show_anyway(prediction: Any) -> bool:
    """The reader's override of an out-of-scope result: bring back the withheld flags and regions and record
    ``overridden`` (:meth:`Assessment.with_override`). Returns False (and changes nothing) when nothing was
    withheld."""
    a = Assessment.coerce(prediction.applicability)
    if a is None or not a.withheld:
        return False
    prediction.flagged, prediction.regions = list(prediction.suppressed_flags), list(prediction.suppressed_regions)
    prediction.applicability = a.with_override()
    return True


def should_auto_run(card: ModelCard, instance: Any) -> tuple[bool, str | None]:
    """Whether "run AI on open" should run ``card``'s model on ``instance`` without being asked.

    The gate is the modality (a chest X-ray model is not run on every CT slice a reader scrolls through):
    False, with the reason, when the header's Modality contradicts the card's ``applicability.modalities``;
    True otherwise -- other criteria (age, body part, view) do not stop the run, they make the result
    "outside intended use", which the reader then sees said. A schema-1 card without applicability keeps
    the historical rule: :data:`RADIOGRAPH_MODALITIES` and files without a modality (PNG/JPEG) only.
    """
    facts = header_facts(getattr(instance, "instance", instance))
    mod = facts.modality
    if card.applicability is None or not card.applicability.modalities:
        if mod is None or mod in RADIOGRAPH_MODALITIES or card.applicability is not None:
            return True, None
        return False, f"modality {mod} is not a projection radiograph"
    check = _membership("modality", "modality", mod, card.applicability.modalities)
    return (check.status != CheckStatus.FAIL), check.reason
