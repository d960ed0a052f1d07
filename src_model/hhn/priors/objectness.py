"""Objectness: is a descriptor cell part of a *thing* (an object with a shape: a car, a face, a chair) or
of *stuff* (grass, sky, road, walls)? A logistic-regression head on the co-segmentation prior's dense
descriptors (``hhn.priors.features``), learnt once from pixel masks of *base* classes and shipped as a
small file, so the prior can tell a small object from the context that surrounds it in every tagged
image (``CosegPrior(objectness=...)``).

The shipped head (:data:`DEFAULT_HEAD`) was fitted on MSRC-v2 images that show none of the default
model's held-out classes (cow, sheep, cat, dog, bird), with the base classes split as
:data:`MSRC_THINGS` and :data:`MSRC_STUFF`: it has never seen a held-out class, so measuring it on them
is fair. What it learnt is MSRC's idea of a thing (photographed objects); on other kinds of images
(microscopy, aerial) it may not transfer: the prior then falls back per class (``hhn.priors.coseg``) or
the head can be refitted on the user's own base classes (``python -m hhn.priors.objectness``).

File format: safetensors with ``weight`` ``float32 (C,)`` and ``bias`` ``float32 (1,)``; its metadata holds
the descriptor settings the head was fitted on (``backbone``, ``size``, ``tap_weights``) and how it was
made (``things``, ``stuff``, ``data``, ``images``, ``cells``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hhn.data import msrc_folds

#: the head shipped with the library (fitted by ``main`` with its defaults on MSRC-v2)
DEFAULT_HEAD = Path(__file__).with_name("objectness_lite0_320.safetensors")

#: MSRC-v2 base classes (the default model's training classes) counted as things, and as stuff
MSRC_THINGS = ("horse", "aeroplane", "face", "car", "bicycle", "flower", "sign", "book", "chair", "body", "boat")
MSRC_STUFF = ("building", "grass", "tree", "sky", "mountain", "water", "road")

#: a cell is a training example when at least this share of it is one kind (thing or stuff)
PURE_CELL = 0.8


@dataclass
class ObjectnessHead:
    """``P(thing)`` of descriptor cells: ``sigmoid(weight . x + bias)``.

    Attributes:
        weight: ``float32 (C,)``; bias: the logit offset.
        backbone, size, tap_weights: the descriptors the head reads (``DenseFeatures(backbone, size)`` with
            those tap weights); a prior with other descriptors must not use it.
        info: how the head was made (classes, data, counts), kept in the file's metadata.
    """

    weight: torch.Tensor
    bias: float
    backbone: str = "efficientnet_lite0"
    size: int = 320
    tap_weights: tuple[float, ...] = (1.0, 1.0, 2.0)
    info: dict = field(default_factory=dict)

    def __call__(self, descriptors: torch.Tensor) -> torch.Tensor:
        """``(C, g, g)`` descriptors -> ``float32 (g, g)`` probability that each cell is a thing."""
        if descriptors.shape[0] != self.weight.shape[0]:
            raise ValueError(f"the objectness head reads {self.weight.shape[0]}-channel descriptors, "
                             f"got {descriptors.shape[0]}")
        logits = torch.einsum("chw,c->hw", descriptors.float(), self.weight.to(descriptors.device)) + self.bias
        return torch.sigmoid(logits).cpu()

    def save(self, path: str | Path) -> None:
        """Write the head as safetensors (atomically: ``hhn.checkpoints.atomic_write``)."""
        from safetensors.torch import save_file

        from hhn.checkpoints import atomic_write

        meta = {"backbone": self.backbone, "size": str(self.size), "tap_weights": json.dumps(list(self.tap_weights)),
                "info": json.dumps(self.info)}
        tensors = {"weight": self.weight.float().contiguous(), "bias": torch.tensor([self.bias])}
        atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    @classmethod
    def load(cls, path: str | Path = DEFAULT_HEAD) -> ObjectnessHead:
        """Read a head written by :meth:`save`.

        Raises:
            WeightsNotFoundError: no such file (the message names it and how to make one).
        """
        from safetensors import safe_open

        from hhn.errors import WeightsNotFoundError

        path = Path(path)
        if not path.is_file():
            raise WeightsNotFoundError(f"objectness head not found: {path} (refit it with "
                                    "`python -m hhn.priors.objectness --out <file>`)")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            weight, bias = f.get_tensor("weight"), float(f.get_tensor("bias")[0])
        return cls(weight, bias, meta.get("backbone", "efficientnet_lite0"), int(meta.get("size", 320)),
                   tuple(json.loads(meta.get("tap_weights", "[1, 1, 2]"))), json.loads(meta.get("info", "{}")))


def training_cells(descriptors: torch.Tensor, thing: np.ndarray,
                   stuff: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's examples: ``(C, g, g)`` descriptors and ``bool (H, W)`` thing / stuff pixel masks ->
    cells ``(N, C)`` that are at least :data:`PURE_CELL` one kind, and their targets ``(N,)`` (1 = thing)."""
    grid = (int(descriptors.shape[-2]), int(descriptors.shape[-1]))

    def share(mask: np.ndarray) -> torch.Tensor:
        m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
        return F.adaptive_avg_pool2d(m, grid)[0, 0]

    th, st = share(thing), share(stuff)
    keep = (th >= PURE_CELL) | (st >= PURE_CELL)
    return descriptors[:, keep].T.float(), (th[keep] >= PURE_CELL).float()


def fit_head(cells: torch.Tensor, targets: torch.Tensor, l2: float = 1e-3) -> tuple[torch.Tensor, float]:
    """Class-balanced L2-regularised logistic regression (L-BFGS): ``(N, C)`` cells, ``(N,)`` 0/1 targets ->
    ``(weight (C,), bias)``."""
    if targets.min() == targets.max():
        raise ValueError("objectness needs both thing and stuff cells to learn from")
    w = torch.zeros(cells.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")
    pos_weight = (1 - targets.mean()) / targets.mean()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(cells @ w + b, targets, pos_weight=pos_weight) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().clone(), float(b.detach())


def fit_objectness(examples: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
                   features: Callable[[np.ndarray, Sequence[float]], torch.Tensor], *,
                   backbone: str, size: int, tap_weights: Sequence[float] = (1.0, 1.0, 2.0),
                   info: dict | None = None) -> ObjectnessHead:
    """Fit a head from ``(pixels uint8 (H, W, 3), thing bool (H, W), stuff bool (H, W))`` examples, whose
    descriptors are ``features(pixels, tap_weights)`` (a ``DenseFeatures(backbone, size)``)."""
    xs, ys, images = [], [], 0
    for pixels, thing, stuff in examples:
        x, y = training_cells(features(pixels, tuple(tap_weights)), thing, stuff)
        xs.append(x)
        ys.append(y)
        images += 1
    cells, targets = torch.cat(xs), torch.cat(ys)
    weight, bias = fit_head(cells, targets)
    info = {**(info or {}), "images": images, "cells": len(cells), "thing_share": round(float(targets.mean()), 3)}
    return ObjectnessHead(weight, bias, backbone, int(size), tuple(float(t) for t in tap_weights), info)


def msrc_examples(data, things: Sequence[str], stuff: Sequence[str], exclude: Sequence[str],
                  limit: int, seed: int) -> Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Examples from a segmentation dataset (``hhn.data.open_dataset``): up to ``limit`` images (shuffled by
    ``seed``) that show no class of ``exclude``, their ``things`` pixels and their ``stuff`` pixels."""
    names = [n for n in data.names if not (data.tags(n) & set(exclude))]
    np.random.default_rng(seed).shuffle(names)
    for name in names[:limit]:
        shape = data.load_label(name).shape
        thing, other = np.zeros(shape, bool), np.zeros(shape, bool)
        for c in data.tags(name):
            if c in things or c in stuff:
                (thing if c in things else other)[data.binary_mask(name, c) == 1] = True
        yield data.load_image(name), thing, other


def main(argv: Sequence[str] | None = None) -> int:
    """Refit the objectness head: ``python -m hhn.priors.objectness --data <msrc_v2> --out <file>``."""
    import argparse

    from hhn.data import open_dataset
    from hhn.priors.features import DenseFeatures

    p = argparse.ArgumentParser(prog="python -m hhn.priors.objectness", description=main.__doc__)
    p.add_argument("--data", required=True, help="a dataset hhn.data opens (e.g. ../shared/data/msrc_v2)")
    p.add_argument("--out", default=str(DEFAULT_HEAD))
    p.add_argument("--things", default=",".join(MSRC_THINGS))
    p.add_argument("--stuff", default=",".join(MSRC_STUFF))
    p.add_argument("--exclude", default=",".join(msrc_folds()["folds"][0]),
                   help="classes whose images are left out (the held-out classes of the model it serves; "
                        "default: MSRC fold 0's)")
    p.add_argument("--images", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=320)
    args = p.parse_args(argv)
    split = {k: [c for c in getattr(args, k).split(",") if c] for k in ("things", "stuff", "exclude")}
    data = open_dataset(Path(args.data))
    features = DenseFeatures(size=args.size, device="cpu", cache_dir=None)
    examples = msrc_examples(data, split["things"], split["stuff"], split["exclude"], args.images, args.seed)
    head = fit_objectness(examples, features, backbone=features.backbone, size=args.size,
                          info={**split, "data": Path(args.data).name, "seed": args.seed})
    head.save(args.out)
    print(f"wrote {args.out}: {head.info['images']} images, {head.info['cells']} cells "
          f"({head.info['thing_share']:.0%} things)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
