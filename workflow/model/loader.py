"""Training images by base index, held on the GPU or in RAM when they fit, else read
batch by batch from the base file; and a background prefetcher.

Every way hands the trainer the same uint8 batches, so a run does not depend on which
was used (tested). On CUDA the kept images are copied to the device, block by block from
the file (host memory stays one block), when they take at most ``DEVICE_SHARE`` of its
free memory: batches are then gathered on the GPU, with no host copies. Otherwise the
choice follows the job's memory request (``--mem-mb``, from the rule's resources): the
kept images are held in RAM when they take at most ``HOLD_SHARE`` of it.
"""
from __future__ import annotations

import queue
import threading

import numpy as np
import torch

from .. import artifacts

HOLD_SHARE = 0.25   # of the job's memory; the rest is the model, optimizer, batches and libraries
DEVICE_SHARE = 0.5  # of the GPU's free memory; the rest is the model, activations and cuDNN workspaces
BLOCK = 1024        # images per read when loading a split


def hold_device(nbytes: int, device):
    """The device to hold ``nbytes`` of images on: ``device`` when it is a GPU with room
    (``DEVICE_SHARE`` of its free memory), else None (RAM or the file)."""
    device = torch.device(device) if device is not None else None
    if device is None or device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return device if nbytes <= DEVICE_SHARE * free else None


class ImageSource:
    """uint8 images and labels of ``split`` for the base indices ``keep`` (sorted).

    ``device``: the job's device; on a GPU with room (``hold_device``) the images are held
    there (``on_device``; ``device_batch`` gathers batches on it)."""

    def __init__(self, path, split: str, keep=None, mem_mb=None, device=None):
        self.reader = artifacts.BaseReader(path, split)
        n_all = len(self.reader.labels)
        self.keep = np.arange(n_all) if keep is None else np.asarray(keep, np.int64)
        nbytes = len(self.keep) * int(np.prod(self.reader.shape[1:]))
        self.device = hold_device(nbytes, device)
        self.on_device = self.device is not None
        self.held = self.on_device or mem_mb is None or nbytes <= HOLD_SHARE * mem_mb * 2 ** 20
        self.labels = self.reader.labels
        if self.held:
            self.row_of = np.full(n_all, -1, np.int64)
            self.row_of[self.keep] = np.arange(len(self.keep))
            if self.on_device:
                self.x = torch.empty((len(self.keep),) + tuple(self.reader.shape[1:]), dtype=torch.uint8,
                                     device=self.device)
                for s in range(0, len(self.keep), BLOCK):
                    self.x[s:s + BLOCK] = torch.from_numpy(self.reader.read(self.keep[s:s + BLOCK])).to(self.device)
                self.row_of_dev = torch.from_numpy(self.row_of).to(self.device)
                self.labels_dev = torch.from_numpy(self.labels).to(self.device)
            else:
                self.x = np.concatenate([self.reader.read(self.keep[s:s + BLOCK])
                                         for s in range(0, len(self.keep), BLOCK)]) if len(self.keep) else \
                    self.reader.read([])
            self.reader.close()

    def __len__(self) -> int:
        return len(self.keep)

    def batch(self, base_idx) -> tuple:
        """(uint8 [B,H,W,3], int64 labels [B]) of these base indices, in this order, as numpy."""
        if self.on_device:
            x, y = self.device_batch(base_idx)
            return x.cpu().numpy(), y.cpu().numpy()
        base_idx = np.asarray(base_idx, np.int64)
        x = self.x[self.row_of[base_idx]] if self.held else self.reader.read(base_idx)
        return x, self.labels[base_idx]

    def device_batch(self, base_idx) -> tuple:
        """``batch`` as tensors on the device that holds the images (only when ``on_device``)."""
        idx = torch.as_tensor(np.asarray(base_idx, np.int64)).to(self.device)
        return self.x[self.row_of_dev[idx]], self.labels_dev[idx]

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
