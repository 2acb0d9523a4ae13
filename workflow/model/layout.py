"""The memory layout training runs a model in (``train.memory_format``), with the CPU guard.

channels_last is used on CUDA only. On the CPU, torch 2.14.1's channels_last training
(oneDNN kernels) is unsafe in two measured ways, so a CPU job asked for it trains
contiguous (NCHW) instead and logs one line saying so:

- on AVX2 kernels, the weight gradient of a 1x1 convolution with fewer than 8 channels
  (oneDNN's ``jit_avx2_1x1_convolution_bwd_weights_t``) corrupts the heap: segfaults,
  "double free or corruption", "munmap_chunk(): invalid pointer" and hangs, in every run
  of a width-2 or width-4 ResNet-18 (its strided 1x1 downsample convolutions have 2-8
  channels);
- on AVX2 and AVX-512 kernels alike, one step's parameter gradients of a width-8 ResNet-18
  at 32 px differed from float64 by up to 5.4% of a tensor's largest entry (width 64 at
  96 px: 2.2%), where NCHW agreed to 3e-6. Each layer alone was exact; the error grows
  backwards from the last block through the residual stages.

The fallback is deterministic, so the same config still gives the same bytes.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def use_channels_last(memory_format: str, device_type: str) -> bool:
    """Whether training runs channels_last: asked for (``auto``: on CUDA), and on CUDA."""
    if device_type == "cuda":
        return memory_format in ("channels_last", "auto")
    if memory_format == "channels_last":
        log.warning("train.memory_format channels_last: training contiguous (NCHW) on the CPU instead; torch's CPU "
                    "channels_last training crashes on AVX2 kernels and gives inexact gradients "
                    "(docs/config.md, train.memory_format)")
    return False
