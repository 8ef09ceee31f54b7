"""Image classification task: CIFAR ResNet on MNIST or CIFAR-10, cross-entropy, BA by per-copy augmentation.

Data flow of one step (M = ``ba.repeats``, B = ``data.batch_size``), default path (``data.augment_on_device``)::

    TokenBudgetBatchSampler (all lengths 1: a seeded shuffled partition into batches of B distinct images)
      -> DataLoader + collate_images (CPU)     image uint8 (B, C, H, W), label (B,), sample_id (B,)
      -> to device once
      -> repeat_batch(layout)  (device)        (M·B, C, H, W): M identical copies of every image
      -> Augment               (device)        every row its own crop / flip / cutout, float, normalized
      -> mixup (optional)                      soft_target (M·B, K)
      -> ba.sample_chunks row chunks           loss summed per chunk, normalised by the M·B rows

With ``ba.layout: tiled`` (what the image recipes use) copy c is the slice ``[c·B, (c+1)·B)``, so with ghost batch
norm of at most B rows each ghost batch holds distinct images and the copies of an image spread over ghost batches
(see :mod:`seqba.models.ghost_bn`)::

    rows:   a b c d | a b c d | a b c d      M = 3, B = 4, ghost_batch_size = 4
            copy 0    copy 1    copy 2       (each row augmented independently)

The paper's original way is also supported (``ba.expand_on_device: false`` with ``data.augment_on_device:
false``): :class:`~seqba.repeat.RepeatBatchSampler` repeats the indices and the dataset augments every request,
so the loader already yields M·B augmented rows (M times the loader work). ``ba.expand_on_device: false`` with
``augment_on_device: true`` loads M·B uint8 rows and augments them on the device. Repeating on the device with
loader-side augmentation would give M identical copies, so it is refused for M > 1.

Micro-batches: ``ba.sample_chunks: k`` cuts the M·B rows into k consecutive chunks. Gradients are summed over
chunks, but BatchNorm statistics are computed per forward, so the result equals the whole-batch step only when
BN already works on pieces that the cut does not split: with ``model.ghost_batch_size`` g, chunks whose size is a
multiple of g give the same normalisation (running statistics are then updated k times per step instead of once);
with plain BN (g = null) chunking changes the batch statistics. A warning is logged when chunks and ghost batches
do not align.

MNIST: the shared data holds only the 10,000 official test digits; the task uses the deterministic stratified split
of :func:`seqba.data.images.load_mnist` (8,000 train / 2,000 test, seed 0) and validates on its test part. CIFAR-10:
validates on the official test batch (as He et al. 2016 and the BA paper report). Since validation is the test
split, ``checkpoint_best.pt`` is selected on test data: report ``checkpoint_last.pt`` (the paper reports the final
model).

Run on CPU::

    accelerate launch --num_processes 1 -m seqba.train recipes/resnet_mnist_m4.yaml
    python -m seqba.eval --checkpoint runs/resnet_mnist_m4/checkpoint_last.pt --tta 10

Shape notation: N = rows, B = distinct images, M = repeats, C = channels, H = height, W = width, K = classes.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.data import Dataset

from seqba.errors import ConfigError, FieldError
from seqba.data.images import ImageTensorDataset, collate_images, load_cifar10, load_cifar10_hf, load_mnist
from seqba.data.paths import data_root
from seqba.data.transforms import CIFAR10_MEAN, CIFAR10_STD, MNIST_MEAN, MNIST_STD, Augment, mixup
from seqba.flops import per_example_training_flops
from seqba.models.resnet import CifarResNet, ResNetConfig, param_groups
from seqba.repeat import repeat_batch
from seqba.samplers import TokenBudgetBatchSampler
from seqba.gradstats import per_sample_grads
from seqba.layout import CopyLayout
from seqba.consistency import ConsistencyTerm
from seqba.tasks.base import GradAdapter, Task
from seqba.tasks.spec import EvalOptions, Metric, SignificanceTest, TaskSpec, option

logger = logging.getLogger(__name__)

NUM_CLASSES = 10
MNIST_TEST_FRACTION = 0.2  # 8,000 train / 2,000 test of the 10,000 shared digits
MNIST_SPLIT_SEED = 0
#: dataset -> (channels, mean, std, default folder under seqba.data.paths.data_root())
DATASETS = {
    "mnist": (1, MNIST_MEAN, MNIST_STD, "mnist"),
    "cifar10": (3, CIFAR10_MEAN, CIFAR10_STD, "cifar-10-batches-py"),
}
#: dataset -> image side in pixels (H = W)
IMAGE_SIZES = {"mnist": 28, "cifar10": 32}


@dataclass
class ImageDataConfig:
    """Images, batching and augmentation.

    Attributes:
        dataset: ``mnist`` or ``cifar10``.
        source: ``local`` (IDX files / CIFAR python batches in ``root``) or ``hf`` (CIFAR-10 through
            ``datasets.load_dataset(root or "cifar10")``).
        root: data folder; ``None``: ``seqba.data.paths.data_root()`` / ``mnist`` or ``cifar-10-batches-py``.
        batch_size: B, distinct images per batch before BA repetition.
        crop_padding: random-crop padding in pixels (0: no crop).
        flip: random horizontal flip (off for digits).
        cutout_size: cutout square side in pixels (0: off; 16 in the BA paper's CIFAR-10 run).
        mixup_alpha: mixup Beta(alpha, alpha) after augmentation (0: off).
        augment_on_device: augment the M·B rows on the device in one batched call (``True``) or each sample in the
            DataLoader (``False``, the paper's original way; needs ``ba.expand_on_device: false`` when M > 1).
        eval_batch_size: images per evaluation forward (0: the training step's M·B rows).
    """

    dataset: Literal["cifar10", "mnist"] = "cifar10"
    source: Literal["local", "hf"] = "local"
    root: str | None = None
    batch_size: int = 64
    crop_padding: int = 4
    flip: bool = True
    cutout_size: int = 0
    mixup_alpha: float = 0.0
    augment_on_device: bool = True
    eval_batch_size: int = 0

    def __post_init__(self) -> None:
        if self.source == "hf" and self.dataset != "cifar10":
            raise FieldError("source", f"'hf' is only wired for cifar10, got dataset {self.dataset!r}")
        if self.batch_size < 1:
            raise FieldError("batch_size", f"must be >= 1, got {self.batch_size}")
        for name in ("crop_padding", "cutout_size", "mixup_alpha", "eval_batch_size"):
            if getattr(self, name) < 0:
                raise FieldError(name, f"must be >= 0, got {getattr(self, name)}")


@dataclass
class ImageCriterionConfig:
    """Cross-entropy summed over the M·B rows (soft targets with mixup).

    Attributes:
        label_smoothing: epsilon of label smoothing (0: plain cross-entropy).
    """

    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise FieldError("label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")


# -- building blocks shared by training, validation and `python -m seqba.eval` -----------------------------------


def resolve_root(data: ImageDataConfig) -> Path:
    """The folder of ``data.dataset``: ``data.root`` or the shared data folder's default subfolder.

    Raises:
        FileNotFoundError: neither ``data.root`` nor a shared data folder (``$SEQBA_DATA``, ``../shared/data``).
    """
    if data.root is not None:
        return Path(data.root)
    shared = data_root()
    if shared is None:
        raise FileNotFoundError(f"no data.root for {data.dataset} and no shared data folder; set data.root=... "
                                "or SEQBA_DATA")
    return shared / DATASETS[data.dataset][3]


def load_split(data: ImageDataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 (N, C, H, W), int64 (N,)) of ``split`` (``train`` or ``test``) of the recipe's dataset."""
    if split not in ("train", "test"):
        raise ValueError(f"image split must be 'train' or 'test', got {split!r}")
    if data.dataset == "mnist":
        return load_mnist(resolve_root(data), split, test_fraction=MNIST_TEST_FRACTION, seed=MNIST_SPLIT_SEED)
    if data.source == "hf":
        return load_cifar10_hf(split, path=data.root or "cifar10")
    return load_cifar10(resolve_root(data), split)


def _split_source(data: ImageDataConfig) -> str:
    """Where ``data``'s images come from, for messages: the folder, or the Hugging Face dataset."""
    return f"datasets.load_dataset({data.root or 'cifar10'!r})" if data.source == "hf" else str(resolve_root(data))


def build_model(cfg: Any) -> CifarResNet:
    """The recipe's ResNet for its dataset's channel count and 10 classes."""
    return CifarResNet(cfg.model, NUM_CLASSES, DATASETS[cfg.data.dataset][0])


def build_augment(data: ImageDataConfig, cutout: bool = True) -> Augment:
    """The recipe's training augmentation (``cutout=False``: crop/flip only, for test-time augmentation)."""
    _, mean, std, _ = DATASETS[data.dataset]
    return Augment(mean, std, data.crop_padding, data.flip, data.cutout_size if cutout else 0)


def eval_batch_size(cfg: Any) -> int:
    """``data.eval_batch_size`` images per evaluation forward; 0 means the training step's M·B rows."""
    return cfg.data.eval_batch_size or cfg.data.batch_size * cfg.ba.repeats


class AugmentedImages(Dataset):
    """Dataset-side augmentation: every ``__getitem__`` draws its own crop/flip/cutout from the torch RNG.

    With :class:`RepeatBatchSampler` the M requests of one index therefore give M different views (the paper's
    original implementation). Items are those of :class:`ImageTensorDataset` with ``image`` float (C, H, W),
    normalized.
    """

    def __init__(self, base: ImageTensorDataset, augment: Augment) -> None:
        self.base = base
        self.augment = augment

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        item = self.base[idx]
        item["image"] = self.augment(item["image"][None])[0]  # (1, C, H, W) uint8 -> (C, H, W) float
        return item


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, augment: Augment, batch_size: int, device: torch.device,
            tta: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Class probabilities (N, K) float32 on ``device`` of uint8 ``images`` (N, C, H, W), model in its current mode.

    ``tta = 0``: one normalized, unaugmented view per image. ``tta = n > 0``: the softmax averaged over n views per
    image, each with its own random crop/flip from ``augment`` (drawn with ``generator``); the n views are built
    with ``repeat_batch(layout="tiled")``, the same expansion as BA training.
    """
    views = max(tta, 1)
    step = max(1, batch_size // views)
    out = []
    for start in range(0, len(images), step):
        x = images[start:start + step].to(device)  # (n, C, H, W) uint8
        if tta > 0:
            x = augment(repeat_batch(x, tta, "tiled"), train=True, generator=generator)  # (tta·n, C, H, W)
        else:
            x = augment(x, train=False)
        probs = F.softmax(model(x).float(), dim=-1)  # (views·n, K)
        out.append(probs.view(views, -1, probs.shape[-1]).mean(0))  # copy-major rows -> (n, K)
    return torch.cat(out) if out else torch.zeros(0, NUM_CLASSES, device=device)


# -- the task ---------------------------------------------------------------------------------------------------


class ImageClassificationTask(Task):
    """CIFAR ResNet with BA (Hoffer et al. 2020, Sec. 4.1: ResNet-44 on CIFAR-10, cutout, M=40)."""

    best_metric = ("accuracy", False)
    # Every batch has the same shape (the epoch's last, smaller one adds one graph). Symbolic shapes buy nothing
    # here and inductor (torch 2.13) fails on ghost batch norm's shape arithmetic under dynamic=True.
    compile_dynamic = False

    def __init__(self, cfg, accelerator) -> None:
        super().__init__(cfg, accelerator)
        data, ba = cfg.data, cfg.ba
        images, labels = load_split(data, "train")
        self.train_data = ImageTensorDataset(images, labels)
        self.valid_images, self.valid_labels = load_split(data, "test")
        for split, held in (("train", images), ("test (validation)", self.valid_images)):  # now, not mid-run
            if len(held) == 0:
                raise ConfigError(f"the {split} split of {data.dataset} ({_split_source(data)}) holds no images")
        self.model: CifarResNet | None = None
        self.image_flops: float | None = None  # forward + backward FLOPs of one training image, measured once
        self.augment_images = build_augment(data)  # (R, C, H, W) uint8 -> float, one random view per row
        self.consistency = ConsistencyTerm.from_config(ba)  # None without ba.consistency
        self.sampler = TokenBudgetBatchSampler(
            np.ones(len(self.train_data), dtype=np.int64), None, max_sentences=data.batch_size, shuffle=True,
            seed=cfg.seed, num_replicas=accelerator.num_processes, rank=accelerator.process_index,
            group_size=ba.group_size)
        rows = data.batch_size * ba.repeats
        ghost = cfg.model.ghost_batch_size
        if ba.sample_chunks > 1 and (rows % ba.sample_chunks or (ghost and (rows // ba.sample_chunks) % ghost)):
            logger.warning("ba.sample_chunks=%d cuts the %d rows into chunks that are not multiples of "
                           "ghost_batch_size=%s: BN statistics differ from the whole-batch step", ba.sample_chunks,
                           rows, ghost)

    def build_model(self) -> CifarResNet:
        self.model = build_model(self.cfg)  # the eager module, for the FLOP count of step_logs
        return self.model

    def param_groups(self, model: nn.Module) -> list[dict]:
        """Weight decay on conv/linear weights only, not on BN parameters or biases."""
        return param_groups(model, self.cfg.optim.weight_decay)

    # -- data ---------------------------------------------------------------------------------------------
    def num_batches(self, epoch: int) -> int:
        return len(self.sampler)

    def epoch_iterator(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """This rank's batches: ``image`` uint8 (R, C, H, W) (float, augmented, when the loader augments),
        ``label`` int64 (R,), ``sample_id`` int64 (R,) on the device; R = B, or M·B with
        ``ba.expand_on_device: false``."""
        dataset = self.train_data if self.cfg.data.augment_on_device else AugmentedImages(self.train_data,
                                                                                           self.augment_images)
        return self.iterate_loader(dataset, self.sampler, collate_images, epoch, start)

    def augment(self, batch: dict[str, torch.Tensor], layout: CopyLayout) -> dict[str, torch.Tensor]:
        """M·B rows -> M·B augmented rows: ``image`` float (N, C, H, W), ``label`` (N,), ``sample_id`` (N,), and
        ``soft_target`` float (N, K) with mixup (rows repeated by the loader are augmented by the dataset)."""
        image = self.augment_images(batch["image"]) if self.cfg.data.augment_on_device else batch["image"]
        out = {"image": image, "label": batch["label"], "sample_id": batch["sample_id"]}
        if self.cfg.data.mixup_alpha > 0:
            out["image"], out["soft_target"] = mixup(image, batch["label"], self.cfg.data.mixup_alpha, NUM_CLASSES)
        return out

    def chunk_rows(self, batch: dict[str, torch.Tensor], chunks: int, layout: CopyLayout) -> list[torch.Tensor]:
        """Consecutive row chunks, which keep ghost batches whole (see the module docstring); with
        ``ba.consistency``, chunks on image boundaries instead (every copy of an image in its chunk)."""
        if self.consistency is not None:
            return super().chunk_rows(batch, chunks, layout)
        rows = torch.arange(batch["label"].shape[0], device=batch["label"].device)
        return [part for part in rows.tensor_split(chunks) if len(part)]

    def sample_size(self, batch: dict[str, torch.Tensor]) -> float:
        return float(batch["label"].shape[0])

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy summed over the rows; ``correct_sum`` counts top-1 hits against the (unmixed) labels."""
        logits = model(batch["image"]).float()  # (N, K)
        eps, ba = self.cfg.criterion.label_smoothing, self.cfg.ba
        if "soft_target" in batch:
            target = batch["soft_target"] * (1.0 - eps) + eps / NUM_CLASSES
            loss = -(target * F.log_softmax(logits, dim=-1)).sum()
        else:
            loss = F.cross_entropy(logits, batch["label"], reduction="sum", label_smoothing=eps)
        correct = (logits.argmax(-1) == batch["label"]).sum()
        logs = {"correct_sum": correct}
        if self.consistency is not None:  # rows in the batch's layout; every copy of an image in this chunk
            loss = self.consistency.add(loss, logs, F.log_softmax(logits, dim=-1))
        logs["loss_sum"] = loss.detach()
        return loss, logs

    def row_losses(self, model: nn.Module, batch: dict[str, torch.Tensor], hidden: Any = None
                   ) -> tuple[Tensor, Tensor]:
        """Per image: cross-entropy with the recipe's label smoothing (soft targets with mixup); copies in
        ``ba.layout``."""
        logits = model(batch["image"]).float()  # (N, K)
        eps, ba = self.cfg.criterion.label_smoothing, self.cfg.ba
        if "soft_target" in batch:
            target = batch["soft_target"] * (1.0 - eps) + eps / NUM_CLASSES
            losses = -(target * F.log_softmax(logits, dim=-1)).sum(-1)
        else:
            losses = F.cross_entropy(logits, batch["label"], reduction="none", label_smoothing=eps)
        return losses, CopyLayout(ba.repeats, ba.layout).copy_of_rows(len(losses), losses.device)

    def step_logs(self, batch: dict[str, torch.Tensor], expanded: dict[str, torch.Tensor]) -> dict[str, float]:
        """The step's model FLOPs: the M·B rows computed times the FLOPs of training on one image, measured at the
        first step on one row of the training shape (:func:`seqba.flops.per_example_training_flops`: a forward in
        eval mode under no_grad, times 3; no random numbers drawn, BN running statistics untouched, the training
        mode restored), logged as ``model_flops_per_step`` and ``model_flops_per_s``."""
        image = expanded["image"]  # (N, C, H, W) float: the rows the model is trained on
        if self.model is None:  # no model built by this task (the trainer always builds one): nothing to count
            return {}
        if self.image_flops is None:
            self.image_flops = per_example_training_flops(self.model, image[:1])
        return {"model_flops_count": self.image_flops * image.shape[0]}

    # -- evaluation ---------------------------------------------------------------------------------------
    def validate(self, model: nn.Module) -> dict[str, float]:
        """Top-1 accuracy and cross-entropy on the held-out split, unaugmented (sharded over ranks, then summed)."""
        acc = self.accelerator
        shard = np.array_split(np.arange(len(self.valid_labels)), acc.num_processes)[acc.process_index]
        lo, hi = (int(shard[0]), int(shard[-1]) + 1) if len(shard) else (0, 0)
        probs = predict(model, self.valid_images[lo:hi], self.augment_images, eval_batch_size(self.cfg),
                        self.device)
        labels = self.valid_labels[lo:hi].to(self.device)
        nll = -torch.log(probs.gather(1, labels[:, None]).clamp_min(1e-12)).sum()
        totals = torch.stack([nll.double(), (probs.argmax(-1) == labels).sum().double(),
                              torch.tensor(float(hi - lo), dtype=torch.float64, device=self.device)])
        totals = acc.reduce(totals, "sum")
        loss, correct, count = totals.tolist()
        return {"accuracy": correct / max(count, 1), "loss": loss / max(count, 1)}


@dataclass
class ImageEvalOptions(EvalOptions):
    """``python -m seqba.eval`` options of an image checkpoint (``split``: ``train`` or ``test``)."""

    tta: int = option(0, "average over N augmented copies per image (0: off)", low=0)
    output: str | None = option(None, "write the predicted class of every image here, one per line in split order",
                                file="write")


def evaluate(cfg: Any, model_state: dict, args: ImageEvalOptions) -> dict[str, float]:
    """Top-1 accuracy (and cross-entropy) on ``args.split``; with ``args.tta = n > 0`` also the accuracy of the
    softmax averaged over n random crop/flip views per image (no cutout), drawn with a generator seeded by
    ``cfg.seed`` (so repeated evaluations agree). ``args.output``: the predicted class of every image (without
    test-time augmentation), one per line, in split order (what :func:`mcnemar_exact` compares).

    Raises:
        ValueError: an unknown split.
    """
    device = torch.device(args.device)
    images, labels = load_split(cfg.data, args.split)
    model = build_model(cfg)
    model.load_state_dict(model_state)
    model.to(device).eval()
    batch_size = eval_batch_size(cfg)
    labels = labels.to(device)
    probs = predict(model, images, build_augment(cfg.data), batch_size, device)
    predicted = probs.argmax(-1)
    if args.output:
        Path(args.output).write_text("".join(f"{c}\n" for c in predicted.tolist()))
    metrics: dict[str, Any] = {
        "split": args.split,
        "images": len(labels),
        "accuracy": int((predicted == labels).sum()) / len(labels),
        "loss": float(-torch.log(probs.gather(1, labels[:, None]).clamp_min(1e-12)).double().mean()),
    }
    tta = args.tta
    if tta > 0:
        generator = torch.Generator().manual_seed(cfg.seed)
        probs = predict(model, images, build_augment(cfg.data, cutout=False), batch_size, device, tta, generator)
        metrics.update(tta=tta, tta_accuracy=int((probs.argmax(-1) == labels).sum()) / len(labels))
    return metrics


def check_config(cfg, where) -> None:
    """Cross-field checks of an image recipe (run at ``seqba.config.load``)."""
    data, ba = cfg.data, cfg.ba
    if ba.fork_layer:
        raise ConfigError(f"{where(('ba', 'fork_layer'))}: {ba.fork_layer}: image copies are augmentations made at "
                          "the input, so every layer must see them; use 0")
    side = IMAGE_SIZES[data.dataset]
    if data.cutout_size > side:
        raise ConfigError(f"{where(('data', 'cutout_size'))}: {data.cutout_size} is larger than the {side}x{side} "
                          f"{data.dataset} images; use at most {side} (0: off)")
    if ba.expand_on_device and not data.augment_on_device and ba.repeats > 1:
        raise ConfigError(f"{where(('data', 'augment_on_device'))}: false augments in the DataLoader, so "
                          "ba.expand_on_device=true would repeat already augmented images: M identical copies. "
                          "Set ba.expand_on_device=false (RepeatBatchSampler) or data.augment_on_device=true")
    if ba.consistency != "none" and data.mixup_alpha > 0:
        raise ConfigError(f"{where(('ba', 'consistency'))}: mixup pairs every copy with a different partner, so "
                          "the copies' distributions are not meant to agree; set data.mixup_alpha: 0")


class ImageGradients(GradAdapter):
    """Per-sample gradients of an image x and its M augmented views T(x) (``seqba.analyze grad-correlation``).

    ``vmap(grad)`` over the views (the recipe's crop/flip/cutout); BatchNorm in eval mode (running statistics) so
    that samples do not interact through batch statistics. With ``--init`` the running statistics are first
    estimated on ``--bn-batches`` augmented training batches (:meth:`calibrate`), since a fresh model's (0, 1) would
    leave the activations unnormalised. Samples carry their class (same-class / different-class relations).
    """

    #: row 0 of copy_grads is the unaugmented image, rows 1..M its augmented copies
    clean_first = True

    def build(self) -> nn.Module:
        self.augment = build_augment(self.cfg.data)
        return build_model(self.cfg)

    def calibrate(self, batches: int, rng: np.random.Generator) -> None:
        """Running BN statistics of a fresh model: cumulative average over ``batches`` augmented training batches."""
        images, _ = load_split(self.cfg.data, "train")
        bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        self.model.train()
        with torch.no_grad():
            for _ in range(batches):
                idx = torch.from_numpy(rng.choice(len(images), size=self.cfg.data.batch_size, replace=False))
                self.model(self.augment(images[idx].to(self.device)))
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum

    def samples(self, split: str, n: int, rng: np.random.Generator) -> Iterator[tuple[int, dict]]:
        if split not in ("train", "valid", "test"):
            raise ValueError(f"--split must be train, valid or test (the held-out digits/images), got {split!r}")
        images, labels = load_split(self.cfg.data, "train" if split == "train" else "test")
        for i in rng.choice(len(labels), size=min(n, len(labels)), replace=False):
            yield int(labels[i]), {"image": images[int(i)].to(self.device), "label": labels[int(i)].to(self.device)}

    def copy_grads(self, s: dict, copies: int) -> dict[str, Tensor]:
        def loss_fn(params, image, label):  # one view (C, H, W), label ()
            return F.cross_entropy(functional_call(self.model, params, (image[None],)).float(), label[None],
                                   label_smoothing=self.cfg.criterion.label_smoothing)

        self.model.eval()  # BN on running statistics: the views do not interact
        image = s["image"][None]  # (1, C, H, W) uint8
        views = torch.cat([self.augment(image, train=False),  # x, then M views T(x) with their own crop/cutout
                           self.augment(image.expand(copies, *image.shape[1:]))])  # (1 + M, C, H, W)
        return per_sample_grads(loss_fn, self.params, views, s["label"].expand(copies + 1), method="vmap")


def mcnemar_exact(baseline: list[str], systems: dict[str, list[str]], references: list[str]) -> dict[str, float]:
    """Two-sided exact McNemar p-value of each system's accuracy against ``baseline`` on the same images.

    Only the discordant images count: ``b`` that the baseline classifies right and the system wrong, ``c`` the
    reverse; under the null hypothesis (equal accuracy) each is one of ``b + c`` fair coin flips, so
    ``p = min(1, 2 * P(Binomial(b + c, 1/2) <= min(b, c)))`` (McNemar 1947, exact form; the test Dietterich 1998
    recommends for two classifiers on one test set; equals ``scipy.stats.binomtest(b, b + c).pvalue``). 1.0 when
    no image is discordant.

    Args:
        baseline, systems: predicted classes, one string per image, in reference order.
        references: the true class of each image.

    Raises:
        ValueError: predictions and references of different lengths.
    """
    out = {}
    for name, predicted in [("<baseline>", baseline), *systems.items()]:
        if len(predicted) != len(references):
            raise ValueError(f"{name}: {len(predicted)} predictions for {len(references)} images")
    for name, predicted in systems.items():
        b = sum(x == r != y for x, y, r in zip(baseline, predicted, references))
        c = sum(y == r != x for x, y, r in zip(baseline, predicted, references))
        n = b + c
        tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))  # exact integers: no underflow at large n
        out[name] = min(1.0, 2 * tail / 2 ** n) if n else 1.0
    return out


def split_labels(cfg: Any, split: str) -> list[str]:
    """The true class of every image of ``split``, as strings in split order (the references of the test)."""
    return [str(c) for c in load_split(cfg.data, split)[1].tolist()]


#: Validation is the test split (module docstring), so studies report the last checkpoint, not the best-of.
SPEC = TaskSpec(ImageDataConfig, ResNetConfig, ImageCriterionConfig, ImageClassificationTask, evaluate=evaluate,
                eval_options=ImageEvalOptions, check=check_config, batch_key="data.batch_size", batch_unit="images",
                test_metrics=(Metric("accuracy", True, percent=True), Metric("tta_accuracy", True, percent=True)),
                curve_metric="accuracy", report_checkpoint="checkpoint_last.pt", outputs_option="output",
                significance=SignificanceTest(
                    "accuracy", "exact McNemar test (two-sided; images one arm classifies right and the other wrong)",
                    mcnemar_exact, split_labels),
                analysis=ImageGradients)
