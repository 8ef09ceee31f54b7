"""Benchmark: image BA throughput (M=1 vs M=4) and where per-copy augmentation should run.

Two measurements, best of ``--repeat`` timings each, on random uint8 images of the chosen dataset's shape:

* ``train``: one training step of the recipe's model (forward, backward, SGD) on B distinct images expanded to M·B
  rows on the device (``repeat_batch`` tiled + ``Augment``), for each M in ``--repeats``: seconds per step, rows/s
  (``images_per_s``) and distinct images/s. Same model and B for every M, so M=4 costs ~4x per step.
* ``augment``: the cost of producing one augmented M·B batch on the device, per step:
  ``device``: B uint8 images moved once, then ``repeat_batch`` + one batched ``Augment`` call on M·B rows;
  ``loader_wN``: ``RepeatBatchSampler`` + a per-sample ``Augment`` in the dataset (the paper's original way),
  ``DataLoader`` with N workers, then the M·B float rows moved to the device (worker start-up excluded, reported
  as ``startup_s``).

Defaults mirror ``recipes/resnet_mnist_m4.yaml`` (ResNet-8, width 16, ghost batch 64, 28x28 digits, B=64). On a GPU:

    python benchmarks/bench_images.py --device cuda --dataset cifar10 --depth 44 --repeats 1 4 40

Writes ``--out`` (default ``benchmarks/results/images.json``) and prints the same JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from seqba.data.images import ImageTensorDataset, collate_images
from seqba.models.resnet import cifar_resnet, param_groups
from seqba.repeat import RepeatBatchSampler, repeat_batch
from seqba.samplers import TokenBudgetBatchSampler
from seqba.tasks.image_classification import DATASETS, AugmentedImages, ImageDataConfig, build_augment

AUGMENTATION = {"mnist": dict(crop_padding=2, flip=False, cutout_size=8),
                "cifar10": dict(crop_padding=4, flip=True, cutout_size=16)}
SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(repeat: int, steps: int, fn, device: torch.device) -> float:
    """Seconds per call of ``fn``: the best of ``repeat`` timings of ``steps`` calls, after one warm-up call."""
    fn()
    sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        sync(device)
        times.append((time.perf_counter() - start) / steps)
    return min(times)


def bench_train(args, data: ImageDataConfig, images: torch.Tensor, device: torch.device) -> dict:
    augment = build_augment(data)
    labels = torch.randint(0, 10, (args.batch_size,), device=device)
    x = images[: args.batch_size].to(device)
    out = {}
    for m in args.repeats:
        torch.manual_seed(0)
        model = cifar_resnet(10, images.shape[1], depth=args.depth, width=args.width,
                             ghost_batch_size=args.ghost_batch_size or None)
        model = model.to(device)
        opt = torch.optim.SGD(param_groups(model, 1e-4), lr=0.01, momentum=0.9)

        def step() -> None:
            rows = augment(repeat_batch(x, m, "tiled"))  # (M·B, C, H, W)
            loss = F.cross_entropy(model(rows), labels.repeat(m), reduction="sum") / len(rows)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        seconds = best_of(args.repeat, args.steps, step, device)
        out[f"M={m}"] = {"step_s": seconds, "images_per_s": m * args.batch_size / seconds,
                         "distinct_images_per_s": args.batch_size / seconds}
    return out


def bench_augment(args, data: ImageDataConfig, images: torch.Tensor, device: torch.device) -> dict:
    m, b = args.augment_repeats, args.batch_size
    augment = build_augment(data)
    host = images[:b]
    out = {}

    def on_device() -> None:
        augment(repeat_batch(host.to(device), m, "tiled"))

    seconds = best_of(args.repeat, args.steps, on_device, device)
    out["device"] = {"step_s": seconds, "images_per_s": m * b / seconds}

    dataset = AugmentedImages(ImageTensorDataset(images, torch.zeros(len(images), dtype=torch.int64)), augment)
    sampler = TokenBudgetBatchSampler(np.ones(len(images), dtype=np.int64), None, max_sentences=b, seed=0)
    needed = args.steps * args.repeat + 1
    if len(sampler) < needed:
        raise ValueError(f"--num-images {len(images)} gives {len(sampler)} batches, need {needed}")
    for workers in args.workers:
        loader = DataLoader(dataset, batch_sampler=RepeatBatchSampler(sampler, m, layout="tiled"),
                            collate_fn=collate_images, num_workers=workers, pin_memory=device.type == "cuda")
        start = time.perf_counter()
        batches = iter(loader)
        next(batches)["image"].to(device)  # worker start-up and the first batch
        sync(device)
        startup = time.perf_counter() - start
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            for _ in range(args.steps):
                next(batches)["image"].to(device, non_blocking=True)
            sync(device)
            times.append((time.perf_counter() - start) / args.steps)
        del batches
        out[f"loader_w{workers}"] = {"step_s": min(times), "images_per_s": m * b / min(times), "startup_s": startup}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="mnist")
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--ghost-batch-size", type=int, default=64, help="0: plain BatchNorm")
    parser.add_argument("--batch-size", type=int, default=64, help="B distinct images per step")
    parser.add_argument("--repeats", type=int, nargs="+", default=[1, 4], help="the M values of the train benchmark")
    parser.add_argument("--augment-repeats", type=int, default=4, help="M of the augmentation benchmark")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers to compare")
    parser.add_argument("--num-images", type=int, default=8000)
    parser.add_argument("--steps", type=int, default=10, help="steps per timing")
    parser.add_argument("--repeat", type=int, default=3, help="timings per measurement (best is kept)")
    parser.add_argument("--out", default="benchmarks/results/images.json")
    args = parser.parse_args()

    device = torch.device(args.device)
    data = ImageDataConfig(dataset=args.dataset, batch_size=args.batch_size, **AUGMENTATION[args.dataset])
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.num_images, *SHAPES[args.dataset]), dtype=torch.uint8, generator=generator)
    result = {
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(),
                    "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"},
        "train": bench_train(args, data, images, device),
        "augment": bench_augment(args, data, images, device),
    }
    text = json.dumps(result, indent=2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
