"""A test-only task family, outside seqba: sequence classification of tiny generated sequences.

It exists to show (and test, in ``test_toy_task.py``) that a family lives in one module: a recipe names it by
module path (``task: tests.toy_task``, importable with the repository root on ``PYTHONPATH``) and it trains with
``seqba.train``, evaluates with ``seqba.eval`` (its own ``--max-examples`` option), runs in ``seqba.compare`` and
``seqba.analyze grad-correlation`` without any edit to seqba. ``docs/adding_a_task.md`` walks through it.

Data: ``num_train`` + ``num_test`` sequences of ``length`` tokens in ``[0, vocab)``, drawn from ``data.seed``; the
label is 1 when more than half the tokens are below ``vocab // 2``. Model: embedding, dropout (so the M copies of
a sequence differ), mean over positions, linear layer to 2 classes. Shapes: B sequences, M copies, N = M·B rows,
L = length, D = model.dim.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from seqba.errors import FieldError
from seqba.gradstats import per_sample_grads
from seqba.layout import CopyLayout
from seqba.samplers import FixedSizeBatchSampler
from seqba.tasks.base import GradAdapter, Task
from seqba.tasks.spec import EvalOptions, Metric, TaskSpec, option


@dataclass
class ToyDataConfig:
    """Generated sequences and batching.

    Attributes:
        num_train, num_test: sequences per split.
        length: L, tokens per sequence; ``vocab``: token ids are ``[0, vocab)``.
        batch_size: B, distinct sequences per batch (what ``seqba.compare`` scales).
        seed: the seed the sequences are drawn from (the same data whatever the run's seed).
    """

    num_train: int = 64
    num_test: int = 32
    length: int = 8
    vocab: int = 12
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_train", "num_test", "length", "batch_size"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.vocab < 2:
            raise FieldError("vocab", f"must be >= 2, got {self.vocab}")


@dataclass
class ToyModelConfig:
    """Attributes: dim: D, embedding width; dropout: on the embeddings (what makes BA copies differ)."""

    dim: int = 16
    dropout: float = 0.2


@dataclass
class ToyCriterionConfig:
    """Cross-entropy summed over the rows. Attributes: label_smoothing: epsilon (0: plain cross-entropy)."""

    label_smoothing: float = 0.0


def make_split(data: ToyDataConfig, split: str) -> tuple[Tensor, Tensor]:
    """(int64 (n, L) tokens, int64 (n,) labels) of ``split`` (``train`` or ``test``).

    Raises:
        ValueError: another split.
    """
    if split not in ("train", "test"):
        raise ValueError(f"the toy task has splits train and test, got {split!r}")
    g = torch.Generator().manual_seed(data.seed)
    tokens = torch.randint(data.vocab, (data.num_train + data.num_test, data.length), generator=g)
    labels = ((tokens < data.vocab // 2).sum(1) * 2 > data.length).long()
    part = slice(0, data.num_train) if split == "train" else slice(data.num_train, None)
    return tokens[part], labels[part]


class ToyModel(nn.Module):
    """Embedding -> dropout -> mean over positions -> linear: (N, L) int64 -> (N, 2) logits."""

    def __init__(self, vocab: int, cfg: ToyModelConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.dim, 2)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.out(self.dropout(self.embed(tokens)).mean(1))  # (N, L, D) -> (N, D) -> (N, 2)


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, tokens: Tensor, labels: Tensor) -> None:
        self.tokens, self.labels = tokens, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"tokens": self.tokens[i], "label": self.labels[i], "sample_id": torch.tensor(i)}


def collate(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """``tokens`` (B, L), ``label`` (B,), ``sample_id`` (B,)."""
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


class ToyTask(Task):
    """The training side: B sequences per batch, M copies by ``repeat_batch``, cross-entropy summed over rows."""

    best_metric = ("accuracy", False)

    def __init__(self, cfg: Any, accelerator: Any) -> None:
        super().__init__(cfg, accelerator)
        self.train_data = ToyDataset(*make_split(cfg.data, "train"))
        self.test_tokens, self.test_labels = make_split(cfg.data, "test")
        self.sampler = FixedSizeBatchSampler(len(self.train_data), cfg.data.batch_size, seed=cfg.seed,
                                             num_replicas=accelerator.num_processes, rank=accelerator.process_index,
                                             group_size=cfg.ba.group_size)

    def build_model(self) -> nn.Module:
        return ToyModel(self.cfg.data.vocab, self.cfg.model)

    def num_batches(self, epoch: int) -> int:
        return len(self.sampler)

    def epoch_iterator(self, epoch: int, start: int = 0) -> Iterator[dict[str, Tensor]]:
        return self.iterate_loader(self.train_data, self.sampler, collate, epoch, start)

    def sample_size(self, batch: dict[str, Tensor]) -> float:
        return float(batch["label"].shape[0])

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Any]]:
        losses, _ = self.row_losses(model, batch)
        loss = losses.sum()
        return loss, {"loss_sum": loss.detach()}

    def row_losses(self, model: nn.Module, batch: dict[str, Tensor], hidden: Any = None) -> tuple[Tensor, Tensor]:
        ba = self.cfg.ba
        losses = F.cross_entropy(model(batch["tokens"]).float(), batch["label"], reduction="none",
                                 label_smoothing=self.cfg.criterion.label_smoothing)  # (N,)
        return losses, CopyLayout(ba.repeats, ba.layout).copy_of_rows(len(losses), losses.device)

    def validate(self, model: nn.Module) -> dict[str, float]:
        return accuracy_and_loss(model, self.test_tokens.to(self.device), self.test_labels.to(self.device))


def accuracy_and_loss(model: nn.Module, tokens: Tensor, labels: Tensor) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` (in its current mode) on (n, L) ``tokens``."""
    logits = model(tokens).float()
    return {"accuracy": float((logits.argmax(-1) == labels).float().mean()),
            "loss": float(F.cross_entropy(logits, labels))}


@dataclass
class ToyEvalOptions(EvalOptions):
    """``python -m seqba.eval`` options of a toy checkpoint (``split``: train or test)."""

    max_examples: int = option(0, "evaluate the first N sequences of the split (0: all)", low=0)


@torch.no_grad()
def evaluate(cfg: Any, model_state: dict, options: ToyEvalOptions) -> dict[str, Any]:
    """Accuracy and loss on ``options.split`` (its first ``max_examples`` sequences when set)."""
    tokens, labels = make_split(cfg.data, options.split)
    if options.max_examples:
        tokens, labels = tokens[:options.max_examples], labels[:options.max_examples]
    model = ToyModel(cfg.data.vocab, cfg.model)
    model.load_state_dict(model_state)
    model.to(options.device).eval()
    return {"split": options.split, "sequences": len(labels),
            **accuracy_and_loss(model, tokens.to(options.device), labels.to(options.device))}


class ToyGradients(GradAdapter):
    """Per-copy gradients of one sequence: ``vmap(grad)`` over its M copies in training mode, each its own dropout
    mask (``randomness="different"``)."""

    def build(self) -> nn.Module:
        return ToyModel(self.cfg.data.vocab, self.cfg.model)

    def samples(self, split: str, n: int, rng: np.random.Generator) -> Iterator[tuple[None, dict]]:
        tokens, labels = make_split(self.cfg.data, "train" if split == "train" else "test")
        for i in rng.choice(len(labels), size=min(n, len(labels)), replace=False):
            yield None, {"tokens": tokens[int(i)].to(self.device), "label": labels[int(i)].to(self.device)}

    def copy_grads(self, sample: dict, copies: int) -> dict[str, Tensor]:
        def loss_fn(params, tokens, label):  # one sequence (L,), label ()
            return F.cross_entropy(functional_call(self.model, params, (tokens[None],)).float(), label[None])

        self.model.train()
        return per_sample_grads(loss_fn, self.params, sample["tokens"].expand(copies, -1),
                                sample["label"].expand(copies), method="vmap")


SPEC = TaskSpec(ToyDataConfig, ToyModelConfig, ToyCriterionConfig, ToyTask, evaluate=evaluate,
                eval_options=ToyEvalOptions, batch_key="data.batch_size", batch_unit="seqs",
                test_metrics=(Metric("accuracy", True, percent=True),), curve_metric="accuracy",
                analysis=ToyGradients)
