"""Training images by base index, held in RAM when they fit the job's memory, else read
batch by batch from the base file; and a background prefetcher.

Both ways hand the trainer the same uint8 batches, so a run does not depend on which
was used (tested). The choice follows the job's memory request (``--mem-mb``, from the
rule's resources): the kept images are held when they take at most ``HOLD_SHARE`` of it.
"""
from __future__ import annotations

import queue
import threading

import numpy as np

from .. import artifacts

HOLD_SHARE = 0.25   # of the job's memory; the rest is the model, optimizer, batches and libraries


class ImageSource:
    """uint8 images and labels of ``split`` for the base indices ``keep`` (sorted)."""

    def __init__(self, path, split: str, keep=None, mem_mb=None):
        self.reader = artifacts.BaseReader(path, split)
        n_all = len(self.reader.labels)
        self.keep = np.arange(n_all) if keep is None else np.asarray(keep, np.int64)
        row_bytes = int(np.prod(self.reader.shape[1:]))
        self.held = mem_mb is None or len(self.keep) * row_bytes <= HOLD_SHARE * mem_mb * 2 ** 20
        self.labels = self.reader.labels
        if self.held:
            self.row_of = np.full(n_all, -1, np.int64)
            self.row_of[self.keep] = np.arange(len(self.keep))
            self.x = np.concatenate([self.reader.read(self.keep[s:s + 1024])
                                     for s in range(0, len(self.keep), 1024)]) if len(self.keep) else \
                self.reader.read([])
            self.reader.close()

    def __len__(self) -> int:
        return len(self.keep)

    def batch(self, base_idx) -> tuple:
        """(uint8 [B,H,W,3], int64 labels [B]) of these base indices, in this order."""
        base_idx = np.asarray(base_idx, np.int64)
        x = self.x[self.row_of[base_idx]] if self.held else self.reader.read(base_idx)
        return x, self.labels[base_idx]

    def in_order(self, batch_size: int):
        """Every kept image once, in index order, in batches."""
        for s in range(0, len(self.keep), batch_size):
            yield self.batch(self.keep[s:s + batch_size])

    def close(self) -> None:
        self.reader.close()


def prefetch(iterable, depth: int = 2):
    """Iterate ``iterable`` in a background thread, at most ``depth`` items ahead (HDF5
    reads and pinning overlap the model's work); an exception is raised here, in order."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    end = object()

    def work():
        try:
            for item in iterable:
                q.put(item)
        except BaseException as e:   # handed over to the consumer
            q.put(e)
        q.put(end)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    while True:
        item = q.get()
        if item is end:
            break
        if isinstance(item, BaseException):
            raise item
        yield item
    t.join()
