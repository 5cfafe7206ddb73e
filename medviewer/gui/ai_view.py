"""The AI side of the main window as a view: :class:`AiView` shows what the Qt-free
:class:`~medviewer.workstation.ai.AiController` and :class:`~medviewer.workstation.session.ReadingSession`
hold, in the :class:`~medviewer.gui.ai_panel.AiPanel` and as AI layers of the viewports, and turns the
panel's requests into controller calls. It owns no policy: model choice, the session cache, run/cancel,
run-on-open and the intended-use rules are the controller's.

The controller's events come from worker threads; :class:`_Relay` re-emits them as Qt signals, which Qt
queues to the GUI thread.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, Signal

from medviewer.export.overlay import overlay_label
from medviewer.gui.viewport import AiOverlay
from medviewer.inference.applicability import show_anyway as override_intended_use
from medviewer.providers import short_name
from medviewer.workstation.ai import AiController
from medviewer.workstation.session import PredictionEntry

__all__ = ["AiView"]


class _Relay(QObject):
    """psygnal events of the controller (any thread) -> Qt signals (delivered in the GUI thread)."""

    modelsLoaded = Signal(object, object, object)  # noqa: N815 - packages, selected, error
    modelChanged = Signal(object)  # noqa: N815
    predictionReady = Signal(object)  # noqa: N815
    failed = Signal(object, str)
    finished = Signal(object)
    importDone = Signal(object)  # noqa: N815 - the Future of an import

    def __init__(self, ai: AiController) -> None:
        super().__init__()
        ev = ai.events
        ev.models_loaded.connect(lambda p, s, e: self.modelsLoaded.emit(p, s, e))
        ev.model_changed.connect(lambda p: self.modelChanged.emit(p))
        ev.prediction_ready.connect(lambda entry: self.predictionReady.emit(entry))
        ev.failed.connect(lambda job, reason: self.failed.emit(job, reason))
        ev.finished.connect(lambda job: self.finished.emit(job))


class AiView(QObject):
    """Binds the controller and the reading session to the AI panel, the viewports and the status bar of ``win``
    (a :class:`~medviewer.gui.main_window.MainWindow`)."""

    def __init__(self, win: Any, ai: AiController) -> None:
        super().__init__(win)
        self.win, self.ai, self.panel = win, ai, win.panel
        self.models_ready = False
        self.last_result_line = ""  # the status bar keeps it when the active viewport changes
        self._shown_job: Any = None
        self._panel_state: tuple = ()
        self._relay = _Relay(ai)
        self._relay.modelsLoaded.connect(self._on_models)
        self._relay.modelChanged.connect(self._on_model_changed)
        self._relay.predictionReady.connect(self._on_prediction)
        self._relay.failed.connect(self._on_failed)
        self._relay.finished.connect(self._on_finished)
        self._relay.importDone.connect(self._on_import_done)
        p = self.panel
        p.runRequested.connect(self.run)
        p.showAnywayRequested.connect(self.show_anyway)
        p.cancelRequested.connect(self.cancel)
        p.modelChanged.connect(self._on_model_selected)
        p.heatmapChanged.connect(self.update_layers)
        p.regionClicked.connect(self.zoom_to_region)
        p.autoRunChanged.connect(self._on_auto_run)

    # -- models ----------------------------------------------------------------------------------------
    def load_models(self, select: str | None = None) -> None:
        """Find model packages in a worker and select ``select`` (name or path), else the saved or default one."""
        self.models_ready = False
        self.ai.load_models(select, saved=self.win.settings.model)

    def _on_models(self, pkgs: list, pick: Any, err: str | None) -> None:
        self.panel.set_models(pkgs, str(pick.path) if pick is not None else "")
        self.models_ready = True
        self._on_model_changed(self.ai.package)
        if err:
            self.win.error("Model not loaded", err)
        self.maybe_auto_run()

    def _on_model_selected(self, path: str) -> None:
        self.ai.select(path)
        if path:
            self.win.settings.model = path

    def _on_model_changed(self, _pkg: Any) -> None:
        pkg = self.ai.package
        self.panel.set_card(pkg.card if pkg is not None else None)
        self.sync()

    def _on_auto_run(self, on: bool) -> None:
        self.win.settings.auto_run = on
        if self.win.auto_run_action.isChecked() != on:
            self.win.auto_run_action.setChecked(on)
        if on:
            self.maybe_auto_run()

    # -- results ---------------------------------------------------------------------------------------
    def entry_for(self, vp: Any) -> PredictionEntry | None:
        """The selected model's result for the image ``vp`` shows, or None."""
        return None if vp.source is None else self.ai.result(vp.source, vp.state.frame)

    def maybe_auto_run(self) -> None:
        """Run on open: the first visible viewport (the active one first) whose image the controller says to run
        with at least one model (:meth:`AiController.auto_run_packages`: every installed model without a result
        for it whose intended use its header meets -- the preferred model by its card's modality gate); one run
        at a time, the next starts when it finishes."""
        win = self.win
        if not (self.panel.auto_run.isChecked() or win.force_auto_run) or self.ai.package is None or self.ai.busy:
            return
        for vp in [win.active] + [v for v in win.viewports if v is not win.active and v.isVisibleTo(win)]:
            if not vp.has_image():
                continue
            decision = self.ai.auto_run_packages(vp.source, vp.state.frame)
            if decision is None:
                continue
            packages, reason = decision
            if not packages:
                if reason:
                    win.set_status(f"Run on open skipped: {reason} (press Run AI to run anyway)")
                self.sync()  # the models routing left out are listed with their reasons
                continue
            self.run(vp, packages)
            return

    def run(self, vp: Any = None, packages: list[Any] | None = None) -> None:
        """Run the selected model -- and every other installed model whose intended use the image's header meets
        (:meth:`AiController.route`), or ``packages`` -- on the image ``vp`` shows (default: the active
        viewport) in the controller's worker; each model card's intended-use policy is applied to its result
        (as ``medviewer infer --models auto`` does)."""
        win = self.win
        vp = vp if vp in win.viewports else win.active
        if self.ai.package is None:
            win.set_status("No model available (AI > Import model…)")
            return
        if vp.source is None or vp.frame_uid() is None:
            win.set_status("Open an image first")
            return
        self._shown_job = self.ai.run(vp.source, vp.state.frame, packages)
        names = ", ".join(p.card.name for p in self._shown_job.packages)
        self.panel.set_busy(True, f"Running {names} on image {vp.state.frame + 1}…")

    def cancel(self) -> bool:
        """Cancel the run under way (its result is dropped); False when none runs."""
        if not self.ai.cancel():
            return False
        self._shown_job = None
        self.panel.set_busy(False, "Inference cancelled")
        self.win.set_status("Inference cancelled")
        return True

    def _on_finished(self, job: Any) -> None:
        if job is self._shown_job:
            self._shown_job = None
            self.panel.set_busy(False)
            self.panel.prediction = None  # re-render the active image's result (its status line too)
            self.sync()
            self.maybe_auto_run()  # the next visible image waiting for run on open

    def _on_failed(self, job: Any, reason: str) -> None:
        if job is self._shown_job:
            self.panel.set_busy(False, "Inference failed")
            self.win.error("Inference failed", reason)

    def _on_prediction(self, entry: PredictionEntry) -> None:
        win, pred = self.win, entry.prediction
        win.provider_label.setText(f"AI: {short_name(entry.provider).upper()} · {pred.seconds * 1000:.0f} ms")
        active = self.entry_for(win.active)
        if active is not None:  # the status bar follows the active viewport, not the last result to arrive
            self.last_result_line = self.result_line(win.active)
            win.set_status(self.last_result_line)
        self.sync()
        win.predictionShown.emit(pred)

    # -- showing them ----------------------------------------------------------------------------------
    def active_changed(self) -> None:
        """The active viewport changed: its result in the panel, and its result line in the status bar (the last
        one stays when it has none)."""
        entry = self.entry_for(self.win.active)
        if entry is not None:
            self.last_result_line = self.result_line(self.win.active)
            self.win.set_status(self.last_result_line)
        self.sync()

    def settled(self) -> bool:
        """True when no run is shown as under way: its end (a queued event from the worker) has reached the panel."""
        return self._shown_job is None

    def sync(self) -> None:
        """Show the active image's result (if any) in the panel and the AI layers in the viewports."""
        win, panel = self.win, self.panel
        vp = win.active
        uid = vp.frame_uid()
        entry = self.entry_for(vp)
        if entry is None:
            state = ("none", uid, id(self.ai.package), self.models_ready)
            if self._shown_job is None and self._panel_state != state:
                self._panel_state = state
                if self.ai.package is None:
                    panel.clear_result(panel.status.text() if not self.ai.packages else "No model selected")
                    if not self.ai.packages and self.models_ready:
                        panel.set_models([], None)
                else:
                    panel.clear_result("No result for this image — Run AI (Ctrl+R)" if uid else "No image")
                panel.set_warning(None)
        else:
            self._panel_state = ("pred", uid)
            results = self.ai.results(vp.source, vp.state.frame)
            state = tuple(id(r.entry if r.entry is not None else r.assessment) for r in results)
            if len(results) > 1:  # several models: grouped by model
                if panel.prediction is None or panel.results_state != state:
                    panel.show_results(results, f"image {uid[1] + 1}")
                    panel.set_warning(*entry.note)
            elif panel.prediction is not entry.prediction or panel.sections:
                panel.show_prediction(entry.prediction, entry.package.card, entry.provider, f"image {uid[1] + 1}")
                panel.set_warning(*entry.note)
        self.update_layers()

    def result_line(self, vp: Any) -> str:
        """The status-bar line of ``vp``'s image: the selected model's verdict
        (:meth:`PredictionEntry.summary`); with several models, each model's verdict, those whose findings may be
        shown first (``"nih-cxr14-64: flagged Effusion (P=0.41) · pneumonia-cxr: outside intended use: ..."``)."""
        entry = self.entry_for(vp)
        if entry is None:
            return ""
        ran = [r for r in self.ai.results(vp.source, vp.state.frame) if r.entry is not None]
        if len(ran) <= 1:
            return entry.summary()
        return " · ".join(r.entry.summary() for r in [r for r in ran if r.shown] + [r for r in ran if not r.shown])

    def drawn_entry(self, vp: Any) -> PredictionEntry | None:
        """The result whose heat map and regions ``vp`` draws: for the active viewport the model whose map the
        panel's selector points at (the model under "Findings" by default); elsewhere the first model (the
        preferred first) whose findings may be shown, else the preferred model's result. None without one."""
        entry = self.entry_for(vp)
        if entry is None:
            return None
        results = [r for r in self.ai.results(vp.source, vp.state.frame) if r.entry is not None]
        if len(results) <= 1:
            return entry
        if vp is self.win.active and self.panel.prediction is not None:
            sha = self.panel.cam_model_sha()
            chosen = next((r.entry for r in results if str(r.package.sha256) == sha), None)
            if chosen is not None:
                return chosen
        shown = [r.entry for r in results if r.shown]
        return shown[0] if shown else entry

    def update_layers(self) -> None:
        """Redraw every viewport's AI layer with the panel's heat-map settings (and save them)."""
        s, panel = self.win.settings, self.panel
        s.heatmap_opacity, s.colormap, s.heatmap_on = panel.opacity_value(), panel.colormap(), panel.heatmap_on()
        for vp in self.win.viewports:
            entry = self.drawn_entry(vp)
            if entry is None:
                sr = self._sr_overlay(vp)  # regions of an AI report (DICOM SR) on this image, if any
                if sr is not None or vp.ai is not None:
                    vp.set_ai(sr)
                continue
            pred = entry.prediction
            silent = pred.withheld  # out of scope: no heat map, no regions (Assessment.withheld)
            label = (panel.cam_label_index() if vp is self.win.active and panel.prediction is not None
                     else pred.labels.index(overlay_label(pred, negative_label=entry.package.card.negative_label)))
            label = min(label, len(pred.labels) - 1)
            vp.set_ai(AiOverlay(vp.frame_uid(), pred, list(pred.labels), list(pred.flagged),
                                panel.heatmap_on() and not silent, panel.opacity_value(), panel.colormap(), label,
                                panel.regions_check.isChecked() and not silent, verdict=entry.summary()))

    def _sr_overlay(self, vp: Any) -> AiOverlay | None:
        """The regions of the opened AI reports (TID 1500 SR) on ``vp``'s frame as an overlay (outlines and
        tags, no heat map), or None."""
        reports = getattr(self.win, "sr_reports", None)
        uid = vp.frame_uid()
        if not reports or vp.source is None or uid is None:
            return None
        inst, frame = vp.source.frames[vp.state.frame]
        pred = reports.overlay_prediction(str(getattr(inst, "sop_instance_uid", "") or ""), frame)
        if pred is None:
            return None
        return AiOverlay(uid, pred, pred.labels, pred.flagged, False, 0.0, "jet", 0, True)

    def show_anyway(self) -> None:
        """The reader's override for the active image's out-of-scope result: show the withheld findings, heat map
        and regions, labelled as such on the image, in the panel and in exports."""
        entry = self.entry_for(self.win.active)
        if entry is None or not override_intended_use(entry.prediction):
            return
        self.panel.prediction = None  # re-render
        self.sync()
        self.last_result_line = self.result_line(self.win.active)
        self.win.set_status("Shown anyway: the image is outside the model's intended use")

    def zoom_to_region(self, i: int) -> None:
        """Centre and zoom the active viewport on flagged region ``i`` of its result."""
        entry = self.entry_for(self.win.active)
        main = self.panel.prediction  # the region list is the model's under "Findings"
        if entry is not None and main is not None and entry.prediction is not main:
            entry = next((r.entry for r in self.ai.results(self.win.active.source, self.win.active.state.frame)
                          if r.entry is not None and r.entry.prediction is main), entry)
        if entry is None or not (0 <= i < len(entry.prediction.regions)):
            return
        r = entry.prediction.regions[i]
        self.win.active.centre_on(tuple(float(v) for v in r.bbox))
        p = entry.prediction.scores.get(r.label)
        prob = "" if p is None else f", P={p:.2f}"
        self.win.set_status(f"Region {i + 1}: {r.label}{prob} (class activation peak {r.peak:.2f})")

    def import_model_from(self, path: str) -> None:
        """Validate and install a model package in a worker; a refused package gives an error with the reason."""
        self.ai.import_model(path).add_done_callback(lambda f: self._relay.importDone.emit(f))

    def _on_import_done(self, fut: Any) -> None:  # GUI thread: report, rescan, select the imported package
        exc = fut.exception()
        if exc is not None:
            from medviewer.errors import error_line

            self.win.error("Model refused", error_line(exc))
            return
        pkg = fut.result()
        self.win.set_status(f"Imported {pkg.card.name} {pkg.card.version}")
        self.load_models(str(pkg.path))
