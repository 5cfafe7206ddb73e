"""The model card: ``model.json`` of a model package, schema version 1.

This module is the single definition of the contract between ``training`` (which writes cards through
:class:`ModelCard`) and the app (which validates them). It is inspired by MONAI Bundle's
``metadata.json``. A model package is a directory holding::

    model.onnx     # inputs: card.input.name (N, C, H, W) float32; outputs: card.outputs.logits (N, K)
                   # and card.outputs.cam (N, K, h, w), the class activation maps (Zhou et al. 2016)
    model.json     # this card
    README.md      # optional human-readable card
    plots/*.png    # optional evaluation plots

Changing this schema is a deliberate act: bump :data:`SCHEMA_VERSION` and keep reading old versions.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medviewer.errors import ModelPackageError

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
    "sha256_file",
    "load_card",
    "save_card",
]

SCHEMA_VERSION = 1


class Task(str, Enum):
    """How logits become probabilities."""

    MULTICLASS = "multiclass"  #: softmax over K mutually exclusive labels
    MULTILABEL = "multilabel"  #: independent sigmoid per label


class ResizeMode(str, Enum):
    """How the display image is fitted to the network's input size."""

    SQUEEZE = "squeeze"  #: resize both axes independently (aspect ratio not kept)
    LETTERBOX = "letterbox"  #: keep aspect ratio, pad the short side symmetrically with pad_value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """The ONNX input tensor: shape (N, channels, height, width), N dynamic."""

    name: str = "image"
    channels: Literal[1, 3] = 1
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    dtype: Literal["float32"] = "float32"


class Preprocessing(_Strict):
    """From the display pipeline's 8-bit image (VOI applied, MONOCHROME1 inverted) to the input tensor.

    ``x = (u8 * scale - mean[c]) / std[c]`` after resizing with ``resize``/``interpolation``.
    Implemented once, in :func:`medviewer.imaging.preprocess.preprocess`, for training and the app.
    """

    source: Literal["display_u8"] = "display_u8"
    resize: ResizeMode = ResizeMode.SQUEEZE
    interpolation: Literal["area", "linear", "cubic"] = "area"
    pad_value: int = Field(0, ge=0, le=255)
    scale: float = 1.0 / 255.0
    mean: list[float] = Field(default_factory=lambda: [0.5])
    std: list[float] = Field(default_factory=lambda: [0.25])


class OutputSpec(_Strict):
    """Names of the ONNX outputs: logits (N, K) and class activation maps (N, K, h, w)."""

    logits: str = "logits"
    cam: str = "cam"


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

    schema_version: Literal[1] = SCHEMA_VERSION
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
        Missing file, invalid JSON, or a schema violation; the message names the first offending field.
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
    if isinstance(data, dict) and data.get("schema_version") not in (None, SCHEMA_VERSION):
        raise ModelPackageError(
            path, f"schema_version {data.get('schema_version')!r} is not supported (this app reads {SCHEMA_VERSION})")
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
