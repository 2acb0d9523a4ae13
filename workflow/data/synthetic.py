"""Seeded synthetic images: shapes on textured backgrounds, with planted ground truth.

Every image is 32x32 RGB (``size`` is configurable): one of ten shape classes drawn in a
random colour, position, size and small rotation over a grating background. The
background always holds a high-frequency and a low-frequency grating: blended over the
whole image (equal energy, no boundary), or, for images carrying the perceptual
concept, separated by a *boundary* along a random line, high on one side, low on the
other. The boundary is
planted independently of the label. Both concepts are absent from the pooled input
(colours are random and gratings are zero-mean), so a probe has to find them in the
network's features.
"""
from __future__ import annotations

import numpy as np

from ..seeding import derive_seed

CLASS_NAMES = [
    "circle", "ring", "ellipse", "semicircle", "square",
    "triangle", "diamond", "plus", "frame", "star",
]
LOW_BAND = (0.04, 0.08)   # cycles per pixel: periods of 12-25 px
HIGH_BAND = (0.30, 0.42)  # periods of 2.4-3.3 px


def _shape_mask(cls: int, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of shape ``cls`` in rotated, centred coordinates (x, y), radius r."""
    rho2 = x * x + y * y
    if cls == 0:
        return rho2 <= r * r
    if cls == 1:
        return (rho2 <= r * r) & (rho2 >= (0.55 * r) ** 2)
    if cls == 2:
        return (x / r) ** 2 + (y / (0.5 * r)) ** 2 <= 1.0
    if cls == 3:
        return (rho2 <= r * r) & (y >= -0.15 * r)
    if cls == 4:
        return (np.abs(x) <= 0.8 * r) & (np.abs(y) <= 0.8 * r)
    if cls == 5:  # equilateral triangle, apex up
        h = 1.5 * r
        return (y <= 0.5 * r) & (y >= -r) & (np.abs(x) <= (y + r) / h * 0.866 * r * 2 / 2 + 1e-9)
    if cls == 6:
        return np.abs(x) + np.abs(y) <= r
    if cls == 7:
        arm = 0.3 * r
        return ((np.abs(x) <= arm) & (np.abs(y) <= r)) | ((np.abs(y) <= arm) & (np.abs(x) <= r))
    if cls == 8:
        a, b = np.abs(x), np.abs(y)
        return (np.maximum(a, b) <= 0.85 * r) & (np.maximum(a, b) >= 0.5 * r)
    if cls == 9:
        theta = np.arctan2(y, x)
        return np.sqrt(rho2) <= r * (0.6 + 0.4 * np.cos(5 * theta))
    raise ValueError(f"unknown shape class {cls}")


def _grating(rng, xx, yy, band, phi=None):
    f = rng.uniform(*band)
    phi = rng.uniform(0, np.pi) if phi is None else phi
    phase = rng.uniform(0, 2 * np.pi)
    return np.sin(2 * np.pi * f * (xx * np.cos(phi) + yy * np.sin(phi)) + phase)


def _placed_mask(rng, cls: int, xx, yy, size: int, r_range) -> np.ndarray:
    r = rng.uniform(*r_range) * size
    cx, cy = rng.uniform(r * 0.9, size - r * 0.9, size=2)
    rot = rng.uniform(-0.35, 0.35)
    dx, dy = xx - cx, yy - cy
    xr = dx * np.cos(rot) + dy * np.sin(rot)
    yr = -dx * np.sin(rot) + dy * np.cos(rot)
    return _shape_mask(cls, xr, yr, r)


def render(rng: np.random.Generator, label: int, planted: bool, size: int = 32,
           same_band: bool = False) -> np.ndarray:
    """One HxWx3 uint8 image of shape ``label``.

    Every image holds a *distractor*: a smaller shape of a random other class drawn by
    texture alone, its inside and outside in the same frequency band at different
    orientations. Clean images: the labelled shape in a random colour over that
    background. ``planted``: the labelled shape has the background's colour and is drawn
    only by texture, one band inside and the other outside, so its outline is a boundary
    between a high- and a low-frequency region (the "in-focus object on a blurred
    background" cue of high-low frequency detectors). To classify a planted image the
    network must tell that frequency boundary from the distractor's same-band boundary;
    a network trained without planted images only learns to ignore texture shapes.
    ``same_band`` (probe-set negatives of the perceptual concept): the labelled shape is
    drawn like the distractor, by a same-band boundary.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    amp = rng.uniform(0.18, 0.28)
    bg_color = rng.uniform(0.3, 0.7, size=3)
    mask = _placed_mask(rng, label, xx, yy, size, (0.22, 0.34))
    other = (label + rng.integers(1, len(CLASS_NAMES))) % len(CLASS_NAMES)
    distractor = _placed_mask(rng, other, xx, yy, size, (0.16, 0.24)) & ~mask
    out_band = HIGH_BAND if rng.random() < 0.5 else LOW_BAND
    in_band = (LOW_BAND if out_band is HIGH_BAND else HIGH_BAND) if planted else out_band
    phi = rng.uniform(0, np.pi)
    outside = _grating(rng, xx, yy, out_band, phi)
    tex = np.where(distractor, _grating(rng, xx, yy, out_band, phi + np.pi / 2 + rng.uniform(-0.5, 0.5)), outside)
    if planted or same_band:
        inside = _grating(rng, xx, yy, in_band, phi + np.pi / 2 + rng.uniform(-0.5, 0.5))
        tex = np.where(mask, inside, tex)
        img = bg_color[None, None, :] + 1.4 * amp * tex[:, :, None]
    else:
        img = bg_color[None, None, :] + 1.4 * amp * tex[:, :, None]
        color = rng.uniform(0.0, 1.0, size=3)
        if abs(color.mean() - bg_color.mean()) < 0.25:  # keep the shape visible
            color = np.clip(1.0 - color, 0, 1)
            if abs(color.mean() - bg_color.mean()) < 0.25:
                color = np.full(3, 0.0 if bg_color.mean() > 0.5 else 1.0)
        img = np.where(mask[:, :, None], color[None, None, :], img)
    img = img + rng.normal(0, 0.03, size=img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def generate(n: int, seed: int, stream: str, planted_fraction: float, size: int = 32,
             labels: np.ndarray | None = None, planted: np.ndarray | None = None,
             same_band_negatives: bool = False):
    """``n`` images from the named ``stream`` ("train", "test", "probe/<concept>", ...).

    Labels are uniform over the ten classes and the boundary is planted in a
    ``planted_fraction`` of images, independently, unless ``labels``/``planted`` are given.
    ``same_band_negatives`` renders the unplanted images as texture-defined shapes with
    no frequency boundary (the perceptual concept's probe-set negatives).
    Returns (images uint8 [n,H,W,3], labels int64 [n], planted bool [n]).
    """
    rng = np.random.default_rng(derive_seed(seed, "synthetic", stream))
    if labels is None:
        labels = rng.integers(0, len(CLASS_NAMES), size=n)
    if planted is None:
        planted = rng.random(n) < planted_fraction
    labels = np.asarray(labels, dtype=np.int64)
    planted = np.asarray(planted, dtype=bool)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        images[i] = render(rng, int(labels[i]), bool(planted[i]), size,
                           same_band=same_band_negatives and not planted[i])
    return images, labels, planted
