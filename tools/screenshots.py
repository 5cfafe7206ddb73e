"""The documentation's demo screenshot: take it from the current code, and check that the one in docs/ still
shows what the app shows.

    python tools/screenshots.py all docs/screenshots     # what `make screenshots` runs (under Xvfb)
    python tools/screenshots.py take demo.png            # the demo window only
    python tools/screenshots.py check                    # CI: .ci/run and tests/test_packaging.py

``all`` writes ``demo.png`` (below) and, with packaging/screenshots.py in the same clean environment,
``ct_lung_measure.png`` (needs ../shared/data) and ``model_card.png``.

``take`` runs ``medviewer --demo --screenshot FILE`` in a clean environment: empty settings, user model
folder and audit log (XDG_CONFIG_HOME / XDG_DATA_HOME in a temporary folder, MEDVIEWER_MODEL_PATH unset),
so only the built-in model and the demo studies decide what is shown. Without a display it runs on Qt's
offscreen platform (``make screenshots`` puts it under Xvfb instead; both give the same pixels).

``check`` takes a fresh screenshot and compares it with ``docs/screenshots/demo.png`` perceptually, not
byte for byte: both images are smoothed with a 9x9 Gaussian (sigma 1.7 px), and the share of pixels
whose largest channel difference exceeds 48 of 255 must stay at or under 1 %. Measured on the 1600x1000
demo window (see docs/development.md): the same code under Xvfb and offscreen, 0.000 %; font antialiasing
off, 0.03 %; hinting none / subpixel RGB, 0.02 % / 0.000 %; a changed number in the AI panel, 0.000 %
(timings in the status bar never fail it). Fails: no model loaded, 6.7 %; the heat map gone from one
pane, 3.5 %; the active pane and browser selection moved, 3.0 %; the old hero shot of model 1.0.0, 45 %.
Full hinting moves the text by whole pixels (2.0 %) and fails too: the reference is taken with fontconfig's
default (hintslight) on Debian/Ubuntu's DejaVu Sans.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEMO_SCREENSHOT = REPO / "docs" / "screenshots" / "demo.png"
BLUR_KSIZE = 9
LEVEL = 48  #: of 255, largest channel difference after smoothing that counts a pixel as changed
MAX_CHANGED = 0.01  #: share of changed pixels tolerated


@dataclass(frozen=True)
class Comparison:
    """Result of :func:`compare`: ``changed`` is the share (0..1) of pixels that differ perceptibly."""

    changed: float
    size_a: tuple[int, int]
    size_b: tuple[int, int]

    @property
    def same_size(self) -> bool:
        return self.size_a == self.size_b

    @property
    def matches(self) -> bool:
        return self.same_size and self.changed <= MAX_CHANGED

    def describe(self) -> str:
        if not self.same_size:
            return f"sizes differ: {self.size_a[1]}x{self.size_a[0]} vs {self.size_b[1]}x{self.size_b[0]}"
        return (f"{100 * self.changed:.3f} % of pixels differ by more than {LEVEL}/255 after a "
                f"{BLUR_KSIZE}x{BLUR_KSIZE} Gaussian (tolerance {100 * MAX_CHANGED:.1f} %)")


def _read(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"{path}: missing or not an image")
    return img


def changed_mask(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels of two (H, W, 3) uint8 BGR images whose largest channel difference exceeds
    :data:`LEVEL` after smoothing both with a :data:`BLUR_KSIZE` Gaussian (antialiasing and sub-pixel
    glyph differences are averaged away; a changed region of a few pixels' width is not)."""
    ba = cv2.GaussianBlur(a.astype(np.float32), (BLUR_KSIZE, BLUR_KSIZE), 0)
    bb = cv2.GaussianBlur(b.astype(np.float32), (BLUR_KSIZE, BLUR_KSIZE), 0)
    return np.abs(ba - bb).max(axis=2) > LEVEL


def compare(a: str | Path, b: str | Path, diff_out: str | Path | None = None) -> Comparison:
    """Compare two screenshots (PNG files); with ``diff_out``, write ``b`` with the changed pixels in red.

    Raises
    ------
    FileNotFoundError
        A file is missing or is not an image.
    """
    ia, ib = _read(Path(a)), _read(Path(b))
    if ia.shape != ib.shape:
        return Comparison(1.0, ia.shape[:2], ib.shape[:2])
    mask = changed_mask(ia, ib)
    if diff_out is not None:
        out = (ib // 2).copy()
        out[mask] = (0, 0, 255)
        Path(diff_out).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(diff_out), out)
    return Comparison(float(mask.mean()), ia.shape[:2], ib.shape[:2])


def clean_env(home: Path) -> dict[str, str]:
    """The environment of a reproducible demo run: settings, user models and audit log under ``home``."""
    env = {k: v for k, v in os.environ.items() if k not in ("MEDVIEWER_MODEL_PATH", "PYTHONPATH")}
    env.update(XDG_CONFIG_HOME=str(home / "config"), XDG_DATA_HOME=str(home / "data"),
               XDG_CACHE_HOME=str(home / "cache"), LC_ALL="C.UTF-8", TZ="UTC")
    if not (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY")):
        env["QT_QPA_PLATFORM"] = "offscreen"
    return env


def take(out: str | Path, python: str = sys.executable, timeout_s: float = 300) -> Path:
    """Run ``medviewer --demo --screenshot out`` in :func:`clean_env`; returns ``out``.

    Raises
    ------
    RuntimeError
        The app exited non-zero (its stderr is in the message): the demo could not show what it promises.
    """
    out = Path(out).resolve()
    with tempfile.TemporaryDirectory(prefix="medviewer-shot-") as tmp:
        proc = subprocess.run([python, "-m", "medviewer", "--demo", "--screenshot", str(out)],
                              capture_output=True, text=True, env=clean_env(Path(tmp)), cwd=tmp, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"medviewer --demo --screenshot exited {proc.returncode}: {proc.stderr.strip()}")
    return out


def check(reference: Path = DEMO_SCREENSHOT, diff_out: Path | None = None) -> Comparison:
    """A fresh demo screenshot compared with ``reference`` (see :func:`compare`)."""
    with tempfile.TemporaryDirectory(prefix="medviewer-check-") as tmp:
        now = take(Path(tmp) / "demo.png")
        return compare(reference, now, diff_out)


def take_all(outdir: str | Path, python: str = sys.executable, timeout_s: float = 600) -> list[Path]:
    """Every documentation screenshot into ``outdir``: the demo (:func:`take`), then packaging/screenshots.py
    (CT measurements, model card) in :func:`clean_env`. Returns the files written.

    Raises
    ------
    RuntimeError
        A run exited non-zero.
    """
    outdir = Path(outdir).resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    written = [take(outdir / "demo.png", python, timeout_s)]
    with tempfile.TemporaryDirectory(prefix="medviewer-shot-") as tmp:
        proc = subprocess.run([python, str(REPO / "packaging" / "screenshots.py"), str(outdir)], text=True,
                              capture_output=True, env=clean_env(Path(tmp)), cwd=REPO, timeout=timeout_s)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"packaging/screenshots.py exited {proc.returncode}")
    written += [Path(line.split(" ", 1)[1]) for line in proc.stdout.splitlines() if line.startswith("wrote ")]
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser("all", help="every documentation screenshot (demo, CT measurements, model card)")
    a.add_argument("outdir", type=Path, nargs="?", default=DEMO_SCREENSHOT.parent)
    t = sub.add_parser("take", help="save the demo window, as `medviewer --demo --screenshot` shows it now")
    t.add_argument("out", type=Path, nargs="?", default=DEMO_SCREENSHOT)
    c = sub.add_parser("check", help="exit 1 when docs/screenshots/demo.png no longer matches the app")
    c.add_argument("--reference", type=Path, default=DEMO_SCREENSHOT)
    c.add_argument("--diff", type=Path, default=REPO / "build" / "screenshot-diff.png",
                   help="where the changed pixels are drawn in red (default: %(default)s)")
    cmp_ = sub.add_parser("compare", help="compare two PNG files")
    cmp_.add_argument("a", type=Path)
    cmp_.add_argument("b", type=Path)
    args = ap.parse_args(argv)
    try:
        if args.command == "all":
            for path in take_all(args.outdir):
                print(f"wrote {path}")
            return 0
        if args.command == "take":
            print(f"wrote {take(args.out)}")
            return 0
        result = (check(args.reference, args.diff) if args.command == "check" else compare(args.a, args.b))
    except (RuntimeError, FileNotFoundError, subprocess.TimeoutExpired) as exc:
        print(f"screenshots: error: {exc}", file=sys.stderr)
        return 1
    if result.matches:
        print(f"screenshots: match ({result.describe()})")
        return 0
    where = f"; changed pixels in red: {args.diff}" if args.command == "check" and result.same_size else ""
    print(f"screenshots: error: the screenshots differ ({result.describe()}){where}; "
          f"run `make screenshots` and commit docs/screenshots", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
