"""Transformer language models in the language-modelling task: ``model.arch: transformer`` (GPT-style decoder,
:mod:`seqba.models.transformer_lm`) and ``model.arch: hf`` (any ``transformers`` causal LM,
:mod:`seqba.models.hf_causal_lm`).

Training reads the task's B streams in windows of ``data.bptt`` tokens (:mod:`seqba.tasks.lm_streams`), each on its
own: no state is carried from one window to the next (``batch_state()`` is None). A window is time-major (T, N), its
columns the M copies of the B streams ("tiled", made by the trainer's BatchAugmentation), and is transposed for the
model, whose rows are the columns::

    window x (T, N) --.t()--> tokens (N, T) --model--> logits (N, T, V)     row c·B + b = copy c of stream b
    forked (ba.fork_layer k):  tokens (B, T) --blocks 0..k-1, copy, blocks k..n-1--> logits (M·B, T, V)

The copies differ by their dropout masks. The loss is the next-token cross-entropy summed over the window's
N·T targets (``sample_size``: the words of the M·B rows), plus ``ba.consistency_alpha`` times a consistency term
across the copies (``ba.consistency``). ``ba.sample_chunks`` cuts on stream boundaries, every copy of a stream in
one chunk (so consistency works chunk by chunk). Optimizer parameter groups follow nanoGPT's
``configure_optimizers``: no weight decay on biases and LayerNorm gains.

Evaluation scores every token of a split once with a sliding window of ``data.bptt`` tokens moved by
``data.eval_stride`` (:func:`seqba.models.transformer_lm.sliding_window_nll`; stride ``bptt``: non-overlapping
windows), and reports perplexity and bits per word; the stride is logged and returned with the metrics.

    python -m seqba.train recipes/transformer_lm_ptb_m4.yaml
    python -m seqba.eval --checkpoint runs/transformer_lm_ptb_m4/checkpoint_best.pt --split test
"""
from __future__ import annotations

import logging
import math
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from seqba.consistency import ConsistencyTerm
from seqba.data.lm import Corpus
from seqba.flops import causal_lm_step_flops, decoder_lm_step_flops
from seqba.gradstats import per_sample_grads
from seqba.layout import CopyLayout
from seqba.errors import ConfigError
from seqba.losses import cross_entropy_with_term
from seqba.models.transformer_lm import sliding_window_nll
from seqba.tasks.base import GradAdapter
from seqba.tasks.lm_models import build_lm_model, no_decay_groups
from seqba.tasks.lm_significance import write_block_nll
from seqba.tasks.lm_streams import (LMBatch, LMEvalOptions, StreamLMTask, check_split_size, load_lm_corpus,
                                    word_metrics)

logger = logging.getLogger("seqba.tasks.language_modeling")

__all__ = ["WindowLMTask", "WindowLMGradients", "evaluate_windows", "split_nll"]


def split_nll(model: nn.Module, stream: Tensor, cfg: Any, token_nll: Tensor | None = None) -> tuple[float, int]:
    """Summed next-token NLL (nats) of ``model`` over the (L,) token stream ``stream`` and the tokens scored
    (L - 1): windows of ``data.bptt`` tokens every ``data.eval_stride`` (``data.eval_batch_size`` per forward).
    ``token_nll``: a (L,) float64 tensor that receives each position's NLL (see ``sliding_window_nll``)."""
    data = cfg.data
    return sliding_window_nll(model, stream, data.bptt, data.stride, data.eval_batch_size, token_nll)


def check_positions(model: nn.Module, bptt: int, where: str) -> None:
    """Refuse a window longer than the model's positions (an hf config's ``n_positions``).

    Raises:
        ConfigError: naming ``data.bptt`` and the model's limit.
    """
    limit = getattr(model, "max_positions", None)
    if limit is not None and bptt > limit:
        raise ConfigError(f"data.bptt={bptt} exceeds the {where} model's max positions ({limit}); lower data.bptt")


class WindowLMTask(StreamLMTask):
    """A Transformer LM (``transformer`` or ``hf``) trained on independent windows of the task's streams (module
    docstring)."""

    def __init__(self, cfg, accelerator) -> None:
        super().__init__(cfg, accelerator)
        self.consistency = ConsistencyTerm.from_config(cfg.ba)  # None without ba.consistency; layout per chunk
        logger.info("evaluation: windows of %d tokens every %d tokens (data.eval_stride), %d per forward",
                    cfg.data.bptt, cfg.data.stride, cfg.data.eval_batch_size)

    def build_model(self) -> nn.Module:
        model = build_lm_model(self.cfg.model, self.vocab_size)
        check_positions(model, self.cfg.data.bptt, self.cfg.model.arch)
        self.model = model
        return model

    def param_groups(self, model: nn.Module) -> list[dict]:
        """``optim.weight_decay`` on matrices only (:func:`seqba.tasks.lm_models.no_decay_groups`)."""
        return no_decay_groups(model)

    # -- data ---------------------------------------------------------------------------------------------
    def epoch_iterator(self, epoch: int, start: int = 0) -> Iterator[LMBatch]:
        """Windows of ``epoch`` from ``start``: x, y (T, B), lr scale 1 (fixed windows)."""
        for b in self.windows(epoch, start):
            yield LMBatch(b.x, b.y, b.seq_len, 1.0, 0, self.num_columns, self.cfg.ba.repeats)

    def chunk_rows(self, batch: LMBatch, chunks: int, layout: CopyLayout) -> list[Tensor]:
        """Columns of ``chunks`` pieces on stream boundaries, each with every copy of its streams (``layout``)."""
        return layout.sample_chunks(batch.x.size(1), chunks, batch.x.device)

    def select_rows(self, batch: LMBatch, rows: Tensor) -> LMBatch:
        """The columns ``rows`` (int64 (n,), whole streams with their copies) of a window."""
        return batch._replace(x=batch.x.index_select(1, rows), y=batch.y.index_select(1, rows), lo=0, hi=len(rows))

    # -- loss ---------------------------------------------------------------------------------------------
    def forward(self, model: nn.Module, batch: LMBatch) -> tuple[Tensor, Tensor]:
        """Logits (N, T, V) and targets (N, T) of a window; a forked one (training) has B rows in and N = M·B out,
        its targets repeated in the fork's layout."""
        tokens, targets = batch.x.t(), batch.y.t()  # (T, n) -> (n, T)
        if self.fork is not None and model.training:
            return model(tokens, fork=self.fork), self.fork.copy(targets)
        return model(tokens), targets

    def copies_of(self, batch: LMBatch) -> int:
        """BA copies among the output rows of ``batch`` (the fork's M for a forked window)."""
        return self.fork.repeats if self.fork is not None else batch.copies

    def loss(self, model: nn.Module, batch: LMBatch) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy summed over the N·T targets; with ``ba.consistency``, + alpha × the term across the copy
        rows summed over the B·T distinct positions."""
        logits, targets = self.forward(model, batch)  # (N, T, V), (N, T)
        logs: dict[str, Any] = {}
        if self.consistency is None:
            loss = nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")
        else:  # CE + alpha * term fused from the logits; rows copy-major: copy c of stream b is row c·B + b
            loss, nll = cross_entropy_with_term(self.consistency, logits, targets, 0.0, logs, ignore_index=None,
                                                layout=CopyLayout(self.copies_of(batch), "tiled"),
                                                compiled=self.cfg.train.compile)
        logs["nll_sum"] = nll.detach()
        logs["loss_sum"] = loss.detach()
        return loss, logs

    def row_losses(self, model: nn.Module, batch: LMBatch, hidden: Any = None) -> tuple[Tensor, Tensor]:
        """Per row (copy of a stream): next-token NLL summed over the window's T targets; copies "tiled"."""
        logits, targets = self.forward(model, batch)  # (N, T, V), (N, T)
        losses = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none").sum(1)  # (N,)
        return losses, CopyLayout(self.copies_of(batch), "tiled").copy_of_rows(len(losses), losses.device)

    def step_logs(self, batch: LMBatch, expanded: LMBatch) -> dict[str, float]:
        """The step's model FLOPs as executed, logged as ``model_flops_per_s``: the native Transformer by its sizes
        (:func:`seqba.flops.decoder_lm_step_flops`: a fork's lower blocks once per stream), ``hf`` from the module
        (:func:`seqba.flops.causal_lm_step_flops`: its matmul weights and its config's width and depth)."""
        model, ba = self.cfg.model, self.cfg.ba
        if model.arch == "hf" and self.model is not None:
            flops = causal_lm_step_flops(self.model.model, batch.x.size(0), batch.x.size(1), repeats=ba.repeats)
        elif model.arch == "transformer":
            flops = decoder_lm_step_flops(batch.x.size(0), batch.x.size(1), d_model=model.d_model,
                                          ffn_dim=model.ffn_dim, num_layers=model.num_layers,
                                          vocab_size=self.vocab_size, repeats=ba.repeats, fork_layer=ba.fork_layer)
        else:
            return {}
        return {"model_flops_count": flops}

    # -- evaluation ---------------------------------------------------------------------------------------
    def validate(self, model: nn.Module) -> dict[str, float]:
        """Loss (nats per word), ppl and bits per word on valid (sliding window); every rank scores the split."""
        nll, scored = split_nll(model, self.corpus.valid, self.cfg)
        return word_metrics(nll / scored)


def evaluate_windows(cfg, model_state: dict, args: LMEvalOptions) -> dict[str, float]:
    """Perplexity and bits per word of a Transformer checkpoint on ``args.split`` by sliding window; the result
    also states the window (``eval_context``) and its stride (``eval_stride``).

    Raises:
        ValueError: weights that do not fit the recipe's model (another vocabulary or size).
        ConfigError: the split is too short, or the model cannot be built (see :func:`build_lm_model`).
    """
    corpus = load_lm_corpus(cfg.data)
    check_split_size(corpus, cfg.data, args.split, 1)
    model = build_lm_model(cfg.model, len(corpus.dictionary), pretrained=False)  # the checkpoint's weights below
    try:
        model.load_state_dict(model_state)
    except RuntimeError as err:
        first = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err))
        raise ValueError(f"the checkpoint's weights do not fit model.arch {cfg.model.arch} with the corpus's "
                         f"{len(corpus.dictionary)} words: {first}") from None
    model.to(torch.device(args.device)).eval()
    stream = getattr(corpus, args.split)
    token_nll = torch.full((len(stream),), math.nan, dtype=torch.float64) if args.output else None
    nll, scored = split_nll(model, stream, cfg, token_nll)
    if token_nll is not None:
        write_block_nll(token_nll, args.output)
    metrics = word_metrics(nll / scored)
    print(f"{args.split}: ppl {metrics['ppl']:.2f}, {metrics['bpw']:.4f} bits per word ({scored} words, windows "
          f"of {cfg.data.bptt} every {cfg.data.stride} tokens)")
    return {**metrics, "eval_context": cfg.data.bptt, "eval_stride": cfg.data.stride}


class WindowLMGradients(GradAdapter):
    """Per-sample gradients of the M copies of a text window (``seqba.analyze grad-correlation``) for a
    Transformer LM: a sample is a ``bptt``-token window of the split (no state before it), each copy its own
    training-mode forward (own dropout masks), by a loop of backward passes."""

    def build(self) -> nn.Module:
        self.corpus: Corpus = load_lm_corpus(self.cfg.data)
        return build_lm_model(self.cfg.model, len(self.corpus.dictionary))  # --init: hf_pretrained as training

    def samples(self, split: str, n: int, rng: np.random.Generator) -> Iterator[tuple[None, dict]]:
        if split not in ("train", "valid", "test"):
            raise ValueError(f"--split must be train, valid or test for language modelling, got {split!r}")
        stream, bptt = getattr(self.corpus, split), self.cfg.data.bptt
        if len(stream) < bptt + 2:
            raise ValueError(f"the {split} split has {len(stream)} words, fewer than bptt + 2")
        for p in rng.choice(len(stream) - bptt - 1, size=n, replace=False):
            window = stream[p:p + bptt + 1].to(self.device)
            yield None, {"x": window[:-1], "y": window[1:]}

    def copy_grads(self, s: dict, copies: int) -> dict[str, Tensor]:
        def loss_fn(params, x, y):  # one window (T,), (T,)
            logits = functional_call(self.model, params, (x[None, :],))  # (1, T, V)
            return F.cross_entropy(logits[0].float(), y, reduction="sum")

        self.model.train()
        return per_sample_grads(loss_fn, self.params, s["x"].expand(copies, -1), s["y"].expand(copies, -1),
                                method="loop")
