"""ONNX Runtime inference: probabilities, findings at the card's operating points, CAMs and regions.

A :class:`Session` wraps one :class:`onnxruntime.InferenceSession`, created once per (model, provider)
and reused (:func:`open_session` caches them). It reports the execution provider that actually runs the
model, from ``InferenceSession.get_providers()`` — never ``get_available_providers()``, which lists what
the build *could* load — and turns a CUDA request that ends up on the CPU into a visible
:attr:`Session.fallback_warning` instead of a silent fallback.

Class activation maps come out of the graph itself (output ``card.outputs.cam``, ``(N, K, h, w)``: the
last feature map weighted by the classifier weights, Zhou et al. 2016, "Learning Deep Features for
Discriminative Localization", CVPR), so they need no gradients and work on every provider. They are
mapped back onto the original pixels with :meth:`ResizeGeometry.to_original` (undoing squeeze or
letterbox), normalised with :func:`~medviewer.inference.heatmap.normalize_cam`, and thresholded into
:class:`~medviewer.inference.regions.Region` s.

Example
-------
>>> from medviewer.inference import default_model, open_session  # doctest: +SKIP
>>> sess = open_session(default_model(), "auto")  # doctest: +SKIP
>>> sess.provider, sess.fallback_warning  # doctest: +SKIP
('CPUExecutionProvider', None)
>>> pred = sess.predict([display_u8], [(0.14, 0.14)])[0]  # doctest: +SKIP
>>> pred.scores, pred.flagged, pred.cams.shape  # doctest: +SKIP
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from medviewer.errors import InferenceError
from medviewer.imaging.preprocess import ResizeGeometry, preprocess
from medviewer.inference import _ort
from medviewer.inference.applicability import Assessment
from medviewer.inference.card import ModelCard, Task
from medviewer.inference.gate import Gate
from medviewer.inference.package import ModelPackage, input_size_problem
from medviewer.inference.regions import DEFAULT_FRACTION, Region, find_regions
from medviewer.providers import ExecutionProvider, Provider, short_name

__all__ = [
    "Provider",
    "CPU",
    "CUDA",
    "Prediction",
    "Prepared",
    "Session",
    "open_session",
    "probabilities",
    "flag",
    "operating_threshold",
]

CPU = ExecutionProvider.CPU.value
CUDA = ExecutionProvider.CUDA.value


def probabilities(logits: np.ndarray, task: Task) -> np.ndarray:
    """Softmax (multiclass) or sigmoid (multilabel) over the last axis of float ``(N, K)`` logits."""
    z = np.asarray(logits, np.float64)
    if Task(task) == Task.MULTICLASS:
        z = z - z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)
    return 1.0 / (1.0 + np.exp(-z))


def operating_threshold(card: ModelCard, label: str) -> float | None:
    """The probability at or above which ``label`` is flagged: its operating point's threshold on the card
    (:meth:`ModelCard.operating_point`), or None when the card has none for it (then :func:`flag` falls back
    to the top label / 0.5). The one place the app reads an operating point: :func:`flag` decides with it,
    the AI panel draws it as the tick on the score bar."""
    op = card.operating_point(label)
    return None if op is None else float(op.threshold)


def flag(scores: dict[str, float], card: ModelCard) -> list[str]:
    """Labels flagged at the card's operating points, in label order.

    A positive label (never ``card.negative_label``) is flagged when its probability is at or above its
    operating point's threshold. A label without an operating point falls back to: the most probable
    label (multiclass) or probability >= 0.5 (multilabel).
    """
    top = max(scores, key=scores.__getitem__) if scores else None
    out = []
    for label in card.positive_labels:
        threshold = operating_threshold(card, label)
        p = scores[label]
        if threshold is not None:
            hit = p >= threshold
        else:
            hit = label == top if card.task == Task.MULTICLASS else p >= 0.5
        if hit:
            out.append(label)
    return out


@dataclass
class Prediction:
    """The model's output for one image, on the original image grid.

    Attributes
    ----------
    labels
        The card's labels, in output order.
    scores
        label -> probability (softmax or sigmoid).
    flagged
        Labels flagged at the card's operating points (never the negative label).
    cams
        float32 ``(K, H0, W0)``: each label's class activation map on the ORIGINAL image grid, normalised
        to 0..1 per label (0 = no positive evidence, 1 = the label's peak).
    cam_peaks
        label -> the raw (un-normalised) CAM maximum, to compare evidence between labels.
    regions
        :class:`Region` s for the flagged labels (or those asked for), strongest first per label.
    seconds
        Wall time for this image: preprocessing, its share of the batched network run, postprocessing.
    ood_score
        The image's out-of-distribution score (:class:`~medviewer.inference.ood.OODDetector`), None when
        the model has no OOD detector.
    energy
        The free energy ``-logsumexp(logits)`` (Liu et al. 2020, "Energy-based Out-of-distribution
        Detection", NeurIPS): lower = more typical. Reported for research, not used for decisions.
    applicability
        Set by the intended-use policy (:mod:`medviewer.inference.applicability`): a frozen
        :class:`~medviewer.inference.applicability.Assessment` (``status``, ``reasons``, ``checks``, the OOD
        score and threshold, ``overridden``; :attr:`~medviewer.inference.applicability.Assessment.withheld`
        is the withhold rule); None until the policy ran. A dict assigned here (the ``to_dict()`` form, e.g.
        read back from ``results.json``) is converted with ``Assessment.from_dict``.
    gate
        The applicability gate's class probabilities (card schema 3, :mod:`medviewer.inference.gate`):
        class -> probability; None when the package has no gate.
    suppressed_flags, suppressed_regions
        What the policy withheld from an out-of-scope image (the labels that would have been flagged and
        their regions), so a reader can still "show anyway", visibly labelled.
    """

    labels: list[str]
    scores: dict[str, float]
    flagged: list[str]
    cams: np.ndarray
    cam_peaks: dict[str, float]
    regions: list[Region] = field(default_factory=list)
    seconds: float = 0.0
    ood_score: float | None = None
    energy: float | None = None
    applicability: Assessment | None = None
    suppressed_flags: list[str] = field(default_factory=list)
    suppressed_regions: list[Region] = field(default_factory=list)
    gate: dict[str, float] | None = None

    def __setattr__(self, name: str, value: object) -> None:
        if name == "applicability" and value is not None and not isinstance(value, Assessment):
            value = Assessment.from_dict(value)  # type: ignore[arg-type]
        object.__setattr__(self, name, value)

    @property
    def withheld(self) -> bool:
        """:attr:`Assessment.withheld <medviewer.inference.applicability.Assessment.withheld>` of this result
        (False before the policy ran): no flag, heat map or region may be shown."""
        return self.applicability is not None and self.applicability.withheld

    def cam(self, label: str) -> np.ndarray:
        """float32 ``(H0, W0)`` normalised CAM of ``label``."""
        return self.cams[self.labels.index(label)]

    @property
    def top_label(self) -> str:
        """The most probable label."""
        return max(self.scores, key=self.scores.__getitem__)


@dataclass(frozen=True)
class Prepared:
    """One image ready for the network: float32 ``(C, H, W)`` input and how it was fitted."""

    x: np.ndarray
    geometry: ResizeGeometry
    pixel_spacing: tuple[float, float] | None
    seconds: float
    gate_x: np.ndarray | None = None  #: float32 ``(C, h, w)`` input of the package's gate, if it has one


class Session:
    """An onnxruntime session for one model package, created once and reused.

    Parameters
    ----------
    package
        A validated :class:`ModelPackage`.
    provider
        ``"auto"`` (CUDA, then CPU), ``"cuda"`` or ``"cpu"``.
    intra_op_threads
        ONNX Runtime intra-op threads; 0 = ORT's default (one per physical core).

    Attributes
    ----------
    provider
        The execution provider that runs the model, e.g. ``"CPUExecutionProvider"``.
    providers
        ``InferenceSession.get_providers()``: the session's providers in priority order.
    fallback_warning
        One line when CUDA was requested (``provider="cuda"``) but the model runs on the CPU -- the CUDA
        provider did not load, the CUDA session could not be created, or CUDA failed at run time (the
        session then switches to the CPU once) -- with the reason; else None.
    notice
        The same line for ``provider="auto"``, where running on the CPU is an expected outcome; else None.

    Raises
    ------
    InferenceError
        Unknown provider name, the card's input size exceeds the model-input pixel budget
        (``MEDVIEWER_MAX_MODEL_INPUT_PIXELS``, :mod:`medviewer.limits`), or onnxruntime could not create
        the session.
    """

    def __init__(self, package: ModelPackage, provider: str | Provider = "auto", *, intra_op_threads: int = 0) -> None:
        try:
            self.requested = Provider.parse(provider)
        except ValueError as exc:
            raise InferenceError(str(exc)) from None
        self.package = package
        self.card = package.card
        too_big = input_size_problem(package.card)  # checked again: the limit may be lower than at load time
        if too_big is not None:
            raise InferenceError(f"{package.path}: {too_big}")
        import onnxruntime as ort

        wanted = self.requested.execution_providers(ort.get_available_providers())
        self._threads = intra_op_threads
        reason = None
        try:
            self._sess = _ort.quiet_session(package.onnx_path, wanted, intra_op_threads=intra_op_threads)
        except Exception as exc:
            if CUDA not in wanted:
                raise InferenceError(f"{package.onnx_path}: onnxruntime could not create a session "
                                     f"({_ort.first_line(exc)})") from None
            reason = f"creating the CUDA session failed ({_ort.first_line(exc)})"
            self._sess = self._cpu_session()
        self.providers: list[str] = list(self._sess.get_providers())
        self.provider: str = self.providers[0]
        self.fallback_warning: str | None = None
        self.notice: str | None = None
        if self.requested != Provider.CPU and self.provider != CUDA:
            self._set_fallback(reason or _ort.cuda_unavailable_reason())
        inp = self._sess.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch: int | None = inp.shape[0] if isinstance(inp.shape[0], int) else None
        self._outputs = [self.card.outputs.logits, self.card.outputs.cam]
        if self.card.outputs.features:
            self._outputs.append(self.card.outputs.features)
        self._switch_lock = threading.Lock()
        self.gate: Gate | None = None
        if self.card.gate is not None:  # tiny: runs on the CPU beside whatever runs the model
            self.gate = Gate(package.path, self.card.gate)

    def _cpu_session(self):
        try:
            return _ort.quiet_session(self.package.onnx_path, [CPU], intra_op_threads=self._threads)
        except Exception as exc:
            raise InferenceError(f"{self.package.onnx_path}: onnxruntime could not create a session "
                                 f"({_ort.first_line(exc)})") from None

    def _set_fallback(self, reason: str) -> None:
        if self.requested == Provider.CUDA:
            self.fallback_warning = f"CUDA was requested but the model runs on the CPU: {reason}"
        else:
            self.notice = f"CUDA not used, running on the CPU: {reason}"

    def __repr__(self) -> str:
        return f"Session({self.card.name} {self.card.version}, provider={self.provider})"

    @property
    def provider_short(self) -> str:
        """``"cuda"``, ``"cpu"``, ... (the provider name without ``ExecutionProvider``, lower case)."""
        return short_name(self.provider)

    # -- the three steps, usable separately (the CLI overlaps them across threads) -------------------

    def prepare(self, image_u8: np.ndarray, pixel_spacing: tuple[float, float] | None = None) -> Prepared:
        """Display image (uint8 ``(H, W)`` or ``(H, W, 3)``) -> :class:`Prepared` (thread-safe).

        Raises
        ------
        InferenceError
            The image is not an 8-bit 2-D gray or RGB array.
        """
        t0 = time.perf_counter()
        try:
            x, geom = preprocess(image_u8, self.card.preprocessing, self.card.input)
        except ValueError as exc:
            raise InferenceError(f"cannot prepare the image for {self.card.name}: {exc}") from None
        gate_x = None if self.gate is None else self.gate.prepare(image_u8)
        spacing = None if pixel_spacing is None else (float(pixel_spacing[0]), float(pixel_spacing[1]))
        return Prepared(x, geom, spacing, time.perf_counter() - t0, gate_x)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the network on float32 ``(N, C, H, W)``; returns logits ``(N, K)`` and CAMs ``(N, K, h, w)``.

        See :meth:`run_all` (which also returns the features output).
        """
        logits, cam, _ = self.run_all(batch)
        return logits, cam

    def run_all(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Run the network on float32 ``(N, C, H, W)``: logits ``(N, K)``, CAMs ``(N, K, h, w)`` and the
        pooled features ``(N, D)`` (None when the card names no features output).

        Splits the batch when the graph has a fixed batch size. Thread-safe (ORT sessions are).

        Raises
        ------
        InferenceError
            onnxruntime failed, or its outputs do not have one row per input (message is one line).
        """
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if self.fixed_batch is not None and x.shape[0] != self.fixed_batch:
            parts = [self.run_all(x[i : i + self.fixed_batch]) for i in range(0, x.shape[0], self.fixed_batch)]
            feats = None if parts[0][2] is None else np.concatenate([p[2] for p in parts])
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), feats
        try:
            got = self._sess.run(self._outputs, {self.input_name: x})
        except Exception as exc:
            if self.provider != CUDA:
                raise InferenceError(f"{self.card.name}: inference failed on {self.provider} "
                                     f"({_ort.first_line(exc)})") from None
            # a CUDA failure at run time (e.g. out of GPU memory): switch to the CPU once, visibly
            with self._switch_lock:
                if self.provider == CUDA:
                    self._sess = self._cpu_session()
                    self.providers = list(self._sess.get_providers())
                    self.provider = self.providers[0]
                    self._set_fallback(f"CUDA failed during inference ({_ort.first_line(exc)})")
            return self.run_all(x)
        logits, cam = np.asarray(got[0], np.float32), np.asarray(got[1], np.float32)
        feats = np.asarray(got[2], np.float32) if len(got) > 2 else None
        n, k = x.shape[0], len(self.card.labels)
        if (logits.shape != (n, k) or cam.ndim != 4 or cam.shape[:2] != (n, k) or min(cam.shape[2:], default=0) < 1
                or (feats is not None and (feats.ndim != 2 or feats.shape[0] != n))):
            raise InferenceError(
                f"{self.card.name}: the model returned logits {logits.shape}, CAMs {cam.shape}"
                + ("" if feats is None else f", features {feats.shape}")
                + f" for a batch of {n}; expected ({n}, {k}) and ({n}, {k}, h, w)")
        return logits, cam, feats

    def finish(self, prepared: Prepared, logits: np.ndarray, cam: np.ndarray, *, net_seconds: float = 0.0,
               regions: str | Sequence[str] = "flagged", fraction: float = DEFAULT_FRACTION,
               min_area_px: int | None = None, max_regions: int = 5,
               features: np.ndarray | None = None, keep_cams: bool = True) -> Prediction:
        """One image's logits ``(K,)``, CAMs ``(K, h, w)`` and features ``(D,)`` (optional) ->
        :class:`Prediction` on the original grid, with the OOD score when the package has a detector.

        ``regions``: ``"flagged"`` (default), ``"all"`` (every positive label), ``"none"``, or a list
        of labels. ``keep_cams=False`` leaves :attr:`Prediction.cams` empty, ``(K, 0, 0)`` (scores, peaks
        and regions are the same): the maps are made on the original grid one label at a time and
        dropped, so a large image costs one map (``H0 * W0 * 4`` bytes) instead of ``2 K`` of them.

        Raises
        ------
        InferenceError
            The logits or CAMs are not finite (NaN or infinity): never reported as "no finding".
        """
        t0 = time.perf_counter()
        labels = list(self.card.labels)
        if not np.all(np.isfinite(logits)):
            raise InferenceError(f"{self.card.name} returned non-finite scores ({np.asarray(logits).tolist()}) "
                                 "for this image; no result is reported")
        if not np.all(np.isfinite(cam)):
            raise InferenceError(f"{self.card.name} returned a non-finite class activation map for this image; "
                                 "no result is reported")
        ood_score = None
        if features is not None and self.package.ood is not None:
            ood_score = float(self.package.ood.score(np.asarray(features)[None, :])[0])
        gate = None
        if self.gate is not None and prepared.gate_x is not None:
            probs = self.gate.probabilities(prepared.gate_x[None])[0]
            if not np.all(np.isfinite(probs)):
                raise InferenceError(f"{self.card.name}: the applicability gate returned non-finite values")
            gate = {c: float(v) for c, v in zip(self.gate.spec.classes, probs, strict=True)}
        z = np.asarray(logits, np.float64)
        energy = float(-(z.max() + np.log(np.exp(z - z.max()).sum())))
        probs = probabilities(logits[None, :], self.card.task)[0]
        scores = {lab: float(p) for lab, p in zip(labels, probs, strict=True)}
        flagged = flag(scores, self.card)
        if isinstance(regions, str):
            if regions == "flagged":
                want = flagged
            elif regions == "all":
                want = self.card.positive_labels
            elif regions == "none":
                want = []
            else:
                raise ValueError(f"regions must be 'flagged', 'all', 'none' or a list of labels, got {regions!r}")
        else:
            want = list(regions)
            unknown = [w for w in want if w not in labels]
            if unknown:
                raise ValueError(f"unknown labels {unknown}; the model's labels are {labels}")
        # one label's map on the original grid at a time (a (K, H0, W0) stack and its normalised copy of an
        # 8192 x 8192 image were 1.1 GB per image): normalised in place, its regions found, kept or dropped
        geom = prepared.geometry
        cams = np.empty((len(labels), geom.orig_h, geom.orig_w), np.float32) if keep_cams else None
        peaks: dict[str, float] = {}
        by_label: dict[str, list[Region]] = {}
        for i, lab in enumerate(labels):
            if cams is None and lab not in want:
                peaks[lab] = _raw_peak(geom, cam[i])
                continue
            full = geom.to_original(cam[i])
            peaks[lab] = float(full.max())
            _normalize_in_place(full)
            if lab in want:
                by_label[lab] = find_regions(full, lab, prepared.pixel_spacing, fraction=fraction,
                                             min_area_px=min_area_px, max_regions=max_regions)
            if cams is not None:
                cams[i] = full
            del full
        found: list[Region] = [r for lab in want for r in by_label.get(lab, [])]
        if cams is None:
            cams = np.zeros((len(labels), 0, 0), np.float32)
        seconds = prepared.seconds + net_seconds + time.perf_counter() - t0
        return Prediction(labels, scores, flagged, cams, peaks, found, seconds, ood_score=ood_score, energy=energy,
                          gate=gate)

    def predict(self, images_u8: Sequence[np.ndarray],
                pixel_spacings: Sequence[tuple[float, float] | None] | None = None, *, batch_size: int = 16,
                regions: str | Sequence[str] = "flagged", fraction: float = DEFAULT_FRACTION,
                min_area_px: int | None = None) -> list[Prediction]:
        """Score display images (uint8 ``(H, W)`` gray or ``(H, W, 3)`` RGB, any size) in batches.

        Parameters
        ----------
        images_u8
            What the viewer shows (:func:`medviewer.imaging.display_image`).
        pixel_spacings
            ``(row, column)`` mm per image, or None entries / None for unknown (regions then have no mm).
        batch_size
            Images per ONNX Runtime call.
        regions, fraction, min_area_px
            See :meth:`finish` and :func:`~medviewer.inference.regions.find_regions`.

        Returns
        -------
        list[Prediction]
            One per image, in order.

        Raises
        ------
        InferenceError
            A bad image or an onnxruntime failure.
        """
        if pixel_spacings is None:
            pixel_spacings = [None] * len(images_u8)
        if len(pixel_spacings) != len(images_u8):
            raise InferenceError(f"{len(images_u8)} images but {len(pixel_spacings)} pixel spacings")
        out: list[Prediction] = []
        for start in range(0, len(images_u8), max(1, batch_size)):
            prepared = [self.prepare(im, sp) for im, sp in zip(images_u8[start : start + batch_size],
                                                                pixel_spacings[start : start + batch_size], strict=True)]
            t0 = time.perf_counter()
            logits, cams, feats = self.run_all(np.stack([p.x for p in prepared]))
            share = (time.perf_counter() - t0) / len(prepared)
            out += [self.finish(p, logits[i], cams[i], net_seconds=share, regions=regions, fraction=fraction,
                                min_area_px=min_area_px, features=None if feats is None else feats[i])
                    for i, p in enumerate(prepared)]
        return out


def _normalize_in_place(full: np.ndarray) -> None:
    """:func:`~medviewer.inference.heatmap.normalize_cam` of one float32 ``(H, W)`` map, in place (the same
    float32 arithmetic as its ``(K, h, w)`` path, so the values are identical)."""
    np.maximum(full, np.float32(0.0), out=full)
    peak = full.max() if full.size else np.float32(0.0)
    scale = np.float32(1.0) / np.maximum(peak, np.float32(1e-30)) if peak > 0 else np.float32(0.0)
    full *= np.float32(scale)


def _raw_peak(geom: ResizeGeometry, cam: np.ndarray) -> float:
    """The maximum of ``cam`` mapped onto the original grid, without keeping that map."""
    return float(geom.to_original(cam).max())


_sessions: dict[tuple, Session] = {}
_sessions_lock = threading.Lock()


def open_session(package: ModelPackage, provider: str | Provider = "auto") -> Session:
    """The cached :class:`Session` for ``(package, provider)``: created on first use, then reused."""
    key = (str(package.onnx_path), package.sha256, str(getattr(provider, "value", provider)).lower())
    with _sessions_lock:
        sess = _sessions.get(key)
        if sess is None:
            sess = Session(package, provider)
            _sessions[key] = sess
        return sess
