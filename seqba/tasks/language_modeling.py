"""Language modeling task: AWD-LSTM on PTB with Batch Augmentation (Hoffer et al. 2020, Table 3; Merity et al. 2018).

BA lives in the stream layout (see :mod:`seqba.data.lm`): the training text is cut into B streams and the M copies
are extra columns, copy-major, so one step reads T rows of N = B * M columns::

    column:   0 .. B-1   |  B .. 2B-1  | ... | (M-1)B .. MB-1      column c*B + b = copy c of stream b
    rows      copy 0     |  copy 1     | ... | copy M-1            every copy holds the same tokens
    [i, i+T)  s0 .. sB-1 |  s0 .. sB-1 | ... | s0 .. sB-1          x = rows [i, i+T), y = rows [i+1, i+1+T)
    hidden    h[:, 0:B]  |  h[:, B:2B] | ... |                     one (h, c) per column, carried across windows

The task reads B columns (the streams) and :class:`~seqba.ba.BatchAugmentation` repeats them copy-major along
dim 1 (``batch_dim = 1``, ``copy_layout = "tiled"``), as ``seqba.repeat.repeat_streams`` would have repeated the
whole corpus; the hidden state is carried for all N columns. ``ba.sample_chunks = k`` (k divides M) evaluates the
columns in k chunks of M/k whole copies, each with its slice of the hidden state.

The shared-mask subtlety: the copies of a stream differ only through dropout masks, and not all of AWD-LSTM's masks
are per column. Locked dropout (``dropouti``/``dropouth``/``dropout``) draws a (1, N, H) mask, so every copy gets its
own; weight drop (``wdrop``) and embedding dropout (``dropoute``) draw ONE mask per forward for the whole batch, so
by default (``model.per_copy_masks: false``, what the paper ran) the M copies share them. ``per_copy_masks: true``
gives each copy its own (M fused LSTM calls per layer, slower). With sample chunks the shared masks are drawn once
per chunk, so copies in different chunks also differ by them; gradients equal the whole batch's exactly only
without dropout (tested) -- with ``per_copy_masks: true`` the two are equal in distribution.

Optimization is the reference's NT-ASGD: plain SGD (lr 30, clip 0.25, lr scaled by seq_len / bptt each step) until
the validation loss has not improved on the best earlier one for ``criterion.nonmono`` evaluations; from then on
the running average of the iterates (``torch.optim.swa_utils.AveragedModel``, updated after each step) is what is
validated and saved. It equals the ``ax`` of ``torch.optim.ASGD(lr, lambd=0, t0=0)`` created at the switch, as
awd-lstm-lm does (whose lagged ``mu`` starts the mean at the second step after the switch).

Speed and results of the recipes are in README.md and benchmarks/results (``benchmarks/bench_lm.py``).

Run the small recipe, then evaluate::

    OMP_NUM_THREADS=1 accelerate launch --num_processes 1 -m seqba.train recipes/awd_lstm_ptb_small_m10.yaml
    python -m seqba.eval --checkpoint runs/awd_lstm_ptb_small_m10/checkpoint_best.pt --split test
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.optim.swa_utils import AveragedModel

from seqba.errors import ConfigError, FieldError
from seqba.data.lm import (SPLITS, BPTTIterator, Corpus, batchify, load_corpus, load_corpus_hf,
                           split_path)
from seqba.data.paths import data_root
from seqba.distributed import rank_group
from seqba.gradstats import per_sample_grads
from seqba.layout import CopyLayout
from seqba.consistency import ConsistencyTerm
from seqba.losses import activation_regularization, temporal_activation_regularization
from seqba.metrics import perplexity
from seqba.models.awd_lstm import AWDLSTM, AWDLSTMConfig, Hidden, detach_hidden
from seqba.tasks.base import GradAdapter, Task
from seqba.tasks.spec import EvalOptions, Metric, TaskSpec

logger = logging.getLogger("seqba.tasks.language_modeling")


@dataclass
class LMDataConfig:
    """Corpus and BPTT batching (awd-lstm-lm ``main.py`` flags in brackets).

    Attributes:
        root: folder with ``ptb.{train,valid,test}.txt``; ``None``: ``seqba.data.paths.data_root() / "ptb"``.
        source: ``local`` (files under ``root``) or ``hf`` (``datasets.load_dataset("ptb_text_only")``).
        batch_size: B, distinct text streams per rank group [--batch_size]; the step has B * M columns.
        bptt: window length [--bptt]; training draws lengths around it when ``variable_bptt``.
        variable_bptt: the reference's random window lengths (and lr scaled by seq_len / bptt).
        eval_batch_size: streams for validation (the reference's 10).
        test_batch_size: streams for ``seqba.eval --split test`` (the reference's 1).
        max_train_tokens: train on the first N tokens of the train split only (``None``: all of it); the
            dictionary still comes from the whole train split, so valid and test are scored as usual. For studies
            that need many epochs on a CPU (e.g. 100000 tokens, about 11% of PTB).
    """

    root: str | None = None
    source: Literal["local", "hf"] = "local"
    batch_size: int = 20
    bptt: int = 70
    variable_bptt: bool = True
    eval_batch_size: int = 10
    test_batch_size: int = 1
    max_train_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("batch_size", "bptt", "eval_batch_size", "test_batch_size"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be >= 1, got {getattr(self, name)!r}")
        if self.max_train_tokens is not None and self.max_train_tokens < 1:
            raise FieldError("max_train_tokens", f"must be >= 1 or null, got {self.max_train_tokens!r}")


@dataclass
class LMCriterionConfig:
    """Training objective and regime.

    Attributes:
        alpha: activation regularization (AR) weight on the last layer's dropped output [--alpha].
        beta: temporal activation regularization (TAR) weight on its raw output [--beta].
        nonmono: switch to averaged SGD when validation has not improved on the best earlier evaluation for this
            many evaluations [--nonmono]; 0 never averages.
    """

    alpha: float = 2.0
    beta: float = 1.0
    nonmono: int = 5

    def __post_init__(self) -> None:
        if self.nonmono < 0:
            raise FieldError("nonmono", f"must be >= 0, got {self.nonmono!r}")
        for name in ("alpha", "beta"):
            if getattr(self, name) < 0:
                raise FieldError(name, f"must be >= 0, got {getattr(self, name)!r}")


class LMBatch(NamedTuple):
    """A BPTT window over the column slice ``[lo, hi)`` of the N training columns.

    ``x``, ``y``: (T, hi - lo) int64 on the device (y = next token of x in the same column); ``seq_len`` = T;
    ``lr_scale`` = drawn length / bptt; ``copies``: BA copies among the columns (whole copies only).
    """

    x: Tensor
    y: Tensor
    seq_len: int
    lr_scale: float
    lo: int
    hi: int
    copies: int


@functools.lru_cache(maxsize=4)
def _cached_corpus(source: str, root: str | None) -> Corpus:
    return load_corpus_hf() if source == "hf" else load_corpus(root)


def load_lm_corpus(data: LMDataConfig) -> Corpus:
    """The recipe's corpus (read once per process).

    Raises:
        FileNotFoundError: no ``root`` given and no shared data folder, or a split file missing.
    """
    if data.source == "hf":
        return _cached_corpus("hf", None)
    return _cached_corpus("local", str(corpus_root(data)))


def corpus_root(data: LMDataConfig) -> Path:
    """The folder of the local corpus: ``data.root``, else ``data_root() / "ptb"`` (resolved).

    Raises:
        FileNotFoundError: no ``root`` given and no shared data folder.
    """
    if data.root is not None:
        return Path(data.root).resolve()
    shared = data_root()
    if shared is None:
        raise FileNotFoundError("data.root is not set and no shared data folder was found "
                                "(set SEQBA_DATA or data.root=/path/to/ptb)")
    return (shared / "ptb").resolve()


def check_split_size(corpus: Corpus, data: LMDataConfig, split: str, batch_size: int) -> None:
    """Refuse a split too short to evaluate in ``batch_size`` streams (2 tokens per stream: an input and its next
    word), e.g. an empty ``ptb.valid.txt``, at setup rather than at the first validation.

    Raises:
        ConfigError: naming the split, its file and the batch size.
    """
    tokens = getattr(corpus, split).numel()
    if tokens >= 2 * batch_size:
        return
    where = (f"{split} of datasets.load_dataset('ptb_text_only')" if data.source == "hf"
             else str(split_path(corpus_root(data), split)))
    option = "data.test_batch_size" if split == "test" else "data.eval_batch_size"
    raise ConfigError(f"the {split} split ({where}) has {tokens} tokens (incl. one <eos> per line): too few to "
                      f"evaluate in {option}={batch_size} streams of 2 tokens; it needs at least {2 * batch_size}")


def build_lm(model_cfg: AWDLSTMConfig, vocab_size: int) -> AWDLSTM:
    """The recipe's AWD-LSTM for a vocabulary of ``vocab_size`` words."""
    return AWDLSTM(vocab_size, model_cfg)


@torch.no_grad()
def corpus_nll(model: AWDLSTM, data: Tensor, batch_size: int, bptt: int) -> tuple[float, int]:
    """Summed next-word NLL (nats) of ``model`` over the (L,) token stream ``data``, and the words scored.

    ``data`` is cut into ``batch_size`` streams, read in fixed ``bptt`` windows with the hidden state carried, as
    ``evaluate`` of awd-lstm-lm (which divides by the rows instead of the (rows - 1) * batch_size words scored).
    The model must be in eval mode; runs on the model's device.
    """
    device = model.encoder.weight.device
    source = batchify(data, batch_size).to(device)  # (L // bsz, bsz)
    hidden = model.init_hidden(batch_size)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for batch in BPTTIterator(source, bptt, variable=False):
        logits, hidden, _, _ = model(batch.x, hidden)  # (T, bsz, V)
        total += F.cross_entropy(logits.flatten(0, 1).float(), batch.y.flatten(), reduction="sum").double()
    return total.item(), (source.size(0) - 1) * batch_size


def should_average(history: list[float], nonmono: int) -> bool:
    """True when none of the last ``nonmono`` validation losses improved on the best one before them.

    ``history`` includes the current evaluation. (awd-lstm-lm's ``val_loss > min(best_val_loss[:-nonmono])``
    tests only the current loss against the evaluations older than ``nonmono``.)
    """
    if nonmono <= 0 or len(history) <= nonmono:
        return False
    return min(history[-nonmono:]) >= min(history[:-nonmono])


class LanguageModelingTask(Task):
    """AWD-LSTM language modeling with BA by dropout (stream layout above) and NT-ASGD."""

    best_metric = ("ppl", True)
    batch_dim = 1  # (T, N) time-major windows: columns are the rows BA repeats
    copy_layout = "tiled"  # copy c of stream b is column c·B + b, whatever ba.layout says (the check requires it)
    loader_repeats = False  # no loader: the windows always hold the B streams

    def __init__(self, cfg, accelerator) -> None:
        super().__init__(cfg, accelerator)
        data, ba = cfg.data, cfg.ba
        self.corpus = load_lm_corpus(data)
        check_split_size(self.corpus, data, "valid", data.eval_batch_size)  # now, not at the first validation
        self.vocab_size = len(self.corpus.dictionary)
        # Rank groups (ba.group_size consecutive ranks) share streams; groups take disjoint ones.
        self.group_size = ba.group_size
        where = rank_group(accelerator.process_index, accelerator.num_processes, ba.group_size)
        train = self.corpus.train[:data.max_train_tokens]  # (L,); the whole split when None
        needed = 2 * data.batch_size * where.num_groups  # two rows: one (input, next word) pair per stream
        if train.numel() < needed:
            raise ConfigError(f"data.max_train_tokens={data.max_train_tokens}: {train.numel()} train tokens cannot "
                              f"fill {data.batch_size * where.num_groups} streams (data.batch_size x rank groups) "
                              f"of 2 tokens; needs at least {needed}")
        streams = batchify(train, data.batch_size * where.num_groups)  # (L', B * groups)
        streams = streams[:, where.group * data.batch_size:(where.group + 1) * data.batch_size]  # (L', B)
        self.train_data = streams.to(self.device)  # (L', B); the trainer's BA repeats each window to N = B * M
        self.num_columns = self.train_data.size(1) * ba.repeats  # N: the columns the hidden state is carried for
        self.iterator = BPTTIterator(self.train_data, data.bptt, variable=data.variable_bptt, seed=cfg.seed)
        self.hidden: Hidden | None = None  # per-column state of the training streams, detached
        self.model: AWDLSTM | None = None
        self.averaged: AveragedModel | None = None  # set when NT-ASGD switches
        self.skip_steps = 0  # steps after the switch not yet averaged
        self.history: list[float] = []  # validation losses before the switch
        self.consistency = ConsistencyTerm.from_config(ba)  # None without ba.consistency; layout given per chunk
        logger.info("corpus: %d words, train %d rows x %d streams (B=%d, M=%d: %d columns), %d windows per epoch",
                    self.vocab_size, *self.train_data.shape, data.batch_size, ba.repeats, self.num_columns,
                    len(self.iterator))

    def build_model(self) -> AWDLSTM:
        self.model = build_lm(self.cfg.model, self.vocab_size)
        return self.model

    # -- data ---------------------------------------------------------------------------------------------
    def num_batches(self, epoch: int) -> int:
        counter = BPTTIterator(self.train_data, self.cfg.data.bptt, variable=self.cfg.data.variable_bptt,
                               seed=self.cfg.seed)  # a fresh one: leaves the training position alone
        counter.set_epoch(epoch)
        return len(counter)

    def epoch_iterator(self, epoch: int, start: int = 0) -> Iterator[LMBatch]:
        """Windows of ``epoch`` from ``start``; the hidden state restarts from zero at the epoch's first window."""
        state = self.iterator.state_dict()
        state.update(epoch=epoch, iterations_in_epoch=start)
        self.iterator.load_state_dict(state)
        if start == 0 or self.hidden is None:
            self.hidden = self.model.init_hidden(self.num_columns)
        for b in self.iterator:
            yield LMBatch(b.x, b.y, b.seq_len, b.lr_scale, 0, self.num_columns, self.cfg.ba.repeats)

    def chunk_rows(self, batch: LMBatch, chunks: int, layout: CopyLayout) -> list[Tensor]:
        """``chunks`` column blocks of ``batch.copies // chunks`` whole copies each (a block of consecutive columns
        keeps its slice of the hidden state)."""
        columns = torch.arange(batch.x.size(1), device=batch.x.device)
        return list(columns.split(batch.x.size(1) // chunks))

    def select_rows(self, batch: LMBatch, rows: Tensor) -> LMBatch:
        """The columns ``rows`` (consecutive, whole copies: :meth:`chunk_rows`) of an expanded window."""
        first, width = int(rows[0]), len(rows)
        return LMBatch(batch.x[:, first:first + width], batch.y[:, first:first + width], batch.seq_len,
                       batch.lr_scale, batch.lo + first, batch.lo + first + width,
                       batch.copies * width // batch.x.size(1))

    def sample_size(self, batch: LMBatch) -> float:
        return float(batch.x.numel())  # T * N

    def loss(self, model: nn.Module, batch: LMBatch) -> tuple[Tensor, dict[str, float]]:
        """CE summed over the T * n words + (AR + TAR) * T * n, so that / (T * N) gives the reference's loss; with
        ``ba.consistency``, + alpha * the term across the copy columns summed over the T * B distinct words.
        AR/TAR stay as in the reference (means over all columns)."""
        lo, hi = batch.lo, batch.hi
        hidden = [(h[:, lo:hi], c[:, lo:hi]) for h, c in self.hidden]
        logits, new_hidden, raw, dropped = model(batch.x, hidden, repeats=batch.copies)  # (T, n, V)
        nll = F.cross_entropy(logits.flatten(0, 1).float(), batch.y.flatten(), reduction="sum")
        crit = self.cfg.criterion
        reg = activation_regularization(dropped[-1], crit.alpha)
        if batch.x.size(0) > 1:  # TAR needs two steps; the epoch's last window can be one row
            reg = reg + temporal_activation_regularization(raw[-1], crit.beta)
        loss = nll + reg * batch.x.numel()
        logs = {"nll_sum": nll.detach()}
        if self.consistency is not None:  # columns are copy-major: copy c of stream b is column c·B + b ("tiled")
            lprobs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (n, T, V)
            loss = self.consistency.add(loss, logs, lprobs, layout=CopyLayout(batch.copies, "tiled"))
        logs["loss_sum"] = loss.detach()
        self._store_hidden(detach_hidden(new_hidden), lo, hi)
        return loss, logs

    def batch_state(self) -> Hidden | None:
        """The hidden state the next window starts from: (h, c) per layer, each (1, N, H), detached."""
        return self.hidden

    def row_losses(self, model: nn.Module, batch: LMBatch, hidden: Hidden | None = None) -> tuple[Tensor, Tensor]:
        """Per stream column: next-word NLL summed over the T words (AR/TAR and ``ba.consistency`` left out: they
        are not sums over copies); ``hidden`` is the state before the window, (h, c) per layer of (1, N, H).
        Columns are copy-major ("tiled")."""
        logits, _, _, _ = model(batch.x, hidden, repeats=batch.copies)  # (T, N, V)
        nll = F.cross_entropy(logits.flatten(0, 1).float(), batch.y.flatten(), reduction="none")
        losses = nll.view(batch.x.shape).sum(0)  # (N,)
        return losses, CopyLayout(batch.copies, "tiled").copy_of_rows(len(losses), losses.device)

    def _store_hidden(self, new: Hidden, lo: int, hi: int) -> None:
        if lo == 0 and hi == self.num_columns:
            self.hidden = new
            return
        # out of place: the old tensors may still be saved for this chunk's backward
        self.hidden = [(torch.cat([h[:, :lo], nh, h[:, hi:]], 1), torch.cat([c[:, :lo], nc, c[:, hi:]], 1))
                       for (h, c), (nh, nc) in zip(self.hidden, new)]

    def lr_scale(self, batch: LMBatch) -> float:
        return batch.lr_scale  # drawn length / bptt (1.0 with fixed windows), as the reference

    # -- NT-ASGD ------------------------------------------------------------------------------------------
    def after_step(self, model: nn.Module) -> None:
        if self.averaged is None:
            return
        if self.skip_steps:  # torch ASGD's mu lags a step: its average starts at the 2nd iterate after t0
            self.skip_steps -= 1
            return
        self.averaged.update_parameters(self.accelerator.unwrap_model(model, keep_torch_compile=False))

    def after_validate(self, metrics: dict[str, float]) -> None:
        if self.averaged is not None:
            return
        self.history.append(metrics["loss"])
        if should_average(self.history, self.cfg.criterion.nonmono):
            logger.info("validation has not improved for %d evaluations: switching to averaged SGD",
                        self.cfg.criterion.nonmono)
            self.averaged = AveragedModel(self.model)
            self.skip_steps = 1

    def eval_model(self, model: nn.Module) -> nn.Module:
        """The averaged weights after the switch (the current ones until the average holds an iterate)."""
        if self.averaged is not None and int(self.averaged.n_averaged) > 0:
            return self.averaged.module
        return self.accelerator.unwrap_model(model, keep_torch_compile=False)

    def validate(self, model: nn.Module) -> dict[str, float]:
        """Loss (nats per word), ppl and bits per word on valid; every rank computes the whole split."""
        nll, words = corpus_nll(model, self.corpus.valid, self.cfg.data.eval_batch_size, self.cfg.data.bptt)
        return word_metrics(nll / words)

    # -- resume -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"history": list(self.history), "skip_steps": self.skip_steps}
        if self.hidden is not None:
            state["hidden"] = [[h.cpu(), c.cpu()] for h, c in self.hidden]
        if self.averaged is not None:
            state["averaged"] = {k: v.cpu() for k, v in self.averaged.state_dict().items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [float(v) for v in state.get("history", [])]
        self.skip_steps = int(state.get("skip_steps", 0))
        hidden = state.get("hidden")
        self.hidden = None if hidden is None else [(h.to(self.device), c.to(self.device)) for h, c in hidden]
        self.averaged = None
        if "averaged" in state:
            self.averaged = AveragedModel(self.model)
            self.averaged.load_state_dict(state["averaged"])


def word_metrics(loss: float) -> dict[str, float]:
    """``loss`` (mean NLL, nats per word), ``ppl`` and ``bpw`` (bits per word) of a mean word NLL."""
    return {"loss": loss, "ppl": perplexity(loss), "bpw": loss / math.log(2)}


def evaluate(cfg, model_state: dict, args: EvalOptions) -> dict[str, float]:
    """Perplexity and bits per word of a checkpoint on ``args.split`` (batch size 1 for test, as the reference).

    Raises:
        ValueError: an unknown split, or weights for another vocabulary.
        FileNotFoundError: the corpus is missing.
        ConfigError: the split is too short for its batch size (see :func:`check_split_size`).
    """
    if args.split not in SPLITS:
        raise ValueError(f"--split must be one of {', '.join(SPLITS)}, got {args.split!r}")
    corpus = load_lm_corpus(cfg.data)
    bsz = cfg.data.test_batch_size if args.split == "test" else cfg.data.eval_batch_size
    check_split_size(corpus, cfg.data, args.split, bsz)
    vocab = len(corpus.dictionary)
    embedding = model_state.get("encoder.weight")
    if embedding is None or embedding.size(0) != vocab:
        found = "no encoder.weight" if embedding is None else f"a vocabulary of {embedding.size(0)} words"
        raise ValueError(f"checkpoint has {found}; the corpus has {vocab} words")
    model = build_lm(cfg.model, vocab)
    model.load_state_dict(model_state)
    model.to(torch.device(args.device)).eval()
    nll, words = corpus_nll(model, getattr(corpus, args.split), bsz, cfg.data.bptt)
    metrics = word_metrics(nll / words)
    print(f"{args.split}: ppl {metrics['ppl']:.2f}, {metrics['bpw']:.4f} bits per word "
          f"({words} words, batch size {bsz}, bptt {cfg.data.bptt})")
    return metrics


def check_config(cfg, where) -> None:
    """Cross-field checks of a language-modelling recipe (run at ``seqba.config.load``)."""
    ba = cfg.ba
    if ba.fork_layer:
        raise ConfigError(f"{where(('ba', 'fork_layer'))}: {ba.fork_layer}: forked copies are not wired into "
                          "language modelling yet (the models support them: seqba.models.fork); use 0")
    if ba.layout != "tiled":
        raise ConfigError(f"{where(('ba', 'layout'))}: {ba.layout!r}: language modeling lays BA copies out "
                          "copy-major (repeat_streams); set ba.layout: tiled")
    if ba.repeats % ba.sample_chunks:
        raise ConfigError(f"{where(('ba', 'sample_chunks'))}: {ba.sample_chunks} must divide ba.repeats="
                          f"{ba.repeats}: language-modeling chunks are whole BA copies")
    if ba.consistency != "none" and ba.sample_chunks > 1:
        raise ConfigError(f"{where(('ba', 'sample_chunks'))}: language-modeling chunks hold different "
                          f"copies, which ba.consistency={ba.consistency} must compare; use sample_chunks: 1")


class LMGradients(GradAdapter):
    """Per-sample gradients of the M copies of a text window (``seqba.analyze grad-correlation``).

    A loop of backward passes (``vmap(grad)`` gives the same gradients, tested, but torch 2.13 has no batching rule
    for the fused LSTM kernel behind ``torch._VF.lstm``, ``aten::mkldnn_rnn_layer`` on CPU, so vmap itself falls
    back to a per-sample loop with a warning). A sample is a ``bptt``-word window of the split, started from the
    hidden state of the ``bptt`` words before it (eval mode); each copy is its own forward, so copies differ by
    every mask (locked dropout, weight drop and embedding dropout: the recipe's ``per_copy_masks: true``
    behaviour).
    """

    def build(self) -> nn.Module:
        self.corpus = load_lm_corpus(self.cfg.data)
        return build_lm(self.cfg.model, len(self.corpus.dictionary))

    def samples(self, split: str, n: int, rng: np.random.Generator) -> Iterator[tuple[None, dict]]:
        if split not in ("train", "valid", "test"):
            raise ValueError(f"--split must be train, valid or test for language modelling, got {split!r}")
        stream, bptt = getattr(self.corpus, split), self.cfg.data.bptt
        if len(stream) < 2 * bptt + 2:
            raise ValueError(f"the {split} split has {len(stream)} words, fewer than 2 * bptt + 2")
        for p in rng.choice(np.arange(bptt, len(stream) - bptt - 1), size=n, replace=False):
            window = stream[p - bptt:p + bptt + 1].to(self.device)
            self.model.eval()
            with torch.no_grad():  # the state after the bptt words before the window
                _, hidden, _, _ = self.model(window[:bptt, None], self.model.init_hidden(1))
            yield None, {"x": window[bptt:-1], "y": window[bptt + 1:], "hidden": hidden}

    def copy_grads(self, s: dict, copies: int) -> dict[str, Tensor]:
        def loss_fn(params, x, y):  # one window (T,), (T,)
            logits = functional_call(self.model, params, (x[:, None], s["hidden"]))[0]  # (T, 1, V)
            return F.cross_entropy(logits[:, 0].float(), y, reduction="sum")

        self.model.train()
        return per_sample_grads(loss_fn, self.params, s["x"].expand(copies, -1), s["y"].expand(copies, -1),
                                method="loop")


#: No significance test is defined for perplexity (a paired test would need per-window losses, which eval does not
#: write).
SPEC = TaskSpec(LMDataConfig, AWDLSTMConfig, LMCriterionConfig, LanguageModelingTask, evaluate=evaluate,
                check=check_config, batch_key="data.batch_size", batch_unit="words",
                test_metrics=(Metric("ppl", False), Metric("bpw", False, digits=4)), curve_metric="ppl",
                analysis=LMGradients)
