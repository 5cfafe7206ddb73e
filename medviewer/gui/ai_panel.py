"""The AI panel: model selector, Run/Cancel, per-label scores grouped by model, heatmap controls, flagged regions.

Scores are shown the way commercial chest X-ray AI shows them: one row per label with a probability
bar and the model card's operating point as a tick; labels at or above their operating point are
flagged (amber, bold, "FLAGGED"). The panel only displays and asks: the Qt-free
:class:`~medviewer.workstation.ai.AiController` runs the model, and :class:`~medviewer.gui.ai_view.AiView`
passes each :class:`~medviewer.inference.Prediction` of the active image to the panel.

With several models installed an image is scored by every model whose intended use it meets
(:meth:`medviewer.workstation.ai.AiController.results`); :meth:`AiPanel.show_results` then groups the findings
by model: the first model with findings to show fills "Findings" (titled with its name and version), every
other model gets a :class:`ModelSection` under "Other models" -- a header with its name, version and verdict,
its score rows with their operating points -- and a model outside its intended use for the image is listed
collapsed with its one-line reason. The heat-map selector lists each shown model's labels, named with the
model ("Effusion · nih-cxr14-64").
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from medviewer.export.overlay import overlay_label
from medviewer.gui import theme
from medviewer.gui.ai_rows import ColorBar, ModelSection, ScoreRow
from medviewer.inference.applicability import Assessment, Status
from medviewer.inference.session import operating_threshold
from medviewer.providers import short_name

__all__ = ["AiPanel", "ScoreRow", "ColorBar", "ModelSection"]


class AiPanel(QWidget):
    """Dock content of the AI panel (see module docstring)."""

    runRequested = Signal()
    cancelRequested = Signal()
    modelChanged = Signal(str)  # package path ("" = none)
    cardRequested = Signal()
    heatmapChanged = Signal()
    regionClicked = Signal(int)
    autoRunChanged = Signal(bool)
    showAnywayRequested = Signal()  # the reader overrides an out-of-scope result

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumWidth(300)
        self.prediction: Any = None
        self.card: Any = None
        outer = QVBoxLayout(self)
        outer.setContentsMargins(8, 8, 8, 8)
        outer.setSpacing(8)

        row = QHBoxLayout()
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("Model (built-in and imported models)")
        self.model_combo.currentIndexChanged.connect(self._model_changed)
        self.card_button = QPushButton("Card…")
        self.card_button.setToolTip("Model card: intended use, limitations, metrics, provenance")
        self.card_button.clicked.connect(self.cardRequested)
        row.addWidget(self.model_combo, 1)
        row.addWidget(self.card_button)
        outer.addLayout(row)

        row = QHBoxLayout()
        self.run_button = QPushButton("Run AI")
        self.run_button.setObjectName("primary")
        self.run_button.clicked.connect(self.runRequested)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancelRequested)
        self.cancel_button.setEnabled(False)
        self.auto_run = QCheckBox("Run on open")
        self.auto_run.toggled.connect(self.autoRunChanged)
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        row.addStretch(1)
        row.addWidget(self.auto_run)
        outer.addLayout(row)
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setVisible(False)
        self.busy.setTextVisible(False)
        outer.addWidget(self.busy)

        self.status = QLabel("No result yet")
        self.status.setObjectName("muted")
        self.status.setWordWrap(True)
        outer.addWidget(self.status)
        self.warning = QLabel("")
        self.warning.setObjectName("warning")
        self.warning.setWordWrap(True)
        self.warning.setVisible(False)
        outer.addWidget(self.warning)

        self.scores_box = QGroupBox("Findings")
        self.scores_layout = QVBoxLayout(self.scores_box)
        self.scores_layout.setSpacing(6)
        outer.addWidget(self.scores_box)
        #: the other models' sections (several models installed), one :class:`ModelSection` each
        self.others_box = QGroupBox("Other models")
        self.others_layout = QVBoxLayout(self.others_box)
        self.others_layout.setSpacing(4)
        self.others_box.setVisible(False)
        outer.addWidget(self.others_box)
        self.sections: list[ModelSection] = []
        self.main_sha: str | None = None  #: SHA-256 of the model shown under "Findings"
        self.results_state: tuple = ()  #: what :meth:`show_results` last showed (ids of results)

        heat = QGroupBox("Heatmap")
        hl = QVBoxLayout(heat)
        r1 = QHBoxLayout()
        self.heatmap_check = QCheckBox("Show (H)")
        self.heatmap_check.setChecked(True)
        self.heatmap_check.toggled.connect(self.heatmapChanged)
        self.cam_combo = QComboBox()
        self.cam_combo.setToolTip("Which label's class activation map to show")
        self.cam_combo.currentIndexChanged.connect(self.heatmapChanged)
        r1.addWidget(self.heatmap_check)
        r1.addWidget(QLabel("Map:"))
        r1.addWidget(self.cam_combo, 1)
        hl.addLayout(r1)
        r2 = QHBoxLayout()
        r2.addWidget(QLabel("Opacity"))
        self.opacity = QSlider(Qt.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(45)
        self.opacity.valueChanged.connect(self.heatmapChanged)
        r2.addWidget(self.opacity, 1)
        self.colormap_combo = QComboBox()
        from medviewer.inference.heatmap import COLORMAPS

        self.colormap_combo.addItems(list(COLORMAPS))
        self.colormap_combo.currentTextChanged.connect(self._colormap_changed)
        r2.addWidget(self.colormap_combo)
        hl.addLayout(r2)
        self.colorbar = ColorBar()
        self.colorbar.set_colormap("jet")
        hl.addWidget(self.colorbar)
        self.cam_note = QLabel("")
        self.cam_note.setObjectName("muted")
        self.cam_note.setWordWrap(True)
        hl.addWidget(self.cam_note)
        self.cam_combo.currentIndexChanged.connect(self._update_cam_note)
        self.regions_check = QCheckBox("Outline flagged regions")
        self.regions_check.setChecked(True)
        self.regions_check.toggled.connect(self.heatmapChanged)
        hl.addWidget(self.regions_check)
        outer.addWidget(heat)

        reg = QGroupBox("Flagged regions (click to zoom)")
        rl = QVBoxLayout(reg)
        self.regions = QListWidget()
        self.regions.setMinimumHeight(70)
        self.regions.itemClicked.connect(lambda it: self.regionClicked.emit(int(it.data(Qt.UserRole))))
        self.regions.itemActivated.connect(lambda it: self.regionClicked.emit(int(it.data(Qt.UserRole))))
        rl.addWidget(self.regions)
        outer.addWidget(reg, 1)

        self.disclaimer = QLabel("")
        self.disclaimer.setObjectName("muted")
        self.disclaimer.setWordWrap(True)
        outer.addWidget(self.disclaimer)
        self.set_models([], None)

    # -- model list ---------------------------------------------------------------------------------
    def set_models(self, packages: list[Any], current: str | None, note: str = "") -> None:
        """Fill the selector with :class:`ModelPackage` s; ``current`` = package path to select."""
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for pkg in packages:
            src = getattr(pkg, "source", "")
            self.model_combo.addItem(f"{pkg.card.name} {pkg.card.version}" + (f"  ({src})" if src else ""),
                                     str(pkg.path))
        if not packages:
            self.model_combo.addItem("No model available", "")
        idx = self.model_combo.findData(current) if current else 0
        self.model_combo.setCurrentIndex(max(idx, 0))
        self.model_combo.blockSignals(False)
        has = bool(packages)
        self.run_button.setEnabled(has)
        self.card_button.setEnabled(has)
        if not has:
            self.status.setText(note or "No model available: AI > Import model… or train one (see README). "
                                        "The viewer works without one.")

    def current_model_path(self) -> str:
        return str(self.model_combo.currentData() or "")

    def _model_changed(self, _i: int) -> None:
        self.modelChanged.emit(self.current_model_path())

    def set_card(self, card: Any) -> None:
        self.card = card
        if card is None:
            self.disclaimer.setText("")
            return
        self.disclaimer.setText(f"Intended use: {card.intended_use}")

    # -- heatmap controls ---------------------------------------------------------------------------
    def _colormap_changed(self, name: str) -> None:
        self.colorbar.set_colormap(name)
        self.heatmapChanged.emit()

    def heatmap_on(self) -> bool:
        return self.heatmap_check.isChecked()

    def set_heatmap_on(self, on: bool) -> None:
        self.heatmap_check.setChecked(on)

    def opacity_value(self) -> float:
        return self.opacity.value() / 100.0

    def colormap(self) -> str:
        return self.colormap_combo.currentText()

    def set_colormap(self, name: str) -> None:
        i = self.colormap_combo.findText(name)
        if i >= 0:
            self.colormap_combo.setCurrentIndex(i)

    def _update_cam_note(self, *_: Any) -> None:
        """Say whether the mapped label is flagged: a map of an unflagged label is not a finding."""
        pred = self.current_cam_prediction() if self.sections else self.prediction
        data = self.cam_combo.currentData()
        lab = self.cam_combo.currentText()
        if pred is not None and isinstance(data, tuple) and 0 <= int(data[1]) < len(pred.labels):
            lab = pred.labels[int(data[1])]  # "Effusion · nih-cxr14-64" -> Effusion of that model
        if pred is None or not lab:
            self.cam_note.setText("")
            return
        app = Assessment.coerce(getattr(pred, "applicability", None))
        if app is not None and app.withheld:
            self.cam_note.setText("Outside the model's intended use: no heat map is shown.")
            self.cam_note.setStyleSheet(f"color: {theme.MUTED};")
        elif lab in pred.flagged:
            self.cam_note.setText(f"Where the model saw evidence for {lab} (flagged"
                                  + (", shown anyway outside intended use)." if app is not None and app.overridden
                                     else ")."))
            self.cam_note.setStyleSheet(f"color: {theme.FLAG};")
        else:
            self.cam_note.setText(f"{lab} is below its operating point: this map is not a finding.")
            self.cam_note.setStyleSheet(f"color: {theme.MUTED};")

    def cam_label_index(self) -> int:
        """Index of the mapped label within its model's labels."""
        data = self.cam_combo.currentData()
        if isinstance(data, tuple):
            return int(data[1])
        return max(0, self.cam_combo.currentIndex())

    def cam_model_sha(self) -> str | None:
        """SHA-256 of the model whose map is selected (None: the model under "Findings")."""
        data = self.cam_combo.currentData()
        return str(data[0]) if isinstance(data, tuple) else self.main_sha

    def next_cam_label(self) -> None:
        n = self.cam_combo.count()
        if n:
            self.cam_combo.setCurrentIndex((self.cam_combo.currentIndex() + 1) % n)

    # -- state ----------------------------------------------------------------------------------------
    def set_busy(self, busy: bool, text: str = "") -> None:
        self.busy.setVisible(busy)
        self.cancel_button.setEnabled(busy)
        self.run_button.setEnabled(not busy and bool(self.current_model_path()))
        if text:
            self.status.setText(text)

    def set_warning(self, text: str | None, warning: bool = True) -> None:
        """A line under the status: amber for a warning (CUDA requested, CPU used), grey for a notice.

        The first clause is shown (e.g. "CUDA was requested but the model runs on the CPU"); the full
        reason is the tooltip.
        """
        text = (text or "").strip()
        self.warning.setText(text.split(":")[0] if len(text) > 90 and ":" in text else text)
        self.warning.setToolTip(text)
        self.warning.setStyleSheet(f"color: {theme.FLAG if warning else theme.MUTED}; font-size: 9pt;")
        self.warning.setVisible(bool(text))

    def clear_result(self, text: str = "No result yet") -> None:
        self.prediction = None
        self.results_state = ()
        self.show_anyway_button: QPushButton | None = None
        self._clear_sections()
        self.scores_box.setTitle("Findings")
        while self.scores_layout.count():
            w = self.scores_layout.takeAt(0).widget()
            if w is not None:  # detached now (no longer a child that paints or is found), deleted later
                w.setParent(None)
                w.deleteLater()
        self.regions.clear()
        self.cam_note.setText("")
        self.scores_box.setVisible(False)
        self.status.setText(text)

    def _scope_banner(self, app: Assessment) -> QWidget:
        """The intended-use message at the top of the result: reasons in plain words, and "Show anyway"."""
        box = QFrame()
        box.setObjectName("scopeBanner")
        overridden = app.overridden
        box.setStyleSheet(f"#scopeBanner {{ border: 1px solid {theme.FLAG}; border-radius: 4px; "
                          "background: #2b2418; }")
        lay = QVBoxLayout(box)
        lay.setContentsMargins(8, 6, 8, 6)
        title = QLabel("Shown anyway: outside the model's intended use" if overridden
                       else "Outside the model's intended use: no finding is reported")
        title.setWordWrap(True)
        title.setStyleSheet(f"color: {theme.FLAG}; font-weight: bold;")
        lay.addWidget(title)
        for reason in app.reasons:
            r = QLabel("• " + reason)
            r.setWordWrap(True)
            r.setStyleSheet("color: #e8dcc8; font-size: 9pt;")
            lay.addWidget(r)
        if not overridden:
            note = QLabel("The scores below are for research only. The heat map is hidden.")
            note.setWordWrap(True)
            note.setStyleSheet(f"color: {theme.MUTED}; font-size: 8.5pt;")
            lay.addWidget(note)
            btn = QPushButton("Show anyway")
            btn.setToolTip("Show the withheld findings, heat map and regions, labelled as outside intended use")
            btn.clicked.connect(self.showAnywayRequested)
            self.show_anyway_button = btn
            lay.addWidget(btn, 0, Qt.AlignLeft)
        return box

    def show_prediction(self, pred: Any, card: Any, provider: str, where: str = "") -> None:
        """Show a :class:`~medviewer.inference.Prediction` of ``card``'s model run on ``provider``.

        An out-of-scope result (``pred.applicability.out_of_scope``, see
        :mod:`medviewer.inference.applicability`) shows the reasons at the top, grey score bars and no
        FLAGGED badge, unless the reader pressed "Show anyway" (:attr:`Assessment.withheld` decides).
        """
        self.clear_result()
        self.scores_box.setVisible(True)
        self.prediction = pred
        self.show_anyway_button = None
        app = Assessment.coerce(getattr(pred, "applicability", None))
        out_of_scope = app is not None and app.out_of_scope
        muted = app is not None and app.withheld
        neg = getattr(card, "negative_label", None)
        for lab in pred.labels:
            row = ScoreRow(lab, pred.scores.get(lab, 0.0), operating_threshold(card, lab),
                           lab in pred.flagged, lab == neg, muted=muted)
            self.scores_layout.addWidget(row)
        if app is not None and out_of_scope:
            head = self._scope_banner(app)
        elif pred.flagged:
            head = QLabel("Flagged: " + ", ".join(pred.flagged))
            head.setWordWrap(True)  # a multi-label model may flag several findings
            head.setObjectName("warning")
            head.setStyleSheet(f"color: {theme.FLAG}; font-weight: bold;")
        else:
            head = QLabel("No finding at the operating point")
            head.setStyleSheet(f"color: {theme.OK};")
        self.scores_layout.insertWidget(0, head)
        if app is not None and app.status == Status.UNKNOWN:
            note = QLabel("The model card (schema 1) states no machine-readable intended use")
            note.setWordWrap(True)
            note.setStyleSheet(f"color: {theme.MUTED}; font-size: 8.5pt;")
            self.scores_layout.insertWidget(1, note)
        prov = short_name(provider).upper()  # CPU, CUDA: as the model menu names them
        self.status.setText(f"{card.name} {card.version} · {prov} · {pred.seconds * 1000:.0f} ms"
                            + (f" · {where}" if where else ""))
        # CAM selector: flagged label first, else the top positive label
        self.cam_combo.blockSignals(True)
        self.cam_combo.clear()
        self.cam_combo.addItems(list(pred.labels))
        self.cam_combo.setCurrentIndex(pred.labels.index(overlay_label(pred, negative_label=neg)))
        self.cam_combo.blockSignals(False)
        self._update_cam_note()
        for i, r in enumerate(pred.regions):
            area = f"{r.area_mm2 / 100:.1f} cm²" if r.area_mm2 is not None else f"{r.area_px:,} px"
            size = ""
            sz = r.size_mm if hasattr(r, "size_mm") else None
            if sz is not None:
                size = f" · {sz[0]:.0f}×{sz[1]:.0f} mm"
            prob = pred.scores.get(r.label)
            prob_text = "" if prob is None else f"P={prob:.2f} · "
            it = QListWidgetItem(f"{i + 1}  {r.label}  {prob_text}{area}{size}")
            it.setData(Qt.UserRole, i)
            it.setForeground(QColor(theme.REGION))
            self.regions.addItem(it)
        if not pred.regions:
            it = QListWidgetItem(("none (outside intended use)" if muted else "none") if pred.flagged == []
                                 else "no region above the threshold")
            it.setData(Qt.UserRole, -1)
            it.setFlags(Qt.NoItemFlags)
            self.regions.addItem(it)


    # -- several models --------------------------------------------------------------------------------
    def _clear_sections(self) -> None:
        for sec in self.sections:
            self.others_layout.removeWidget(sec)
            sec.setParent(None)
            sec.deleteLater()
        self.sections = []
        self.others_box.setVisible(False)

    def show_results(self, results: list[Any], where: str = "") -> None:
        """Show every model's say on the active image, grouped by model.

        ``results``: :class:`~medviewer.workstation.ai.ModelResult` s, the preferred model first (at least one
        with an ``entry``). The first model whose findings may be shown (in scope, or shown anyway) -- else the
        first that ran -- fills "Findings" as :meth:`show_prediction` does; the others follow as
        :class:`ModelSection` s: models with findings expanded, models outside their intended use (withheld or
        not run) collapsed with the reason.
        """
        ran = [r for r in results if r.entry is not None]
        shown = [r for r in ran if r.shown]
        main = (shown or ran)[0]
        rest = [r for r in results if r is not main]
        rest = [r for r in rest if r.shown] + [r for r in rest if not r.shown]
        entry = main.entry
        self.show_prediction(entry.prediction, main.package.card, entry.provider, where)
        self.main_sha = str(main.package.sha256)
        self.results_state = tuple(id(r.entry if r.entry is not None else r.assessment) for r in results)
        if not rest:
            return
        card = main.package.card
        self.scores_box.setTitle(f"Findings · {card.name} {card.version}")
        self.cam_combo.blockSignals(True)  # the main model's labels keep their plain names; data: (sha, index)
        for i in range(self.cam_combo.count()):
            self.cam_combo.setItemData(i, (self.main_sha, i))
        for r in rest:
            sec = ModelSection(r, self)
            sec.showAnywayRequested.connect(self.showAnywayRequested)
            self.sections.append(sec)
            self.others_layout.addWidget(sec)
            if r.shown:
                for i, lab in enumerate(r.entry.prediction.labels):
                    self.cam_combo.addItem(f"{lab} · {r.package.card.name}", (str(r.package.sha256), i))
        self.cam_combo.blockSignals(False)
        self.others_box.setVisible(True)

    def current_cam_prediction(self) -> Any:
        """The prediction whose map the selector points at (the main one, or a shown section's)."""
        sha = self.cam_model_sha()
        for sec in self.sections:
            if sec.result.entry is not None and str(sec.result.package.sha256) == sha:
                return sec.result.entry.prediction
        return self.prediction


def scrollable(panel: QWidget) -> QScrollArea:
    """Wrap a panel in a frameless vertical scroll area (small screens)."""
    sa = QScrollArea()
    sa.setWidget(panel)
    sa.setWidgetResizable(True)
    sa.setFrameShape(QScrollArea.NoFrame)
    sa.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    return sa
