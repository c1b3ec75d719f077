"""Training-data augmentation (``augment=basic``): a pure map from a training mini-batch to
its augmented version, with every random draw taken from an explicit generator.

Conventions (``x`` as the training loop sees it: on its device, standardized when
``dataset.normalize=true``, so "zero" is the training mean of each channel):

* images, ``x`` of shape (B, C, H, W): each sample is zero-padded by ``padding`` on every side
  and cropped back to H x W at an offset (dy, dx) drawn uniformly from {0, ..., 2 padding}^2
  (the random crop of Krizhevsky et al. 2012 and He et al. 2016), so
  ``out[b, c, i, j] = pad(x)[b, c, dy_b + i, dx_b + j]``, ``pad(x)[.., i, j] = x[.., i - p, j - p]``
  inside and 0 outside; then, with ``flip``, mirrored left-right (``j -> W - 1 - j``) with
  probability 1/2 per sample;
* 1-D signals, ``x`` of shape (B, C, L): each sample is shifted circularly by an integer
  s_b = d_b - shift, d_b drawn uniformly from {0, ..., 2 shift}
  (``out[b, c, i] = x[b, c, (i - s_b) mod L]``, as ``torch.roll(x[b], s_b, -1)``), then
  Gaussian jitter ``N(0, jitter^2)`` is added to every value (a circular translation and
  i.i.d. Gaussian noise are two of the transformations MNIST-1D's generator draws its
  samples with, Greydanus 2020).

Draw order per batch, each drawn only when its option is on: images: the offsets (B, 2)
(dy, dx), then the flips (B, 1); 1-D: the shift draws d (B,), then the noise (B, C, L) in
float32 (each ``torch.randint``/``torch.randn`` with the generator).
The draws happen on the generator's device and move to the batch's device, so a CPU generator
gives the same augmentation on every device. The training loop seeds one generator per
(job seed, epoch) (:func:`augment_generator`), independent of the batch order's
(:func:`landscope.train.epoch_generator`) and of the global RNGs: a job resumed from an
epoch-boundary checkpoint sees exactly the batches an uninterrupted one does.

Only training mini-batches are augmented: evaluation (train/test loss and accuracy), the
probes and the landscape use the un-augmented data.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from landscope.errors import ConfigError

#: the spawn key that makes the augmentation stream of (seed, epoch) independent of the
#: batch-order stream ``SeedSequence([seed, epoch])``
AUGMENT_STREAM = 1


def augment_generator(seed: int, epoch: int) -> torch.Generator:
    """The (CPU) generator of epoch ``epoch``'s augmentation draws: a child stream of
    ``SeedSequence([seed, epoch])`` (spawn key :data:`AUGMENT_STREAM`), so it never repeats
    the batch order's draws and touches no global RNG."""
    seq = np.random.SeedSequence([seed, epoch], spawn_key=(AUGMENT_STREAM,))
    return torch.Generator().manual_seed(int(seq.generate_state(1, dtype=np.uint64)[0]))


@dataclass(frozen=True)
class BasicAugment:
    """``augment=basic`` (see the module docstring for the exact maps and draw order)."""

    padding: int = 4  # images: zeros on each side before the random crop
    flip: bool = True  # images: horizontal flip with probability 1/2
    shift: int = 4  # 1-D: circular shift by up to this many positions either way
    jitter: float = 0.05  # 1-D: std of the additive Gaussian noise

    def __post_init__(self) -> None:
        if self.padding < 0 or self.shift < 0 or not self.jitter >= 0:
            raise ValueError(f"padding, shift and jitter must be >= 0 (got {self.padding}, "
                             f"{self.shift}, {self.jitter})")

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """The augmented batch (a new tensor; ``x`` is never modified)."""
        if x.dim() == 4:
            return self.images(x, generator)
        if x.dim() == 3:
            return self.signals(x, generator)
        raise ValueError(f"augment=basic takes batches of images (B, C, H, W) or 1-D "
                             f"signals (B, C, L); got shape {tuple(x.shape)}")

    def images(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Random crop after zero padding, then the horizontal flip (one gather)."""
        b, _, h, w = x.shape
        p = self.padding
        dev = x.device
        rows = torch.arange(h, device=dev).expand(b, h)
        cols = torch.arange(w, device=dev).expand(b, w)
        if p > 0:
            offsets = torch.randint(0, 2 * p + 1, (b, 2), generator=generator,
                                    device=generator.device).to(dev)
            rows, cols = rows + offsets[:, :1], cols + offsets[:, 1:]
            x = torch.nn.functional.pad(x, (p, p, p, p))
        if self.flip:
            flips = torch.randint(0, 2, (b, 1), generator=generator,
                                  device=generator.device).to(dev).bool()
            cols = torch.where(flips, cols.flip(-1), cols)
        if p == 0 and not self.flip:
            return x.clone()
        index = torch.arange(b, device=dev)[:, None, None]
        # advanced indices around a slice: the result is (B, H, W, C)
        return x[index, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()

    def signals(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Circular shift per sample (one gather from a cached index table), then the
        Gaussian jitter (``torch.add(out, noise, alpha=jitter)``)."""
        b, c, length = x.shape
        out = x
        if self.shift > 0:
            draws = torch.randint(0, 2 * self.shift + 1, (b,), generator=generator,
                                  device=generator.device).to(x.device)
            index = _shift_table(length, self.shift, x.device)[draws]
            out = torch.gather(x, 2, index[:, None, :].expand(b, c, length))
        if self.jitter > 0:
            noise = torch.randn((b, c, length), generator=generator, device=generator.device)
            out = torch.add(out, noise.to(x.device, x.dtype), alpha=self.jitter)
        return out.clone() if out is x else out


@lru_cache(maxsize=16)
def _shift_table(length: int, shift: int, device: torch.device) -> Tensor:
    """Row k: the gather index of a circular shift by s = k - shift, ``(i - s) mod length``
    (shape (2 shift + 1, length))."""
    s = torch.arange(-shift, shift + 1, device=device)[:, None]
    return (torch.arange(length, device=device) - s) % length


def make_augment(cfg: Any) -> Optional[BasicAugment]:
    """The augmentation of an ``augment`` config group: None for ``none`` (the training loop
    then runs exactly as without the option), a :class:`BasicAugment` for ``basic``."""
    name = str(getattr(cfg, "name", "none"))
    if name == "none":
        return None
    if name == "basic":
        return BasicAugment(padding=int(cfg.padding), flip=bool(cfg.flip),
                            shift=int(cfg.shift), jitter=float(cfg.jitter))
    raise ConfigError(f"unknown augment {name!r}; choose none or basic")


#: what result.json and the log say about the data the post-training stages use
UNAUGMENTED_NOTE = ("training mini-batches only were augmented: train/test metrics, probes and "
                    "landscape slices use the un-augmented data")


def augment_fields(cfg: Any) -> dict:
    """result.json's record of the augmentation: ``{}`` for ``none`` (a result exactly as
    before the option), else its name and :data:`UNAUGMENTED_NOTE`."""
    name = str(getattr(cfg, "name", "none"))
    return {} if name == "none" else {"augment": name, "augment_note": UNAUGMENTED_NOTE}


def stage_data_note(cfg: Any) -> str:
    """The suffix of a post-training stage's log line: empty for ``augment=none``."""
    name = str(getattr(getattr(cfg, "augment", None), "name", "none"))
    return "" if name == "none" else \
        f" on the un-augmented training data (augment={name} changed training batches only)"
