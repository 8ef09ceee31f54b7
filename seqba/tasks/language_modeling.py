"""Language modelling: AWD-LSTM (the default), a GPT-style Transformer or any Hugging Face causal LM on PTB-style
text, with Batch Augmentation (Hoffer et al. 2020, Table 3; Merity et al. 2018).

``model.arch`` (:mod:`seqba.tasks.lm_models`) picks the network; the streams, the window iterator and the data
section are shared (:mod:`seqba.tasks.lm_streams`, which draws the column layout of BA's copies). This module holds
the AWD-LSTM (:class:`LanguageModelingTask`), which carries its hidden state across windows, one (h, c) per
column::

    hidden    h[:, 0:B]  |  h[:, B:2B] | ... |                     copy c of stream b is column c*B + b

and the family's spec; ``transformer`` and ``hf`` read each window on its own (:mod:`seqba.tasks.lm_transformer`).
``ba.sample_chunks = k`` (k divides M) evaluates the AWD-LSTM's columns in k chunks of M/k whole copies, each with
its slice of the hidden state. A fork (``ba.fork_layer`` k in 1..num_layers, :class:`seqba.models.fork.Fork`) runs
the embedding and the first k LSTM layers on the B streams and the layers above on the M·B copies: the hidden
state is B columns wide below layer k and M·B from it (``AWDLSTM.init_hidden(B, fork)``).

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
awd-lstm-lm does (whose lagged ``mu`` starts the mean at the second step after the switch). AR/TAR and NT-ASGD are
the AWD-LSTM's: the Transformers' recipes set ``criterion: {alpha: 0, beta: 0, nonmono: 0}``.

Speed and results of the recipes are in README.md and benchmarks/results (``benchmarks/bench_lm.py``).

Run the small recipe, then evaluate::

    OMP_NUM_THREADS=1 accelerate launch --num_processes 1 -m seqba.train recipes/awd_lstm_ptb_small_m10.yaml
    python -m seqba.eval --checkpoint runs/awd_lstm_ptb_small_m10/checkpoint_best.pt --split test
"""
from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.optim.swa_utils import AveragedModel

from seqba.errors import ConfigError, FieldError
from seqba.data.lm import SPLITS, BPTTIterator, batchify
from seqba.flops import awd_lstm_step_flops
from seqba.gradstats import per_sample_grads
from seqba.layout import CopyLayout
from seqba.consistency import ConsistencyTerm
from seqba.losses import (activation_regularization, cross_entropy_with_term,
                           temporal_activation_regularization)
from seqba.models.awd_lstm import AWDLSTM, Hidden, detach_hidden
from seqba.tasks.base import GradAdapter
from seqba.tasks.lm_models import LMModelConfig, build_lm_model
from seqba.tasks.lm_streams import (LMBatch, LMDataConfig, LMEvalOptions, StreamLMTask, check_split_size,
                                    corpus_root, load_lm_corpus, word_metrics)
from seqba.tasks.lm_transformer import WindowLMGradients, WindowLMTask, evaluate_windows
from seqba.tasks.lm_significance import block_references, paired_randomization, write_block_nll
from seqba.tasks.spec import Metric, SignificanceTest, TaskSpec

logger = logging.getLogger("seqba.tasks.language_modeling")

__all__ = ["LMDataConfig", "LMModelConfig", "LMCriterionConfig", "LMBatch", "LanguageModelingTask", "WindowLMTask",
           "lm_task", "load_lm_corpus", "corpus_root", "check_split_size", "word_metrics", "corpus_nll",
           "should_average", "evaluate", "check_config", "SPEC"]


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


@torch.no_grad()
def corpus_nll(model: AWDLSTM, data: Tensor, batch_size: int, bptt: int,
               token_nll: Tensor | None = None) -> tuple[float, int]:
    """Summed next-word NLL (nats) of ``model`` over the (L,) token stream ``data``, and the words scored.

    ``data`` is cut into ``batch_size`` streams, read in fixed ``bptt`` windows with the hidden state carried, as
    ``evaluate`` of awd-lstm-lm (which divides by the rows instead of the (rows - 1) * batch_size words scored).
    The model must be in eval mode; runs on the model's device. ``token_nll``: a (L,) float64 CPU tensor that
    receives the NLL of predicting each scored position of ``data`` (the first of each stream and the
    ``L % batch_size`` dropped at the end are left as they are), for :mod:`seqba.tasks.lm_significance`.
    """
    device = model.encoder.weight.device
    source = batchify(data, batch_size).to(device)  # (L // bsz, bsz)
    rows = source.size(0)
    hidden = model.init_hidden(batch_size)
    total = torch.zeros((), dtype=torch.float64, device=device)
    start = 0  # source row of the window's first input
    for batch in BPTTIterator(source, bptt, variable=False):
        logits, hidden, _, _ = model(batch.x, hidden)  # (T, bsz, V)
        nll = F.cross_entropy(logits.flatten(0, 1).float(), batch.y.flatten(), reduction="none")  # (T * bsz,)
        total += nll.sum(dtype=torch.float64)
        if token_nll is not None:  # target row start + 1 + t of stream b is position b * rows + start + 1 + t
            steps = batch.y.size(0)
            positions = (torch.arange(batch_size)[None, :] * rows + start + 1 + torch.arange(steps)[:, None])
            token_nll[positions.flatten()] = nll.detach().double().cpu()
        start += batch.x.size(0)
    return total.item(), (rows - 1) * batch_size


def should_average(history: list[float], nonmono: int) -> bool:
    """True when none of the last ``nonmono`` validation losses improved on the best one before them.

    ``history`` includes the current evaluation. (awd-lstm-lm's ``val_loss > min(best_val_loss[:-nonmono])``
    tests only the current loss against the evaluations older than ``nonmono``.)
    """
    if nonmono <= 0 or len(history) <= nonmono:
        return False
    return min(history[-nonmono:]) >= min(history[:-nonmono])


class LanguageModelingTask(StreamLMTask):
    """AWD-LSTM language modeling with BA by dropout (stream layout above), NT-ASGD, and forks."""

    def __init__(self, cfg, accelerator) -> None:
        super().__init__(cfg, accelerator)
        self.hidden: Hidden | None = None  # per-column state of the training streams, detached
        self.model: AWDLSTM | None = None
        self.averaged: AveragedModel | None = None  # set when NT-ASGD switches
        self.skip_steps = 0  # steps after the switch not yet averaged
        self.history: list[float] = []  # validation losses before the switch
        self.consistency = ConsistencyTerm.from_config(cfg.ba)  # None without ba.consistency; layout given per chunk

    def build_model(self) -> AWDLSTM:
        self.model = build_lm_model(self.cfg.model, self.vocab_size)
        return self.model

    # -- data ---------------------------------------------------------------------------------------------
    def epoch_iterator(self, epoch: int, start: int = 0) -> Iterator[LMBatch]:
        """Windows of ``epoch`` from ``start``; the hidden state restarts from zero at the epoch's first window."""
        windows = self.windows(epoch, start)
        if start == 0 or self.hidden is None:
            self.hidden = self.initial_hidden()
        for b in windows:
            yield LMBatch(b.x, b.y, b.seq_len, b.lr_scale, 0, self.num_columns, self.cfg.ba.repeats)

    def initial_hidden(self) -> Hidden:
        """Zero state of the training columns: N = B·M per layer, or B below the fork's layer and M·B from it."""
        if self.fork is not None:
            return self.model.init_hidden(self.train_data.size(1), self.fork)
        return self.model.init_hidden(self.num_columns)

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

    def forward(self, model: nn.Module, batch: LMBatch, hidden: Hidden) -> tuple[Tensor, Tensor, Any, Any, Any]:
        """``(logits (T, n, V), targets (T, n), new_hidden, raw_outputs, dropped_outputs)`` of a window's columns
        from ``hidden``; a forked window (training) has B columns in and n = M·B out, its targets repeated."""
        if self.fork is not None and model.training:
            logits, new_hidden, raw, dropped = model(batch.x, hidden, fork=self.fork)  # (T, M·B, V)
            return logits, self.fork.copy(batch.y, dim=1), new_hidden, raw, dropped
        logits, new_hidden, raw, dropped = model(batch.x, hidden, repeats=batch.copies)  # (T, n, V)
        return logits, batch.y, new_hidden, raw, dropped

    def copies_of(self, batch: LMBatch) -> int:
        """BA copies among the output columns of ``batch`` (the fork's M for a forked window)."""
        return self.fork.repeats if self.fork is not None else batch.copies

    def loss(self, model: nn.Module, batch: LMBatch) -> tuple[Tensor, dict[str, float]]:
        """CE summed over the T * n words + (AR + TAR) * T * n, so that / (T * N) gives the reference's loss; with
        ``ba.consistency``, + alpha * the term across the copy columns summed over the T * B distinct words.
        AR/TAR stay as in the reference (means over all columns)."""
        lo, hi = batch.lo, batch.hi
        hidden = self.hidden if self.fork is not None else [(h[:, lo:hi], c[:, lo:hi]) for h, c in self.hidden]
        logits, target, new_hidden, raw, dropped = self.forward(model, batch, hidden)  # (T, n, V), (T, n)
        logs: dict[str, Any] = {}
        if self.consistency is None:
            loss = nll = F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), reduction="sum")
        else:  # CE + alpha * term fused from the logits, columns copy-major: copy c of stream b is column c·B + b
            loss, nll = cross_entropy_with_term(
                self.consistency, logits.transpose(0, 1), target.t(), 0.0, logs, ignore_index=None,
                layout=CopyLayout(self.copies_of(batch), "tiled"), compiled=self.cfg.train.compile)  # (n, T, V)
        crit = self.cfg.criterion
        reg = activation_regularization(dropped[-1], crit.alpha)
        if batch.x.size(0) > 1:  # TAR needs two steps; the epoch's last window can be one row
            reg = reg + temporal_activation_regularization(raw[-1], crit.beta)
        loss = loss + reg * target.numel()
        logs["nll_sum"] = nll.detach()
        logs["loss_sum"] = loss.detach()
        self._store_hidden(detach_hidden(new_hidden), lo, hi)
        return loss, logs

    def batch_state(self) -> Hidden | None:
        """The hidden state the next window starts from: (h, c) per layer, each (1, N, H), detached (a fork's layers
        below k: (1, B, H))."""
        return self.hidden

    def row_losses(self, model: nn.Module, batch: LMBatch, hidden: Hidden | None = None) -> tuple[Tensor, Tensor]:
        """Per stream column: next-word NLL summed over the T words (AR/TAR and ``ba.consistency`` left out: they
        are not sums over copies); ``hidden`` is the state before the window (:meth:`batch_state`). Columns are
        copy-major ("tiled"), M·B of them (a forked window's output columns)."""
        logits, target, _, _, _ = self.forward(model, batch, hidden)  # (T, N, V), (T, N)
        nll = F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), reduction="none")
        losses = nll.view(target.shape).sum(0)  # (N,)
        return losses, CopyLayout(self.copies_of(batch), "tiled").copy_of_rows(len(losses), losses.device)

    def _store_hidden(self, new: Hidden, lo: int, hi: int) -> None:
        if lo == 0 and hi == self.num_columns:
            self.hidden = new
            return
        # out of place: the old tensors may still be saved for this chunk's backward
        self.hidden = [(torch.cat([h[:, :lo], nh, h[:, hi:]], 1), torch.cat([c[:, :lo], nc, c[:, hi:]], 1))
                       for (h, c), (nh, nc) in zip(self.hidden, new)]

    def step_logs(self, batch: LMBatch, expanded: LMBatch) -> dict[str, float]:
        """The step's model FLOPs as executed (:func:`seqba.flops.awd_lstm_step_flops` over the window's drawn
        length T and its B streams: a fork's lower LSTM layers once per stream, the rest and the decoder M times),
        logged as ``model_flops_per_step`` and ``model_flops_per_s``."""
        rnns = self.model.rnns
        flops = awd_lstm_step_flops(batch.x.size(0), batch.x.size(1),
                                    layer_sizes=[rnns[0].input_size, *(rnn.hidden_size for rnn in rnns)],
                                    vocab_size=self.vocab_size, repeats=self.cfg.ba.repeats,
                                    fork_layer=self.cfg.ba.fork_layer)
        return {"model_flops_count": flops}

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


def lm_task(cfg, accelerator) -> StreamLMTask:
    """The task of ``model.arch`` (``TaskSpec.task_class``): :class:`LanguageModelingTask` for the AWD-LSTM,
    :class:`~seqba.tasks.lm_transformer.WindowLMTask` for ``transformer`` and ``hf``."""
    task_class = LanguageModelingTask if cfg.model.arch == "awd_lstm" else WindowLMTask
    return task_class(cfg, accelerator)


def evaluate(cfg, model_state: dict, args: LMEvalOptions) -> dict[str, float]:
    """Perplexity and bits per word of a checkpoint on ``args.split``: the AWD-LSTM reads ``bptt`` windows with its
    state carried (batch size 1 for test, as the reference); the Transformers slide a window
    (:func:`~seqba.tasks.lm_transformer.evaluate_windows`).

    Raises:
        ValueError: an unknown split, or weights for another vocabulary.
        FileNotFoundError: the corpus is missing.
        ConfigError: the split is too short for its batch size (see :func:`check_split_size`).
    """
    if args.split not in SPLITS:
        raise ValueError(f"--split must be one of {', '.join(SPLITS)}, got {args.split!r}")
    if cfg.model.arch != "awd_lstm":
        return evaluate_windows(cfg, model_state, args)
    corpus = load_lm_corpus(cfg.data)
    bsz = cfg.data.test_batch_size if args.split == "test" else cfg.data.eval_batch_size
    check_split_size(corpus, cfg.data, args.split, bsz)
    vocab = len(corpus.dictionary)
    embedding = model_state.get("encoder.weight")
    if embedding is None or embedding.size(0) != vocab:
        found = "no encoder.weight" if embedding is None else f"a vocabulary of {embedding.size(0)} words"
        raise ValueError(f"checkpoint has {found}; the corpus has {vocab} words")
    model = build_lm_model(cfg.model, vocab)
    model.load_state_dict(model_state)
    model.to(torch.device(args.device)).eval()
    stream = getattr(corpus, args.split)
    token_nll = torch.full((len(stream),), math.nan, dtype=torch.float64) if args.output else None
    nll, words = corpus_nll(model, stream, bsz, cfg.data.bptt, token_nll)
    if token_nll is not None:
        write_block_nll(token_nll, args.output)
    metrics = word_metrics(nll / words)
    print(f"{args.split}: ppl {metrics['ppl']:.2f}, {metrics['bpw']:.4f} bits per word "
          f"({words} words, batch size {bsz}, bptt {cfg.data.bptt})")
    return metrics


def _check_arch(cfg, where) -> None:
    """What ``model.arch`` allows of the other sections: NT-ASGD, AR/TAR, variable windows and state-carrying
    chunks are the AWD-LSTM's; a fork needs a layer above it; the Transformer's window fits its positions."""
    model, data, ba, crit = cfg.model, cfg.data, cfg.ba, cfg.criterion
    if model.arch == "awd_lstm":
        if data.eval_stride is not None:
            raise ConfigError(f"{where(('data', 'eval_stride'))}: the AWD-LSTM evaluates with its state carried "
                              "across windows (no sliding window); remove data.eval_stride")
        if ba.fork_layer and not 1 <= ba.fork_layer <= model.num_layers:
            raise ConfigError(f"{where(('ba', 'fork_layer'))}: {ba.fork_layer} is not an LSTM layer: use 1 .. "
                              f"model.num_layers={model.num_layers} (0: copies at the input)")
        if ba.fork_layer and ba.sample_chunks > 1:
            raise ConfigError(f"{where(('ba', 'sample_chunks'))}: a forked AWD-LSTM window shares its lower "
                              "layers' state across the copies, which chunks of whole copies would split; use 1")
        return
    for name in ("alpha", "beta", "nonmono"):
        if getattr(crit, name):
            raise ConfigError(f"{where(('criterion', name))}: {getattr(crit, name)}: AR/TAR and NT-ASGD are the "
                              f"AWD-LSTM's; set criterion.alpha, beta and nonmono to 0 for model.arch {model.arch}")
    if data.variable_bptt:
        raise ConfigError(f"{where(('data', 'variable_bptt'))}: model.arch {model.arch} trains on windows of "
                          "data.bptt tokens; set data.variable_bptt: false")
    if model.arch == "hf":
        if ba.fork_layer:
            raise ConfigError(f"{where(('ba', 'fork_layer'))}: {ba.fork_layer}: model.arch hf does not fork copies "
                              "inside the model; use 0 (copies at the input)")
        if importlib.util.find_spec("transformers") is None:
            raise ConfigError(f"{where(('model', 'arch'))}: model.arch hf needs Hugging Face transformers: "
                              "pip install seqba[hf] (or pip install transformers)")
        return
    if data.bptt > model.max_positions:
        raise ConfigError(f"{where(('data', 'bptt'))}: {data.bptt} tokens exceed model.max_positions="
                          f"{model.max_positions}")
    if ba.fork_layer >= model.num_layers:
        raise ConfigError(f"{where(('ba', 'fork_layer'))}: {ba.fork_layer} leaves no decoder block to tell the "
                          f"copies apart: use 1 .. {model.num_layers - 1} (model.num_layers={model.num_layers})")


def check_config(cfg, where) -> None:
    """Cross-field checks of a language-modelling recipe (run at ``seqba.config.load``)."""
    ba = cfg.ba
    if ba.layout != "tiled":
        raise ConfigError(f"{where(('ba', 'layout'))}: {ba.layout!r}: language modeling lays BA copies out "
                          "copy-major (repeat_streams); set ba.layout: tiled")
    _check_arch(cfg, where)
    if cfg.model.arch != "awd_lstm":  # chunks on sample boundaries: every copy of a stream in one chunk
        return
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
        return build_lm_model(self.cfg.model, len(self.corpus.dictionary))

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


def lm_gradients(cfg, state: dict | None, device: torch.device) -> GradAdapter:
    """The gradient-analysis adapter of ``model.arch`` (``TaskSpec.analysis``): :class:`LMGradients` for the
    AWD-LSTM, :class:`~seqba.tasks.lm_transformer.WindowLMGradients` for ``transformer`` and ``hf``."""
    adapter = LMGradients if cfg.model.arch == "awd_lstm" else WindowLMGradients
    return adapter(cfg, state, device)


def fork_arms(cfg) -> dict[str, int]:
    """Forked BA arms of a study: above the first layer, and below the top one (AWD-LSTM: at the last LSTM layer,
    where only the output dropout tells the copies apart); none for ``hf``."""
    layers = cfg.model.layers
    if layers is None or layers < 2:
        return {}
    top = layers if cfg.model.arch == "awd_lstm" else layers - 1
    return {"ba_fork_1": 1, "ba_fork_top": top}


SPEC = TaskSpec(LMDataConfig, LMModelConfig, LMCriterionConfig, lm_task, evaluate=evaluate,
                eval_options=LMEvalOptions, check=check_config, batch_key="data.batch_size", batch_unit="words",
                test_metrics=(Metric("ppl", False), Metric("bpw", False, digits=4)), curve_metric="ppl",
                outputs_option="output",
                significance=SignificanceTest(
                    "ppl", "approximate randomization (10,000 sign flips) of the summed NLL per block of 100 test "
                    "tokens", paired_randomization, block_references),
                analysis=lm_gradients, fork_arms=fork_arms)
