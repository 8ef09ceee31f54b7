"""What every language model of the task shares: the ``data:`` section, the corpus, and the training streams.

The training text is cut into B streams (one column each, :func:`seqba.data.lm.batchify`) and read in windows of
``data.bptt`` rows (:class:`seqba.data.lm.BPTTIterator`); BA's M copies are extra columns, copy-major ("tiled"), made
per window by the trainer's :class:`~seqba.ba.BatchAugmentation`::

    column:   0 .. B-1   |  B .. 2B-1  | ... | (M-1)B .. MB-1      column c*B + b = copy c of stream b
    rows      copy 0     |  copy 1     | ... | copy M-1            every copy holds the same tokens
    [i, i+T)  s0 .. sB-1 |  s0 .. sB-1 | ... | s0 .. sB-1          x = rows [i, i+T), y = rows [i+1, i+1+T)

With a fork (``ba.fork_layer`` k > 0) the window stays B columns and the model makes the M copies at layer k.
:class:`StreamLMTask` holds this part for every ``model.arch``: the AWD-LSTM carries its hidden state across the
windows (:mod:`seqba.tasks.language_modeling`), the Transformers read each window on its own
(:mod:`seqba.tasks.lm_transformer`).
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, NamedTuple

from torch import Tensor

from seqba.data.lm import BPTTBatch, BPTTIterator, Corpus, batchify, load_corpus, load_corpus_hf, split_path
from seqba.data.paths import data_root
from seqba.distributed import rank_group
from seqba.errors import ConfigError, FieldError
from seqba.metrics import perplexity
from seqba.models.fork import Fork
from seqba.tasks.base import Task
from seqba.tasks.spec import EvalOptions, option

logger = logging.getLogger("seqba.tasks.language_modeling")

__all__ = ["LMDataConfig", "LMBatch", "StreamLMTask", "load_lm_corpus", "corpus_root", "check_split_size",
           "word_metrics"]


@dataclass
class LMDataConfig:
    """Corpus and BPTT batching (awd-lstm-lm ``main.py`` flags in brackets).

    Attributes:
        root: folder with ``ptb.{train,valid,test}.txt`` or ``{train,valid,test}.txt`` (any plain text, one
            sentence per line, words separated by spaces); ``None``: ``seqba.data.paths.data_root() / "ptb"``.
        source: ``local`` (files under ``root``) or ``hf`` (``datasets.load_dataset("ptb_text_only")``).
        batch_size: B, distinct text streams per rank group [--batch_size]; the step has B * M columns.
        bptt: window length [--bptt]; training draws lengths around it when ``variable_bptt``. The Transformers'
            context, in training and evaluation.
        variable_bptt: the reference's random window lengths (and lr scaled by seq_len / bptt); AWD-LSTM only.
        eval_batch_size: streams for validation (the reference's 10); windows per forward for the Transformers.
        test_batch_size: streams for ``seqba.eval --split test`` (the reference's 1); AWD-LSTM only (the
            Transformers' windows do not depend on it).
        eval_stride: the Transformers' evaluation: windows of ``bptt`` tokens every ``eval_stride`` tokens, each
            scoring its last ``eval_stride`` targets (:func:`seqba.models.transformer_lm.sliding_window_nll`);
            ``None``: ``bptt`` (non-overlapping windows). Not for the AWD-LSTM (it carries its state instead).
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
    eval_stride: int | None = None
    max_train_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("batch_size", "bptt", "eval_batch_size", "test_batch_size"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be >= 1, got {getattr(self, name)!r}")
        if self.max_train_tokens is not None and self.max_train_tokens < 1:
            raise FieldError("max_train_tokens", f"must be >= 1 or null, got {self.max_train_tokens!r}")
        if self.eval_stride is not None and not 1 <= self.eval_stride <= self.bptt:
            raise FieldError("eval_stride", f"must be in 1 .. data.bptt={self.bptt} or null, got {self.eval_stride!r}")

    @property
    def stride(self) -> int:
        """The evaluation stride of the Transformers: ``eval_stride``, else ``bptt``."""
        return self.eval_stride or self.bptt


@dataclass
class LMEvalOptions(EvalOptions):
    """``python -m seqba.eval`` options of a language-model checkpoint (every ``model.arch``)."""

    output: str | None = option(None, "write the summed NLL (nats) of every block of 100 tokens here, one per line "
                                "(what a study's paired test compares)", file="write")


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


def word_metrics(loss: float) -> dict[str, float]:
    """``loss`` (mean NLL, nats per word), ``ppl`` and ``bpw`` (bits per word) of a mean word NLL."""
    return {"loss": loss, "ppl": perplexity(loss), "bpw": loss / math.log(2)}


class StreamLMTask(Task):
    """The training streams of a language model (module docstring): corpus, this rank group's B streams, and the
    resumable window iterator. Subclasses add the model, its loss and its validation.

    Attributes:
        corpus, vocab_size: the corpus and its dictionary's size V.
        train_data: (L', B) int64 on the device, this rank group's streams.
        num_columns: N = B · M, the columns of an expanded window.
        iterator: the :class:`~seqba.data.lm.BPTTIterator` over ``train_data`` (its position is the resume point).
        fork: the :class:`~seqba.models.fork.Fork` of ``ba.fork_layer`` (None at 0), layout ``tiled``.
    """

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
        self.num_columns = self.train_data.size(1) * ba.repeats  # N: the columns of an expanded window
        self.iterator = BPTTIterator(self.train_data, data.bptt, variable=data.variable_bptt, seed=cfg.seed)
        self.fork = Fork(ba.fork_layer, ba.repeats, "tiled") if ba.fork_layer else None
        logger.info("corpus: %d words, train %d rows x %d streams (B=%d, M=%d: %d columns), %d windows per epoch",
                    self.vocab_size, *self.train_data.shape, data.batch_size, ba.repeats, self.num_columns,
                    len(self.iterator))

    def num_batches(self, epoch: int) -> int:
        counter = BPTTIterator(self.train_data, self.cfg.data.bptt, variable=self.cfg.data.variable_bptt,
                               seed=self.cfg.seed)  # a fresh one: leaves the training position alone
        counter.set_epoch(epoch)
        return len(counter)

    def windows(self, epoch: int, start: int) -> Iterator[BPTTBatch]:
        """The iterator's windows of ``epoch`` from window ``start`` on: x, y (T, B) on the device."""
        state = self.iterator.state_dict()
        state.update(epoch=epoch, iterations_in_epoch=start)
        self.iterator.load_state_dict(state)
        return iter(self.iterator)

    def sample_size(self, batch: LMBatch) -> float:
        return float(batch.x.numel())  # T * N (T * B for a forked window: BatchAugmentation counts M times it)
