"""The model card: ``model.json`` of a model package, schema version 2 (version 1 still loads).

This module is the single definition of the contract between ``training`` (which writes cards through
:class:`ModelCard`) and the app (which validates them). It is inspired by MONAI Bundle's
``metadata.json``. A model package is a directory holding::

    model.onnx     # inputs: card.input.name (N, C, H, W) float32; outputs: card.outputs.logits (N, K),
                   # card.outputs.cam (N, K, h, w), the class activation maps (Zhou et al. 2016), and
                   # (v2, optional) card.outputs.features (N, D), pooled features for out-of-distribution scoring
    model.json     # this card
    ood.npz        # (v2, optional) the statistics that score card.outputs.features (see OODSpec)
    gate.onnx      # (v3, optional) the applicability gate: what the image is (see GateSpec)
    README.md      # optional human-readable card
    plots/*.png    # optional evaluation plots

Schema 2 adds what the app needs to decide whether the model applies to an image at all:
:class:`Applicability` (the intended use, machine-readable, checked against the DICOM header),
:class:`OODSpec` (image-based out-of-distribution detection, for files without tags and tags that lie),
``files`` (the SHA-256 of every file of the package, checked on load) and ``history``.
A schema-1 card loads with ``applicability = None`` and no OOD detector ("unknown" applicability).

Schema 3 adds :class:`GateSpec`: a second, small ONNX classifier shipped in the package that says what an
image *is* (e.g. paediatric chest / adult chest / other radiograph / not a radiograph), trained with real
out-of-scope images (outlier exposure), so the app can say "looks like an adult chest film (0.97)" from the
pixels alone. Schema 1 and 2 cards load unchanged (no gate).

The input tensor and preprocessing parameters (:class:`InputSpec`, :class:`Preprocessing`,
:class:`ResizeMode`) are defined in the leaf module :mod:`medviewer.spec`, which
:mod:`medviewer.imaging.preprocess` uses without importing this package; they are re-exported here, so
``from medviewer.inference.card import InputSpec`` keeps working.

Changing this schema is a deliberate act: bump :data:`SCHEMA_VERSION` and keep reading old versions.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from medviewer.errors import ModelPackageError
from medviewer.spec import InputSpec, Preprocessing, ResizeMode
from medviewer.spec import StrictModel as _Strict

__all__ = [
    "SCHEMA_VERSION",
    "Task",
    "ResizeMode",
    "InputSpec",
    "Preprocessing",
    "OutputSpec",
    "OperatingPoint",
    "Metrics",
    "ComparisonRow",
    "Provenance",
    "Producer",
    "ModelCard",
    "Applicability",
    "OODLayer",
    "OODSpec",
    "GateSpec",
    "HistoryEntry",
    "SUPPORTED_SCHEMAS",
    "sha256_file",
    "load_card",
    "save_card",
]

SCHEMA_VERSION: Literal[1, 2, 3] = 3
#: schema versions this app reads
SUPPORTED_SCHEMAS = (1, 2, 3)


class Task(str, Enum):
    """How logits become probabilities."""

    MULTICLASS = "multiclass"  #: softmax over K mutually exclusive labels
    MULTILABEL = "multilabel"  #: independent sigmoid per label


class OutputSpec(_Strict):
    """Names of the ONNX outputs: logits (N, K), class activation maps (N, K, h, w) and, optionally
    (schema 2), pooled features (N, D) for out-of-distribution scoring (None: the graph has none)."""

    logits: str = "logits"
    cam: str = "cam"
    features: str | None = None


class Applicability(_Strict):
    """The intended use, machine-readable: which images the model may speak about (schema 2).

    Each criterion is checked against the image's DICOM header by
    :func:`medviewer.workstation.intended_use.check_header`; an empty list (or None) accepts anything, a
    missing or empty tag is "unknown" (never a failure), a present tag that contradicts the card is a
    failure. Comparisons are case-insensitive.

    Attributes
    ----------
    modalities
        Modality (0008,0060) defined terms, e.g. ``["CR", "DX"]`` (PS3.3 C.7.3.1.1.1).
    body_parts
        Body Part Examined (0018,0015) defined terms, e.g. ``["CHEST"]`` (PS3.16 Annex L).
    views
        View Position (0018,5101) defined terms, e.g. ``["AP", "PA"]`` (PS3.3 C.8.11.5.1.1); View Code
        Sequence (0054,0220) SNOMED CT codes are mapped onto them.
    age_years
        ``(min, max)`` inclusive, in completed years: a patient aged 5 y 11 m is 5. From Patient's Age
        (0010,1010), else Patient's Birth Date against Study/Series/Acquisition/Content Date.
    photometric
        Accepted Photometric Interpretation (0028,0004) values, e.g. ``["MONOCHROME1", "MONOCHROME2"]``;
        for PNG/JPEG, a grey image (R = G = B) counts as MONOCHROME2 and anything else as RGB.
    """

    modalities: list[str] = Field(default_factory=list)
    body_parts: list[str] = Field(default_factory=list)
    views: list[str] = Field(default_factory=list)
    age_years: tuple[float, float] | None = None
    photometric: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ages(self) -> Applicability:
        if self.age_years is not None:
            lo, hi = self.age_years
            if not (0 <= lo <= hi <= 150):
                raise ValueError(f"age_years must satisfy 0 <= min <= max <= 150, got {self.age_years}")
        return self


class OODLayer(_Strict):
    """One block of the features output scored by a Mahalanobis distance: columns ``[start, stop)``."""

    name: str
    start: int = Field(ge=0)
    stop: int = Field(gt=0)
    normaliser: float = Field(gt=0, description="median distance of this block on the validation split")

    @model_validator(mode="after")
    def _range(self) -> OODLayer:
        if self.stop <= self.start:
            raise ValueError(f"layer {self.name!r}: stop {self.stop} must exceed start {self.start}")
        return self


class OODSpec(_Strict):
    """Image-based out-of-distribution detection from the graph's pooled features (schema 2).

    Score (Lee et al. 2018, "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
    Adversarial Attacks", NeurIPS, with their feature ensemble over layers): for each block ``l`` of the
    features output, ``f = log1p(max(x, 0))`` (if ``transform == "log1p"``), the Mahalanobis distance to the
    nearest class mean with the shared (Ledoit-Wolf) covariance, ``d_l = min_k (f - mu_lk)^T P_l (f - mu_lk)``;
    the score is ``mean_l(d_l / normaliser_l)`` (about 1 on the training distribution). An image whose score
    exceeds ``threshold`` is out of distribution. Means ``mu`` and precisions ``P`` are in ``file``
    (``<layer>.means`` (K, D_l), ``<layer>.precision`` (D_l, D_l), float64), hashed in the card's ``files``.
    """

    method: Literal["mahalanobis"] = "mahalanobis"
    file: str = "ood.npz"
    transform: Literal["log1p", "none"] = "log1p"
    layers: list[OODLayer] = Field(min_length=1)
    threshold: float = Field(gt=0)
    calibration: str = Field(description="how the threshold was chosen, and on which split")
    target_false_rejection: float = Field(ge=0, le=1)
    validation_false_rejection: float = Field(ge=0, le=1)
    shifted_false_rejection: float | None = Field(None, ge=0, le=1)
    n_fit: int = Field(ge=1, description="training images the statistics were fitted on")
    detection: dict[str, float] = Field(
        default_factory=dict, description="measured detection rates / AUROC on named out-of-scope sets")


class GateSpec(_Strict):
    """The applicability gate (schema 3): a small classifier that says what an image is, from pixels alone.

    ``file`` (hashed in the card's ``files``) is an ONNX graph with input ``input.name`` float32
    ``(N, C, H, W)``, fed by :func:`medviewer.imaging.preprocess.preprocess` with ``preprocessing`` from the
    same display image the model sees, and output ``output`` float32 ``(N, K)``: softmax probabilities over
    ``classes``. The image is within the model's intended use by appearance when the probability of
    ``in_scope_class`` is at least ``threshold``; otherwise the reason names the most probable other class
    with its probability, in the words of ``phrases`` ("looks like an adult chest film (0.97)").

    The rule that combines the gate with the header checks and the Mahalanobis score (:class:`OODSpec`) is
    :func:`medviewer.workstation.intended_use.assess`: out of scope when any present tag contradicts the
    card, OR the gate's in-scope probability is below ``threshold``, OR the OOD score exceeds its threshold.

    Reference: Hendrycks, Mazeika & Dietterich (2019), "Deep Anomaly Detection with Outlier Exposure", ICLR.
    """

    file: str = "gate.onnx"
    version: str = Field("1.0.0", min_length=1)
    input: InputSpec
    preprocessing: Preprocessing
    output: str = "probabilities"
    classes: list[str] = Field(min_length=2)
    in_scope_class: str
    phrases: dict[str, str] = Field(
        default_factory=dict, description="class -> what the image looks like, e.g. 'an adult chest film'")
    threshold: float = Field(ge=0.0, le=1.0)
    calibration: str = Field(description="how the threshold was chosen, and on which images")
    training: str = Field("", description="data, sources, command")
    validation: list[dict[str, float | str | int]] = Field(
        default_factory=list, description="measured rates per held-out set (see the package README)")

    @model_validator(mode="after")
    def _classes(self) -> GateSpec:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("gate classes must be unique")
        if self.in_scope_class not in self.classes:
            raise ValueError(f"gate in_scope_class {self.in_scope_class!r} is not one of {self.classes}")
        unknown = sorted(set(self.phrases) - set(self.classes))
        if unknown:
            raise ValueError(f"gate phrases for unknown classes {unknown}")
        return self

    def phrase(self, cls: str) -> str:
        """What an image of class ``cls`` looks like, in words ("an adult chest film")."""
        return self.phrases.get(cls, cls.replace("_", " "))


class HistoryEntry(_Strict):
    """An earlier version of the model, so users see what changed."""

    version: str
    created: str = ""
    changes: str
    metrics: list[Metrics] = Field(default_factory=list)


class OperatingPoint(_Strict):
    """Decision threshold for one positive label, chosen on a validation split (never on test)."""

    label: str
    threshold: float = Field(ge=0.0, le=1.0)
    criterion: str = Field(description="e.g. 'youden' or 'sensitivity>=0.95'")
    split: str = Field(description="the split it was chosen on, e.g. 'validation (patient-level, 15%)'")
    sensitivity: float = Field(ge=0.0, le=1.0)
    specificity: float = Field(ge=0.0, le=1.0)


class Metrics(_Strict):
    """Evaluation of one model on one split, at the card's operating point where one applies."""

    split: str
    n: int = Field(ge=0)
    auroc: float | None = None
    auroc_ci95: tuple[float, float] | None = None
    accuracy: float | None = None
    sensitivity: float | None = None
    specificity: float | None = None
    precision: float | None = None
    f1: float | None = None
    brier: float | None = None
    confusion_matrix: list[list[int]] | None = None
    ci95: dict[str, tuple[float, float]] | None = Field(
        None, description="95 % intervals of auroc/sensitivity/specificity/accuracy; see ci_method")
    ci_method: str | None = Field(None, description="e.g. 'percentile bootstrap over patients, 2000 resamples'")
    ece: float | None = Field(None, ge=0.0, le=1.0, description="expected calibration error, 15 equal-width bins")
    cam_in_thorax: float | None = Field(
        None, ge=0.0, le=1.0, description="share of correctly flagged images whose CAM peak lies in the thorax")


class ComparisonRow(_Strict):
    """A baseline evaluated on the same split (e.g. HOG+SVM), for the card's comparison table."""

    name: str
    description: str = ""
    metrics: Metrics


class Provenance(_Strict):
    """Where the weights came from."""

    dataset: str
    citation: str
    data_licence: str
    split: str
    counts: dict[str, int] = Field(default_factory=dict)
    epochs: int = Field(ge=0)
    seed: int
    command: str
    architecture: str = ""


class Producer(_Strict):
    name: str = "medviewer-training"
    version: str = "0.1.0"


class ModelCard(_Strict):
    """``model.json``: everything the app needs to run, explain and present a model honestly."""

    schema_version: Literal[1, 2, 3] = SCHEMA_VERSION
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: str = Field(min_length=1)
    description: str
    intended_use: str
    limitations: str
    task: Task
    labels: list[str] = Field(min_length=1)
    negative_label: str | None = Field(
        None, description="multiclass only: the label meaning 'no finding' (never flagged)")
    input: InputSpec
    preprocessing: Preprocessing
    outputs: OutputSpec = Field(default_factory=OutputSpec)
    operating_points: list[OperatingPoint] = Field(default_factory=list)
    metrics: list[Metrics] = Field(default_factory=list)
    comparisons: list[ComparisonRow] = Field(default_factory=list)
    training: Provenance
    authors: list[str] = Field(default_factory=list)
    license: str
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    producer: Producer = Field(default_factory=Producer)
    onnx_opset: int = Field(ge=7)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    applicability: Applicability | None = None
    ood: OODSpec | None = None
    gate: GateSpec | None = None
    files: dict[str, str] = Field(
        default_factory=dict, description="package-relative path -> SHA-256 of every file but model.json (schema 2)")
    history: list[HistoryEntry] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _default_files(cls, data: object) -> object:
        # a schema-2 card always hashes its ONNX file: fill files["model.onnx"] when a writer left files out
        if (isinstance(data, dict) and data.get("schema_version", SCHEMA_VERSION) >= 2 and not data.get("files")
                and isinstance(data.get("sha256"), str)):
            data = {**data, "files": {"model.onnx": data["sha256"]}}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        if self.negative_label is not None and self.negative_label not in self.labels:
            raise ValueError(f"negative_label {self.negative_label!r} is not one of labels")
        for op in self.operating_points:
            if op.label not in self.labels:
                raise ValueError(f"operating point for unknown label {op.label!r}")
        if len(self.preprocessing.mean) != self.input.channels or len(self.preprocessing.std) != self.input.channels:
            raise ValueError("preprocessing mean/std need one value per input channel")
        for rel, digest in self.files.items():
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"files[{rel!r}] is not a SHA-256 hex digest")
            if rel.startswith(("/", "\\")) or ".." in Path(rel).parts or rel == "model.json":
                raise ValueError(f"files lists {rel!r}: only package-relative paths other than model.json")
        if self.schema_version < 2:
            if self.applicability is not None or self.ood is not None or self.outputs.features is not None:
                raise ValueError("applicability, ood and outputs.features need schema_version 2")
        if self.gate is not None:
            if self.schema_version < 3:
                raise ValueError("gate needs schema_version 3")
            if self.gate.file not in self.files:
                raise ValueError(f"gate.file {self.gate.file!r} is not hashed in files")
        if self.ood is not None:
            if self.outputs.features is None:
                raise ValueError("ood needs outputs.features (the graph output it scores)")
            if self.ood.file not in self.files:
                raise ValueError(f"ood.file {self.ood.file!r} is not hashed in files")
        return self

    @property
    def positive_labels(self) -> list[str]:
        """Labels that can be flagged (all but :attr:`negative_label`)."""
        return [lab for lab in self.labels if lab != self.negative_label]

    def operating_point(self, label: str) -> OperatingPoint | None:
        """The operating point of ``label``, or None when the card has none for it."""
        return next((op for op in self.operating_points if op.label == label), None)

    @classmethod
    def json_schema(cls) -> dict:
        """The JSON Schema of ``model.json`` (draft 2020-12), e.g. for editors and other tools."""
        return cls.model_json_schema()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_card(path: str | Path) -> ModelCard:
    """Read and validate ``model.json`` (a file, or a package directory holding one).

    Raises
    ------
    ModelPackageError
        Missing file, invalid JSON (including JSON nested too deeply for the parser), or a schema
        violation; the message names the first offending field.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.json"
    if not path.is_file():
        raise ModelPackageError(path, "model.json not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelPackageError(path, f"not valid JSON ({exc})") from None
    except RecursionError:  # e.g. 100,000 nested brackets: the C scanner gives up, say so in one line
        raise ModelPackageError(path, "not valid JSON (nested too deeply to read)") from None
    if not isinstance(data, dict):
        raise ModelPackageError(path, "invalid model card: the JSON document is not an object")
    if data.get("schema_version") not in (None, *SUPPORTED_SCHEMAS):
        raise ModelPackageError(
            path, f"schema_version {data.get('schema_version')!r} is not supported (this app reads "
                  f"{', '.join(map(str, SUPPORTED_SCHEMAS))})")
    if "schema_version" not in data:
        data = {**data, "schema_version": 1}  # cards written before the field was required
    try:
        return ModelCard.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(card)"
        more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise ModelPackageError(path, f"invalid model card: {where}: {err['msg']}{more}") from None


def save_card(card: ModelCard, path: str | Path) -> Path:
    """Write ``card`` as indented JSON to ``path`` (a file, or a package directory); returns the file."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.json"
    path.write_text(card.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return path
