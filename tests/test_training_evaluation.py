"""Honest-evaluation helpers: patient-level bootstrap, temperature scaling, ECE, shifted copies, thorax mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from training.evaluation import (  # noqa: E402
    acquisition_shift,
    apply_temperature,
    cam_in_thorax,
    expected_calibration_error,
    fit_temperature,
    patient_bootstrap,
    thorax_mask,
)

KERMANY = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kermany-cxr-224" / "train"


def test_patient_bootstrap_is_wider_than_image_bootstrap_when_images_cluster() -> None:
    # 40 patients with 6 near-identical films each: the information is 40 cases, not 240
    rng = np.random.default_rng(0)
    y_p = np.repeat([0, 1], 20)
    s_p = np.clip(rng.normal(0.35 + 0.3 * y_p, 0.2), 0, 1)
    y, s = np.repeat(y_p, 6), np.repeat(s_p, 6) + rng.normal(0, 1e-3, 240)
    groups = np.repeat([f"p{i}" for i in range(40)], 6)
    by_patient = patient_bootstrap(y, s, groups, 0.5, n_boot=400, seed=1)
    by_image = patient_bootstrap(y, s, np.arange(240).astype(str), 0.5, n_boot=400, seed=1)
    width = {k: v[1] - v[0] for k, v in by_patient.items()}
    assert all(width[k] > 1.8 * (by_image[k][1] - by_image[k][0]) for k in width)
    with pytest.raises(ValueError, match="two patients"):
        patient_bootstrap(y[:3], s[:3], ["a"] * 3, 0.5)


def test_temperature_scaling_recovers_the_temperature_and_lowers_ece() -> None:
    rng = np.random.default_rng(0)
    z_true = rng.normal(0, 2.0, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-z_true))).astype(int)
    z_overconfident = 3.0 * z_true
    t = fit_temperature(y, z_overconfident)
    assert t == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(y, apply_temperature(z_overconfident, 1.0))
    after = expected_calibration_error(y, apply_temperature(z_overconfident, t))
    assert after < before / 2


@pytest.mark.skipif(not KERMANY.is_dir(), reason="../shared/data/kermany-cxr-224 not available")
def test_thorax_mask_and_cam_location_on_real_radiographs() -> None:
    from training.data import read_display_u8

    paths = sorted((KERMANY / "NORMAL").glob("*.jpeg"))[:20] + sorted((KERMANY / "PNEUMONIA").glob("*.jpeg"))[:20]
    imgs = [read_display_u8(p)[..., 0] for p in paths]
    masks = [thorax_mask(im) for im in imgs]
    ok = [m for m in masks if m.ok]
    assert len(ok) >= 32  # a plausible thorax on at least 80 % of real films
    for m in ok:
        h, w = m.mask.shape
        assert 0.10 <= m.mask.mean() <= 0.80
        assert not m.mask[:, 0].all() and not m.mask[:, -1].all()  # not the whole width
    # a CAM peaking in the middle of the chest is inside, one in a corner is outside
    centre = np.zeros((len(imgs), 7, 7), np.float32)
    centre[:, 3, 2] = 1.0
    corner = np.zeros_like(centre)
    corner[:, 6, 6] = 1.0
    inside, outside = cam_in_thorax(imgs, centre), cam_in_thorax(imgs, corner)
    assert inside["n_mask"] == len(ok) and inside["rate"] > 0.8 and outside["rate"] < 0.2
    # the shift changes pixels but keeps the geometry and dtype
    sh = acquisition_shift(imgs[0], np.random.default_rng(0), 1.3)
    assert sh.shape == imgs[0].shape and sh.dtype == np.uint8 and np.abs(sh.astype(int) - imgs[0]).mean() > 3
