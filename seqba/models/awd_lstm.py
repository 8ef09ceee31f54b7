"""AWD-LSTM language model (Merity et al. 2018, "Regularizing and Optimizing LSTM Language Models") with BA.

Follows salesforce/awd-lstm-lm (``model.py``, ``weight_drop.py``, ``locked_dropout.py``,
``embed_regularize.py``): an embedding, ``num_layers`` single-layer LSTMs whose hidden-to-hidden matrix is
DropConnect-ed (``wdrop``), variational ("locked") dropout between layers, embedding (word) dropout, and a
decoder tied to the embedding. Defaults are the reference's PTB command used by Hoffer et al. ("Augment your
batch", CVPR 2020, Table 3): 3 layers, hidden 1150, embedding 400, dropout 0.4, dropouth 0.25,
dropouti 0.4, dropoute 0.1, wdrop 0.5, tied weights.

Shape legend: T = time steps (bptt), N = columns of the batch (N = B * M), B = independent text streams,
M = ``repeats`` (BA copies), E = embedding size, H = hidden size of a layer, V = vocabulary size.

Weight drop without the parameter hack
--------------------------------------
The reference deletes ``weight_hh_l0`` from ``nn.LSTM`` and re-registers it as ``weight_hh_l0_raw``, which
breaks on modern PyTorch. :class:`WeightDropLSTM` keeps the ordinary ``nn.LSTM`` parameters
(state-dict keys ``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``) and, per forward,
passes ``F.dropout(weight_hh_l0, wdrop)`` to the fused kernel ``torch._VF.lstm`` (the call ``nn.LSTM.forward``
makes). Gradients flow through the dropout into the raw ``weight_hh_l0``.

Masks and BA (what differs between the M copies of a stream)
-------------------------------------------------------------
Columns are copy-major ("tiled", see :mod:`seqba.data.lm`): columns ``[c*B, (c+1)*B)`` are copy ``c`` of
streams ``0..B-1``. Each column carries its own hidden state across batches.

* Locked dropout (``dropouti``, ``dropouth``, ``dropout``): one mask of shape (1, N, H) per forward, so every
  column -- hence every copy -- has its own mask, shared over time.
* Weight drop (``wdrop``) and embedding dropout (``dropoute``): the reference draws ONE mask per forward for the
  whole batch. So by default (``per_copy_masks=False``, what the paper ran) the M copies of a stream differ
  ONLY through their locked-dropout masks.
* ``per_copy_masks=True``: each copy also gets its own weight-drop and embedding-dropout mask; the model then
  runs each column slice ``[c*B, (c+1)*B)`` separately (M fused LSTM calls per layer), which is slower.

Tiny CPU run::

    model = AWDLSTM(100, emb_size=8, hidden_size=16, num_layers=2)
    hidden = model.init_hidden(6)                      # N = B * M = 3 * 2
    logits, hidden, raw, dropped = model(torch.randint(100, (5, 6)), hidden, repeats=2)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqba.errors import FieldError
from seqba.models.fork import Fork

Hidden = list[tuple[Tensor, Tensor]]


def _check_p(name: str, p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {p!r}")


class LockedDropout(nn.Module):
    """Variational dropout: one Bernoulli mask per column and feature, shared over all time steps.

    Input and output (T, N, H) float. In training the mask has shape (1, N, H), is drawn once per forward and
    scaled by 1 / (1 - p); in eval (or ``p == 0``) the input is returned unchanged. Follows
    ``locked_dropout.py`` of salesforce/awd-lstm-lm (Gal & Ghahramani 2016). Raises ``ValueError`` for p
    outside [0, 1).
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        _check_p("LockedDropout p", p)
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        mask = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1.0 - self.p) / (1.0 - self.p)  # (1, N, H)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


def embedded_dropout(
    embed: nn.Embedding, words: Tensor, dropout: float, scale: Tensor | float | None = None
) -> Tensor:
    """Look up ``words`` in ``embed`` after dropping whole rows (words) of the embedding matrix.

    One mask of shape (V, 1) is drawn per call, so every occurrence of a dropped word in the batch is zeroed;
    kept rows are scaled by 1 / (1 - dropout). Pass ``dropout=0`` in eval. Follows ``embedded_dropout`` in
    ``embed_regularize.py`` of salesforce/awd-lstm-lm (Gal & Ghahramani 2016, sec. 4.2).

    Args:
        embed: embedding with weight (V, E).
        words: int64 indices of any shape S, e.g. (T, N).
        dropout: probability of dropping a vocabulary row, in [0, 1).
        scale: optional multiplier broadcastable to (V, E), applied after the mask.

    Returns:
        float (*S, E) embeddings.

    Raises:
        ValueError: dropout outside [0, 1).
    """
    _check_p("embedded_dropout dropout", dropout)
    weight = embed.weight  # (V, E)
    if dropout:
        mask = weight.new_empty(weight.size(0), 1).bernoulli_(1.0 - dropout) / (1.0 - dropout)  # (V, 1)
        weight = weight * mask
    if scale is not None:
        weight = weight * scale
    return F.embedding(
        words, weight, embed.padding_idx, embed.max_norm, embed.norm_type, embed.scale_grad_by_freq,
        embed.sparse,
    )


class WeightDropLSTM(nn.LSTM):
    """Single-layer LSTM with DropConnect on the hidden-to-hidden matrix (Wan et al. 2013; Merity et al. 2018).

    Keeps the plain ``nn.LSTM`` parameters; in training each forward uses
    ``F.dropout(weight_hh_l0, wdrop)`` (elementwise mask on the (4H, H) matrix, kept entries scaled by
    1 / (1 - wdrop)) in the fused kernel, replacing ``weight_drop.py``'s ``weight_hh_l0_raw`` hack. Gate order
    and equations are PyTorch's ``nn.LSTM``.

    Input (T, N, I) float, hidden ``(h, c)`` each (1, N, H); returns output (T, N, H) and new ``(h, c)``.

    On cuDNN the dropped matrix is a new tensor each step, so the weights are compacted per call and PyTorch
    may warn "RNN module weights are not part of single contiguous chunk of memory" (the reference pays the
    same copy; it is a few MB per layer).
    """

    def __init__(self, input_size: int, hidden_size: int, wdrop: float = 0.0) -> None:
        super().__init__(input_size, hidden_size, num_layers=1)
        _check_p("wdrop", wdrop)
        self.wdrop = wdrop

    def drop_weight_hh(self) -> Tensor:
        """A freshly dropped (4H, H) copy of ``weight_hh_l0`` (the raw weight itself in eval or when wdrop=0)."""
        return F.dropout(self.weight_hh_l0, self.wdrop, self.training) if self.wdrop else self.weight_hh_l0

    def forward(  # type: ignore[override]
        self, input: Tensor, hx: tuple[Tensor, Tensor], weight_hh: Tensor | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Run the LSTM; ``weight_hh`` (4H, H) replaces the drawn dropped matrix when given (used by tests)."""
        if weight_hh is None:
            weight_hh = self.drop_weight_hh()
        weights = [self.weight_ih_l0, weight_hh, self.bias_ih_l0, self.bias_hh_l0]
        # Same fused call as nn.LSTM.forward: (input, hx, weights, has_biases, num_layers, dropout, train,
        # bidirectional, batch_first).
        output, h, c = torch._VF.lstm(input, hx, weights, True, 1, 0.0, self.training, False, False)
        return output, (h, c)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, wdrop={self.wdrop}"


@dataclass
class AWDLSTMConfig:
    """AWD-LSTM hyper-parameters; defaults are the reference's PTB command (salesforce/awd-lstm-lm ``main.py``
    flags in brackets). A recipe's ``model:`` section for language modelling.

    Attributes:
        emb_size: E [--emsize].
        hidden_size: H of the inner layers [--nhid].
        num_layers: number of LSTM layers [--nlayers].
        dropout: locked dropout on the last layer's output [--dropout].
        dropouth: locked dropout between LSTM layers [--dropouth].
        dropouti: locked dropout on the embedded input [--dropouti].
        dropoute: embedding (word) dropout [--dropoute].
        wdrop: DropConnect on every layer's ``weight_hh_l0`` [--wdrop].
        tie_weights: share the embedding and decoder matrices (Press & Wolf 2017).
        per_copy_masks: with ``repeats > 1`` in training, draw separate weight-drop and embedding-dropout masks
            for each BA copy (column slice); see the module docstring.
    """

    emb_size: int = 400
    hidden_size: int = 1150
    num_layers: int = 3
    dropout: float = 0.4
    dropouth: float = 0.25
    dropouti: float = 0.4
    dropoute: float = 0.1
    wdrop: float = 0.5
    tie_weights: bool = True
    per_copy_masks: bool = False

    def __post_init__(self) -> None:
        for name in ("emb_size", "hidden_size", "num_layers"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be >= 1, got {getattr(self, name)!r}")
        for name in ("dropout", "dropouth", "dropouti", "dropoute", "wdrop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise FieldError(name, f"must be in [0, 1), got {getattr(self, name)!r}")


class AWDLSTM(nn.Module):
    """AWD-LSTM language model with optional per-copy masks for Batch Augmentation.

    Layer sizes: layer 0 reads E; layers 0..L-2 have ``hidden_size`` units; the last layer has ``emb_size``
    units when ``tie_weights`` (decoder weight is the embedding matrix, Press & Wolf 2017), else
    ``hidden_size``. Init as ``RNNModel.init_weights`` of salesforce/awd-lstm-lm: embedding (and untied
    decoder) uniform(-0.1, 0.1), decoder bias 0, LSTMs PyTorch default uniform(-1/sqrt(H), 1/sqrt(H)).

    Args:
        vocab_size: V.
        config: hyper-parameters (:class:`AWDLSTMConfig`); ``None`` builds one from ``fields``
            (``AWDLSTM(V, emb_size=16)``).

    Raises:
        ValueError: a non-positive ``vocab_size``; :class:`~seqba.errors.FieldError` (a ``ValueError``) for
            non-positive sizes or dropout probabilities outside [0, 1).
    """

    def __init__(self, vocab_size: int, config: AWDLSTMConfig | None = None, **fields) -> None:
        super().__init__()
        if config is not None and fields:
            raise TypeError("give an AWDLSTMConfig or keyword fields, not both")
        cfg = config if config is not None else AWDLSTMConfig(**fields)
        if vocab_size < 1:
            raise ValueError(f"AWDLSTM vocab_size must be >= 1, got {vocab_size!r}")
        self.config = cfg
        self.dropoute = cfg.dropoute
        self.per_copy_masks = cfg.per_copy_masks
        self.encoder = nn.Embedding(vocab_size, cfg.emb_size)
        last = cfg.emb_size if cfg.tie_weights else cfg.hidden_size
        sizes = [cfg.emb_size] + [cfg.hidden_size] * (cfg.num_layers - 1) + [last]
        self.rnns = nn.ModuleList(
            WeightDropLSTM(sizes[i], sizes[i + 1], cfg.wdrop) for i in range(cfg.num_layers)
        )
        self.lockdrop_i = LockedDropout(cfg.dropouti)
        self.lockdrop_h = LockedDropout(cfg.dropouth)
        self.lockdrop_o = LockedDropout(cfg.dropout)
        self.decoder = nn.Linear(last, vocab_size)
        if cfg.tie_weights:
            self.decoder.weight = self.encoder.weight
        self.init_weights()

    def init_weights(self) -> None:
        """Embedding and decoder weight uniform(-0.1, 0.1), decoder bias 0 (the reference's init)."""
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def init_hidden(self, num_columns: int, fork: Fork | None = None) -> Hidden:
        """Zero states: a list with one ``(h, c)`` per layer, each (1, N, H_layer), on the model's device/dtype.

        With a ``fork`` at layer k, ``num_columns`` is B (distinct streams): layers below k get B columns, the
        layers from k on M·B (:meth:`forward` with the same fork).
        """
        w = self.encoder.weight

        def columns(i: int) -> int:
            return num_columns * fork.repeats if fork is not None and i >= fork.layer else num_columns

        return [(w.new_zeros(1, columns(i), rnn.hidden_size), w.new_zeros(1, columns(i), rnn.hidden_size))
                for i, rnn in enumerate(self.rnns)]

    def _copies(self, repeats: int) -> int:
        """Number of independent weight-drop / embedding-dropout masks for this forward."""
        return repeats if (self.per_copy_masks and self.training) else 1

    def _embed(self, input: Tensor, copies: int) -> Tensor:
        p = self.dropoute if self.training else 0.0
        if copies == 1:
            return embedded_dropout(self.encoder, input, p)
        return torch.cat([embedded_dropout(self.encoder, w, p) for w in input.chunk(copies, 1)], dim=1)

    @staticmethod
    def _run_layer(
        rnn: WeightDropLSTM, x: Tensor, hx: tuple[Tensor, Tensor], copies: int
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if copies == 1:
            return rnn(x, hx)
        outs, hs, cs = [], [], []
        for xs, h, c in zip(x.chunk(copies, 1), hx[0].chunk(copies, 1), hx[1].chunk(copies, 1)):
            out, (h, c) = rnn(xs, (h, c))  # own weight-drop mask for this copy's columns
            outs.append(out)
            hs.append(h)
            cs.append(c)
        return torch.cat(outs, 1), (torch.cat(hs, 1), torch.cat(cs, 1))

    def _check_inputs(self, input: Tensor, hidden: Hidden, repeats: int, fork: Fork | None) -> None:
        if input.dim() != 2 or input.dtype != torch.long:
            raise ValueError(f"AWDLSTM input must be (T, N) int64, got {tuple(input.shape)} {input.dtype}")
        n = input.size(1)
        if repeats < 1 or n % repeats:
            raise ValueError(f"AWDLSTM repeats={repeats!r} must be >= 1 and divide the N={n} columns")
        if fork is not None and (repeats != 1 or fork.layer > len(self.rnns)):
            raise ValueError(f"AWDLSTM fork at layer {fork.layer} with repeats={repeats}: a fork takes the B "
                             f"distinct columns (repeats=1) and a layer in 1..{len(self.rnns)}")
        if fork is not None and self.per_copy_masks and fork.layout != "tiled":
            raise ValueError("AWDLSTM per_copy_masks slices copies as column blocks: a fork needs layout 'tiled'")
        if len(hidden) != len(self.rnns):
            raise ValueError(f"AWDLSTM hidden has {len(hidden)} layers, model has {len(self.rnns)}")
        for i, ((h, c), rnn) in enumerate(zip(hidden, self.rnns)):
            want = (1, n * fork.repeats if fork is not None and i >= fork.layer else n, rnn.hidden_size)
            if tuple(h.shape) != want or tuple(c.shape) != want:
                raise ValueError(
                    f"AWDLSTM hidden[{i}] must be two {want} tensors, got {tuple(h.shape)} and {tuple(c.shape)}"
                )

    def forward(
        self, input: Tensor, hidden: Hidden, repeats: int = 1, fork: Fork | None = None
    ) -> tuple[Tensor, Hidden, list[Tensor], list[Tensor]]:
        """Run the language model on one BPTT window.

        Args:
            input: (T, N) int64 token ids, N = B * M columns in copy-major layout (N = B with a ``fork``).
            hidden: per-layer ``(h, c)``, each (1, N, H_layer) (from :meth:`init_hidden` or the previous call;
                detach it between windows with :func:`detach_hidden`).
            repeats: M, the number of BA copies among the N columns. Only changes the computation when
                ``per_copy_masks`` is set and the model is training.
            fork: BA's copies made inside the model (:class:`seqba.models.fork.Fork`, layer k in 1..num_layers):
                the embedding and the first k LSTM layers run on the B columns, layer k's output is repeated
                to M·B columns (``fork.layout``, along dim 1) before its locked dropout, and everything above
                runs per copy. ``repeats`` must then be 1 (the copies are the fork's).

        Returns:
            ``(logits, new_hidden, raw_outputs, dropped_outputs)``: logits (T, N, V) float (N = M·B with a
            fork); new_hidden like ``hidden``; raw_outputs[l] (T, N, H_l) the LSTM outputs before locked dropout
            (TAR uses the last, beta=1; a fork's layer is given repeated); dropped_outputs[l] the same after
            locked dropout (AR uses the last, alpha=2), as ``RNNModel.forward(return_h=True)`` of the reference.

        Raises:
            ValueError: wrong input shape/dtype, repeats not dividing N, or hidden of the wrong shape.
        """
        self._check_inputs(input, hidden, repeats, fork)
        copies = self._copies(fork.repeats if fork is not None else repeats)
        shared = 0 if fork is None else fork.layer  # layers run once per stream
        x = self.lockdrop_i(self._embed(input, 1 if shared else copies))  # (T, N, E)
        new_hidden: Hidden = []
        raw_outputs: list[Tensor] = []
        dropped_outputs: list[Tensor] = []
        last = len(self.rnns) - 1
        for i, rnn in enumerate(self.rnns):
            raw, hx = self._run_layer(rnn, x, hidden[i], 1 if i < shared else copies)  # (T, N, H_i)
            if i == shared - 1:  # (T, B, H_i) -> (T, M·B, H_i): the copies start here
                raw = fork.copy(raw, dim=1)
            new_hidden.append(hx)
            raw_outputs.append(raw)
            x = self.lockdrop_o(raw) if i == last else self.lockdrop_h(raw)
            dropped_outputs.append(x)
        logits = self.decoder(x)  # (T, N, V)
        return logits, new_hidden, raw_outputs, dropped_outputs


def detach_hidden(hidden: Hidden) -> Hidden:
    """Detach every state tensor from its graph (``repackage_hidden`` in the reference's ``utils.py``)."""
    return [(h.detach(), c.detach()) for h, c in hidden]
