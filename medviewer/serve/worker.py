"""The AI node's workers: score complete studies, write TID 1500 SR + SC, store them at the destination.

:class:`Scorer` takes one ``waiting`` study at a time from the queue and, for every model loaded, scores
the study's images whose header fits the model card's intended use -- exactly what ``medviewer infer
--dicom`` does: :func:`medviewer.inference.batch.score_instances` with the card's
:class:`~medviewer.workstation.intended_use.IntendedUsePolicy`, the overlay of
:func:`medviewer.export.overlay.render_overlay`, and :class:`medviewer.export.dicom_ai.DicomResultWriter`
for the SR (TID 1500) and the Secondary Capture, in the source study. The modality gate is
:func:`~medviewer.workstation.intended_use.should_auto_run` (a chest X-ray model is not run on CT slices);
when the policy finds the image out of scope on the other criteria (age, view, body part, the
out-of-distribution score), that model does not report on it -- as ``medviewer infer --models`` -- and the
reasons are recorded; ``report_out_of_scope`` writes and sends its "not assessed" SR/SC instead.

Each (instance, model) decision and the SR/SC it produced are committed to the queue right after the
files are written; an instance with a decision is never scored again, so a restart after ``kill -9`` goes
on with the instances not yet decided.

:class:`Sender` stores each study's unsent SR/SC at the destination (C-STORE or STOW-RS,
:func:`medviewer.pacs.connect`). An unreachable destination is retried with exponential backoff
(2 s, 4 s, ... up to ``max_delay``) for as long as it takes; an object the destination refuses is retried
``max_attempts`` times, then the study is ``failed`` with the reason. Results are re-sent with the SOP
Instance UIDs they were written with, so a retry never creates a second object at the destination.
Every AI run and every send (success or failure) is in the audit log.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from medviewer.errors import MedViewerError, error_line
from medviewer.serve.queue import OutputRow, SpoolDB
from medviewer.serve.spool import Spool

__all__ = ["ScoringOptions", "Scorer", "Sender", "backoff"]

_LOG = logging.getLogger("medviewer.serve")
#: a study whose scoring raises (not an image that fails: that is recorded and skipped) is tried this often
SCORE_ATTEMPTS = 3


def backoff(attempt: int, base: float = 2.0, max_delay: float = 60.0) -> float:
    """Seconds to wait before attempt ``attempt + 1``: ``base * 2**(attempt - 1)``, at most ``max_delay``."""
    return float(min(max_delay, base * 2 ** max(0, attempt - 1)))


@dataclass
class ScoringOptions:
    """How studies are scored: provider, batch size, de-identified results (``deidentify`` + ``key`` as
    :class:`~medviewer.export.dicom_ai.DicomResultWriter` takes them)."""

    provider: str = "auto"
    batch_size: int = 8
    workers: int | None = None
    deidentify: bool = False
    key: bytes | None = None
    #: also write (and send) an SR/SC for an image the intended-use policy finds out of scope ("not assessed")
    report_out_of_scope: bool = False


def _model_ref(package: Any) -> dict[str, Any]:
    return {"name": package.card.name, "version": package.card.version, "sha256": package.card.sha256}


class Scorer:
    """Scores complete studies with every model in ``packages`` (loaded once, sessions cached).

    Parameters
    ----------
    spool, db
        The spool and its queue.
    packages
        :class:`medviewer.inference.ModelPackage` s.
    options
        :class:`ScoringOptions`.
    """

    def __init__(self, spool: Spool, db: SpoolDB, packages: Sequence[Any], options: ScoringOptions | None = None) -> None:
        from medviewer.inference.applicability import IntendedUsePolicy
        from medviewer.inference.session import open_session

        self.spool = spool
        self.db = db
        self.packages = list(packages)
        self.options = options or ScoringOptions()
        self.sessions = {p.sha256: open_session(p, self.options.provider) for p in self.packages}
        self.policies = {p.sha256: IntendedUsePolicy(p.card) for p in self.packages}
        self.studies_scored = 0
        self.images_scored = 0

    def run_once(self) -> str | None:
        """Score the oldest waiting study; returns its UID, or None when none waits."""
        study = self.db.claim_study()
        if study is None:
            return None
        try:
            self.score_study(study)
        except Exception as exc:  # a bug or a full disk for results: the study waits, the node goes on
            reason = error_line(exc)
            _LOG.error("study %s: scoring failed: %s", study, reason)
            self.db.event("score-failed", reason, study_uid=study)
            with self.db.tx() as c:  # tried again after --study-timeout, at most SCORE_ATTEMPTS times
                c.execute("UPDATE studies SET attempts=attempts+1, error=?, last_received=?, updated=?, "
                          "state=CASE WHEN attempts+1 >= ? THEN 'failed' ELSE 'receiving' END WHERE study_uid=?",
                          (reason, time.time(), time.time(), SCORE_ATTEMPTS, study))
            return study
        state = self.db.finish_scoring(study)
        self.studies_scored += 1
        _LOG.info("study %s scored -> %s", study, state)
        return study

    def _screen(self, study: str) -> list[tuple[Any, Any]]:
        """The study's images that can be scored, as ``(row, Instance)``; records the others as skipped/failed."""
        from medviewer.export.dicom_ai import MANUFACTURER
        from medviewer.io.instance import read_instance

        out = []
        for row in self.db.study_instances(study):
            if row.state in ("skipped", "failed"):
                continue
            if not row.image:
                why = f"not an image (SOP class {row.sop_class or 'unknown'}): nothing to score"
                self.db.set_instance(row.sop_uid, "skipped", why)
                self.db.event("skipped", why, study_uid=study, sop_uid=row.sop_uid)
                continue
            try:
                inst = read_instance(row.path)
            except Exception as exc:  # ReadError and anything a hostile file provokes
                why = error_line(exc)
                self.db.set_instance(row.sop_uid, "failed", why)
                self.db.event("bad-file", why, study_uid=study, sop_uid=row.sop_uid)
                continue
            if str(inst.dataset.get("Manufacturer", "")) == MANUFACTURER:
                why = "a MedViewer result (not scored again)"
                self.db.set_instance(row.sop_uid, "skipped", why)
                continue
            out.append((row, inst))
        return out

    def score_study(self, study: str) -> None:
        """Score one study with every model (see the module docstring)."""
        from medviewer.inference.applicability import should_auto_run

        self._audit_received(study)
        images = self._screen(study)
        scored_by: dict[str, list[str]] = {row.sop_uid: [] for row, _ in images}
        reasons: dict[str, list[str]] = {row.sop_uid: [] for row, _ in images}
        for package in self.packages:
            sha = package.sha256
            decided = self.db.decided(study, sha)
            todo = []
            for row, inst in images:
                if row.sop_uid in decided:  # decided before a restart: never again
                    outcome, why = decided[row.sop_uid]
                    if outcome == "scored":
                        scored_by[row.sop_uid].append(package.card.name)
                    else:
                        reasons[row.sop_uid].append(f"{package.card.name}: {why or outcome}")
                    continue
                ok, why = should_auto_run(package.card, inst)
                if not ok:
                    self.db.add_decision(sop_uid=row.sop_uid, study_uid=study, model_sha=sha, model=package.card.name,
                                         outcome="not-applicable", reason=why)
                    reasons[row.sop_uid].append(f"{package.card.name}: {why}")
                    continue
                todo.append(inst)
            if todo:
                done, withheld = self._score(study, package, todo)
                for sop in done:
                    scored_by[sop].append(package.card.name)
                for sop, why in withheld.items():
                    reasons[sop].append(why)
        for row, _ in images:
            if scored_by[row.sop_uid]:
                self.db.set_instance(row.sop_uid, "scored", None)
            else:
                why = "; ".join(reasons[row.sop_uid]) or "no model scored it"
                self.db.set_instance(row.sop_uid, "skipped", why)

    def _audit_received(self, study: str) -> None:
        """Audit the study's instances received since it was last scored (PS3.15 A.5.3.3 DICOM Instances
        Transferred, action C: this node created copies), with the senders' AE titles."""
        from medviewer import audit

        rows = self.db.conn().execute("SELECT COUNT(*), GROUP_CONCAT(DISTINCT calling_aet) FROM instances "
                                      "WHERE study_uid=? AND state='received'", (study,)).fetchone()
        if not rows or not rows[0]:
            return
        try:
            audit.record(audit.AuditEvent.RETRIEVED, objects=audit.object_refs([study]),
                         detail={"instances": int(rows[0]), "from": sorted(set((rows[1] or "").split(","))),
                                 "by": "medviewer serve"})
        except (MedViewerError, ValueError) as exc:
            _LOG.warning("audit record not written: %s", exc)

    def _writer(self, study: str, package: Any):
        from medviewer.export.dicom_ai import DicomResultWriter

        writer = DicomResultWriter(self.spool.results_dir(package.sha256, study), package.card,
                                   deidentify=True if self.options.deidentify else None, key=self.options.key)
        if not self.options.deidentify:  # results of one study and model stay in one SR and one SC series
            try:
                from pydicom.uid import generate_uid

                sr, sc = self.db.series_uids(study, package.sha256, lambda: (generate_uid(), generate_uid()))
                n = self.db.conn().execute("SELECT COUNT(*) FROM outputs WHERE study_uid=? AND model_sha=? AND kind='SR'",
                                           (study, package.sha256)).fetchone()[0]
                writer.continue_series(study, sr, sc, sr_count=n, sc_count=n)
            except (ImportError, AttributeError, TypeError):  # the writer changed: new series each time then
                pass
        return writer

    def _score(self, study: str, package: Any, instances: list[Any]) -> tuple[list[str], dict[str, str]]:
        """Score ``instances`` (one study) with ``package``; returns the SOP Instance UIDs that got results, and
        those whose result the intended-use policy withheld (out of scope) with the reason."""
        from pydicom import dcmread

        from medviewer.audit import record_ai_run
        from medviewer.export.overlay import render_overlay
        from medviewer.inference.batch import expand_frames, score_instances

        sha = package.sha256
        card = package.card
        writer = self._writer(study, package)
        lock = threading.Lock()
        items = expand_frames(instances, False)

        withheld: dict[str, str] = {}

        def on_done(outcome, display_u8, pred):
            item = items[outcome.index]
            inst = item.instance
            app = pred.applicability  # an Assessment (medviewer.inference.applicability), set by the policy
            state = None if app is None else json.dumps({"status": app.status.value, "reasons": list(app.reasons)})
            if app is not None and app.out_of_scope and not self.options.report_out_of_scope:
                # the model's intended use does not fit this image: it does not report on it (as `infer --models`)
                why = "; ".join(app.reasons) or "outside the model's intended use"
                self.db.add_decision(sop_uid=inst.sop_instance_uid, study_uid=study, model_sha=sha, model=card.name,
                                     outcome="not-applicable", reason=f"out of scope: {why}",
                                     applicability=state)
                withheld[inst.sop_instance_uid] = f"{card.name}: out of scope: {why}"
                return {}
            rgb = render_overlay(display_u8, pred, negative_label=card.negative_label)
            with lock:  # the writer numbers instances per study
                paths = writer.write(inst.dataset, pred, rgb, applicability=None if app is None else app.to_dict(),
                                     frame=item.frame)
            outputs = []
            for p in paths:
                uid = str(dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
                outputs.append((p.name[:2], uid, str(p)))
            self.db.add_decision(sop_uid=inst.sop_instance_uid, study_uid=study, model_sha=sha, model=card.name,
                                 outcome="scored", flagged=";".join(pred.flagged or []),
                                 applicability=state,
                                 outputs=outputs)
            return {"dicom": [str(p) for p in paths]}

        outcomes = score_instances(self.sessions[sha], items, batch_size=self.options.batch_size,
                                   workers=self.options.workers, policy=self.policies[sha], on_done=on_done)
        done, failed = [], 0
        for o in outcomes:
            if o.ok:
                if o.sop_instance_uid not in withheld:
                    done.append(o.sop_instance_uid)
                continue
            failed += 1
            self.db.add_decision(sop_uid=o.sop_instance_uid or "", study_uid=study, model_sha=sha, model=card.name,
                                 outcome="failed", reason=o.error)
            self.db.event("score-failed", f"{card.name}: {o.error}", study_uid=study, sop_uid=o.sop_instance_uid)
        self.images_scored += len(done)
        ran = [o.sop_instance_uid for o in outcomes if o.ok]  # the model ran on these (in scope or not)
        record_ai_run(_model_ref(package), ran, study_uids=[study], scored=len(ran), failed=failed,
                      provider=self.sessions[sha].provider)
        return done, withheld


class Sender:
    """Stores the written SR/SC of studies in ``sending`` at ``node`` (see the module docstring).

    Parameters
    ----------
    db
        The queue.
    node
        A :class:`medviewer.pacs.Node` or node text (``dicom://AET@host:port``, ``http(s)://...``, saved name).
    aet
        Our calling AE title for DIMSE.
    timeout
        Network timeout in seconds.
    max_delay
        Longest wait between attempts while the destination is unreachable (seconds).
    max_attempts
        Attempts for an object the destination refuses (a failure status, not an unreachable node).
    batch
        Objects per association / STOW-RS request.
    """

    def __init__(self, db: SpoolDB, node: Any, *, aet: str = "MEDVIEWER", timeout: float = 30.0,
                 max_delay: float = 60.0, max_attempts: int = 5, batch: int = 32) -> None:
        from medviewer.pacs import resolve_node

        self.db = db
        self.node = node if not isinstance(node, str) else resolve_node(node)
        self.aet = aet
        self.timeout = timeout
        self.max_delay = max_delay
        self.max_attempts = max(1, int(max_attempts))
        self.batch = max(1, int(batch))
        self.sent = 0

    def run_once(self) -> int:
        """Send every study that is due; returns how many were handled."""
        studies = self.db.due_for_sending()
        for study in studies:
            self.send_study(study)
        return len(studies)

    def _audit(self, study: str, outcome: Any, stored: int, failed: int, reason: str | None = None) -> None:
        from medviewer import audit

        detail = {"instances": stored, "failed": failed, "destination": str(self.node), "by": "medviewer serve"}
        if reason:
            detail["error"] = reason[:200]
        try:
            audit.record(audit.AuditEvent.SENT, outcome=outcome, objects=audit.object_refs([study]), detail=detail)
        except (MedViewerError, ValueError) as exc:
            _LOG.warning("audit record not written: %s", exc)

    def send_study(self, study: str) -> str | None:
        """Send one study's unsent results; returns its new state, or None when it stays ``sending``."""
        from pydicom import dcmread

        from medviewer import audit
        from medviewer.pacs import connect

        outputs = self.db.unsent(study)
        if not outputs:  # nothing scored (e.g. only CT slices for a radiograph model): nothing to send
            return self.db.finish_sending(study, failed=False)
        missing: list[OutputRow] = []
        ready: list[tuple[OutputRow, Any]] = []
        for o in outputs:
            try:
                ready.append((o, dcmread(o.path)))
            except (OSError, ValueError) as exc:
                missing.append(o)
                self.db.mark_output_failed((o.sop_uid, o.model_sha, o.kind), f"result file unreadable ({exc})", final=True)
        stored: list[tuple[str, str, str]] = []
        refused: list[tuple[OutputRow, str]] = []
        try:
            with connect(self.node, aet=self.aet, timeout=self.timeout) as client:
                for i in range(0, len(ready), self.batch):
                    chunk = ready[i:i + self.batch]
                    result = client.store([ds for _, ds in chunk])
                    ok = set(result.stored)
                    why = dict(result.failed)
                    keys = [(o.sop_uid, o.model_sha, o.kind) for o, ds in chunk if str(ds.SOPInstanceUID) in ok]
                    self.db.mark_sent(keys)
                    stored += keys
                    refused += [(o, why.get(str(ds.SOPInstanceUID), "not stored")) for o, ds in chunk
                                if str(ds.SOPInstanceUID) not in ok]
        except MedViewerError as exc:  # unreachable, rejected, timed out: the results wait
            reason = " ".join(str(exc).split())
            attempts = self.db.retry_later(study, reason, 0)
            delay = backoff(attempts, max_delay=self.max_delay)
            with self.db.tx() as c:
                c.execute("UPDATE studies SET next_attempt=? WHERE study_uid=?", (time.time() + delay, study))
            self.db.event("send-failed", f"{reason} (attempt {attempts}, next in {delay:g} s)", study_uid=study)
            if stored:
                self._audit(study, audit.Outcome.MINOR_FAILURE, len(stored), len(outputs) - len(stored), reason)
            elif attempts == 1:  # the first failure of a study is audited, not every retry while a PACS is down
                self._audit(study, audit.Outcome.SERIOUS_FAILURE, 0, len(outputs), reason)
            _LOG.warning("study %s: results not sent (%s); next attempt in %g s", study, reason, delay)
            return None
        self.sent += len(stored)
        final_fail = bool(missing)
        for o, why in refused:
            final = o.attempts + 1 >= self.max_attempts
            final_fail |= final
            self.db.mark_output_failed((o.sop_uid, o.model_sha, o.kind), why, final=final)
            self.db.event("send-refused", f"{o.kind} {o.out_uid}: {why}", study_uid=study, sop_uid=o.sop_uid)
        outcome = (audit.Outcome.SUCCESS if not refused and not missing else
                   audit.Outcome.MINOR_FAILURE if stored else audit.Outcome.SERIOUS_FAILURE)
        if outputs:
            self._audit(study, outcome, len(stored), len(refused) + len(missing),
                        refused[0][1] if refused else None)
        if refused and not all(o.attempts + 1 >= self.max_attempts for o, _ in refused):
            attempts = self.db.retry_later(study, refused[0][1], 0)
            with self.db.tx() as c:
                c.execute("UPDATE studies SET next_attempt=? WHERE study_uid=?",
                          (time.time() + backoff(attempts, max_delay=self.max_delay), study))
            return None
        if final_fail:
            with self.db.tx() as c:
                c.execute("UPDATE studies SET error=? WHERE study_uid=?",
                          ((refused[0][1] if refused else "result file unreadable"), study))
        state = self.db.finish_sending(study, failed=final_fail)
        _LOG.info("study %s: %d results sent to %s -> %s", study, len(stored), self.node, state)
        return state
