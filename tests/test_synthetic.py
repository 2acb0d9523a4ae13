import numpy as np

from workflow.data import synthetic


def test_same_seed_same_bytes():
    a = synthetic.generate(30, 7, "train", 0.3)
    b = synthetic.generate(30, 7, "train", 0.3)
    for x, y in zip(a, b):
        assert x.tobytes() == y.tobytes()


def test_seed_and_stream_change_the_images():
    a = synthetic.generate(10, 7, "train", 0.3)[0]
    assert a.tobytes() != synthetic.generate(10, 8, "train", 0.3)[0].tobytes()
    assert a.tobytes() != synthetic.generate(10, 7, "test", 0.3)[0].tobytes()


def test_shapes_labels_and_planted_fraction():
    images, labels, planted = synthetic.generate(2000, 0, "train", 0.3)
    assert images.shape == (2000, 32, 32, 3) and images.dtype == np.uint8
    assert set(np.unique(labels)) == set(range(10))
    assert abs(planted.mean() - 0.3) < 0.04
    # planting is independent of the label: every class has planted and clean images
    for c in range(10):
        assert 0.15 < planted[labels == c].mean() < 0.45


def test_given_labels_and_planted_are_respected():
    labels = np.array([0, 5, 9, 3])
    planted = np.array([True, False, True, False])
    _, lab, pl = synthetic.generate(4, 0, "probe/x", 0.5, labels=labels, planted=planted)
    assert (lab == labels).all() and (pl == planted).all()


def test_concepts_not_visible_in_channel_means():
    """The pooled input (mean colour) carries neither the planted boundary nor the shape class."""
    images, labels, planted = synthetic.generate(1500, 1, "train", 0.5)
    means = images.reshape(len(images), -1, 3).mean(1)
    for mask in (planted, labels < 4):
        diff = np.abs(means[mask].mean(0) - means[~mask].mean(0))
        se = means.std(0) * np.sqrt(1 / mask.sum() + 1 / (~mask).sum())
        assert (diff < 4 * se).all()      # no more than sampling noise ...
        assert diff.max() < 0.02 * 255    # ... and under 2% of the range per channel


def test_planted_shapes_are_drawn_by_a_frequency_boundary_only():
    """Planted images: shape and background share a colour; high band on one side of the
    outline, low on the other. Same-band negatives: a texture boundary of one band."""
    from workflow.data.synthetic import render

    def band_energy(img):
        g = img.mean(2) - img.mean()
        f = np.abs(np.fft.fft2(g)) ** 2
        fy, fx = np.meshgrid(np.fft.fftfreq(g.shape[0]), np.fft.fftfreq(g.shape[1]), indexing="ij")
        r = np.hypot(fx, fy)
        return f[(r > 0.28) & (r < 0.45)].sum(), f[(r > 0.03) & (r < 0.1)].sum()

    hi_lo, same = [], []
    for i in range(40):
        p = render(np.random.default_rng(i), i % 10, planted=True).astype(float)
        n = render(np.random.default_rng(i), i % 10, planted=False, same_band=True).astype(float)
        hi_lo.append(min(band_energy(p)) / max(band_energy(p)))
        same.append(min(band_energy(n)) / max(band_energy(n)))
    # a planted image holds both bands in quantity; a same-band negative mostly one
    assert np.median(hi_lo) > 5 * np.median(same)
