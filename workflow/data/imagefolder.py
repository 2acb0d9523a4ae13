"""ImageFolder trees (e.g. ImageNet): ``root/train/<class>/*`` and ``root/val/<class>/*``.

Class ids are torchvision's ImageFolder ids (sorted folder names), so for ImageNet the
snakes are ids 52-68. ``subset_fraction`` draws a seeded, per-class stratified subset of
the train split (ImageNet-10% with 0.1). Without a ``val`` folder, a seeded per-class
``test_fraction`` of the (subset) train images is held out as the test split.
Images are resized (shorter side) and centre-cropped to ``image_size``; with
``dataset.store_size`` (larger), the train split is stored at that size, so training can
draw random-resized crops (``train.crop``), and the test split and folder concepts are
resized to ``store_size`` and centre-cropped to ``image_size``, the view every other stage
sees of a stored training image (e.g. 256 -> 224, the usual ImageNet evaluation).

``load`` returns arrays (probe sets, tests). The base data stage uses ``split_files``
and ``blocks`` instead: a pool of worker processes decodes blocks of images, at most a
few blocks ahead of the writer, so memory is bounded by the block size, not the dataset.
"""
from __future__ import annotations

import multiprocessing as mp
from collections import deque
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def list_images(folder: Path) -> list:
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in EXTENSIONS)


class ImageDecodeError(ValueError):
    """An image file that cannot be decoded; the message names it."""


def load_image(path, size: int, view: int | None = None) -> np.ndarray:
    """The image resized (shorter side) and centre-cropped to ``size``; then centre-cropped
    to ``view`` when given (the evaluation view of images stored larger than the model's
    input: resize to 256, centre 224)."""
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, named, not later
            return centre(_resize_crop(im.convert("RGB"), size), view)
    except Exception as e:
        raise ImageDecodeError(f"{path}: cannot decode image ({type(e).__name__}: {e}); "
                               f"fix or remove the file") from e


def _resize_crop(im, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` (bilinear), then centre-crop to size x size."""
    w, h = im.size
    s = size / min(w, h)
    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def centre(image: np.ndarray, view: int | None) -> np.ndarray:
    """The central ``view`` x ``view`` pixels of an [H, W, 3] image (itself if None or as large)."""
    if view is None or view >= image.shape[0]:
        return image
    top, left = (image.shape[0] - view) // 2, (image.shape[1] - view) // 2
    return np.ascontiguousarray(image[top:top + view, left:left + view])


def load_images(paths, size: int, desc: str, view: int | None = None) -> np.ndarray:
    out = np.empty((len(paths), view or size, view or size, 3), dtype=np.uint8)
    for i, p in enumerate(tqdm(paths, desc=desc, mininterval=5)):
        out[i] = load_image(p, size, view)
    return out


def _decode_block(args) -> np.ndarray:
    paths, size, view = args
    out = np.empty((len(paths), view or size, view or size, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        out[i] = load_image(p, size, view)
    return out


def blocks(paths, size: int, workers: int = 1, block: int = 64, desc: str = "images", view: int | None = None):
    """Decoded images of ``paths`` in order, as uint8 blocks of at most ``block`` images
    (``load_image(path, size, view)``). With ``workers`` > 1 a process pool decodes them,
    at most 2 x workers blocks ahead."""
    chunks = [(list(paths[s:s + block]), size, view) for s in range(0, len(paths), block)]
    bar = tqdm(total=len(paths), desc=desc, mininterval=5)
    if workers <= 1:
        for c in chunks:
            x = _decode_block(c)
            bar.update(len(x))
            yield x
        bar.close()
        return
    with mp.get_context("fork").Pool(workers) as pool:
        pending, todo = deque(), iter(chunks)
        for c in todo:
            pending.append(pool.apply_async(_decode_block, (c,)))
            if len(pending) >= 2 * workers:
                break
        while pending:
            x = pending.popleft().get()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.apply_async(_decode_block, (nxt,)))
            bar.update(len(x))
            yield x
    bar.close()


def scan(root) -> tuple:
    """(class names, {split: [(path, class_id), ...]}) for the train and (optional) val split."""
    from torchvision.datasets.folder import find_classes, make_dataset

    root = Path(root)
    classes, class_to_idx = find_classes(str(root / "train"))
    splits = {"train": make_dataset(str(root / "train"), class_to_idx, EXTENSIONS)}
    if (root / "val").is_dir():
        splits["val"] = make_dataset(str(root / "val"), class_to_idx, EXTENSIONS)
    return classes, splits


def stratified_subset(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a per-class ``fraction`` (at least one image per class)."""
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, int(round(fraction * len(idx))))
        keep.append(rng.choice(idx, size=k, replace=False))
    return np.sort(np.concatenate(keep))


def load(root, size: int, subset_fraction: float, test_fraction: float, rng: np.random.Generator):
    """Returns dict(train=(images, labels), test=(images, labels), class_names=[...])."""
    files = split_files(root, subset_fraction, test_fraction, rng)
    return {**{split: (load_images(files[split][0], size, f"{split} images"), files[split][1])
               for split in ("train", "test")}, "class_names": files["class_names"]}


def split_files(root, subset_fraction: float, test_fraction: float, rng: np.random.Generator) -> dict:
    """dict(train=(paths, labels), test=(paths, labels), class_names=[...]), no decoding."""
    classes, splits = scan(root)
    tr = splits["train"]
    labels = np.array([c for _, c in tr], dtype=np.int64)
    keep = stratified_subset(labels, subset_fraction, rng) if subset_fraction < 1 else np.arange(len(tr))
    if "val" in splits:
        te = splits["val"]
    else:
        held = stratified_subset(labels[keep], test_fraction, rng)
        mask = np.zeros(len(keep), bool)
        mask[held] = True
        te = [tr[i] for i in keep[mask]]
        keep = keep[~mask]
    tr = [tr[i] for i in keep]
    return {"train": ([p for p, _ in tr], np.array([c for _, c in tr], np.int64)),
            "test": ([p for p, _ in te], np.array([c for _, c in te], np.int64)),
            "class_names": classes}
