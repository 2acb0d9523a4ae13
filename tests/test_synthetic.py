import numpy as np

from workflow.datasets import synthetic


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
        assert diff.max() < 0.05 * 255 * 0.2  # under 1% of the range per channel
