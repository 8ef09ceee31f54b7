"""Model FLOPs of a training step, and the peak matmul FLOP/s of the machine, for "MFU on this CPU".

FLOPs are counted the standard way (Kaplan et al. 2020; PaLM, Chowdhery et al. 2022, appendix B; nanoGPT's
``estimate_mfu``): a training step costs 6 FLOPs per parameter per token that the parameter's matmul sees
(2 forward, 4 backward), plus attention's two matmuls, 12 · d_model FLOPs per query per key per layer (forward +
backward; PaLM's 6 · n_layer · 2 · d_model · T per token). Causal attention is counted over the full square, as
those references do. Biases, LayerNorms, softmax, dropout and the optimizer are left out; embedding lookups are
not matmuls and cost nothing here, but the tied output projection (V · d_model per target token) counts.

For the encoder-decoder Transformer (:class:`seqba.models.transformer.Transformer`), with d = d_model,
f = ffn_dim, a sentence pair of s source and t target tokens::

    encoder layer   6 · (4d² + 2df) · s  +  12 · d · s²
    decoder layer   6 · (4d² + 2df) · t  +  6 · 2d² · t  (cross q, out)  +  6 · 2d² · s  (cross k, v)
                    +  12 · d · t²  +  12 · d · t · s
    output head     6 · V · d · t

With BA's M copies each copy is computed, so a step of B samples costs M times one of B rows; with a fork at layer
k (:class:`seqba.models.fork.Fork`) the layers below k cost once per sample, the layers above and the head M
times, and the cross-attention keys and values of copies made at or above the encoder's top are computed once per
sample when the copies are adjacent (they read one memory row).

For the AWD-LSTM (:class:`seqba.models.awd_lstm.AWDLSTM`), a layer of input size i and hidden size h costs its
two gate matmuls, 6 · 4h(i + h) FLOPs per token (:func:`awd_lstm_step_flops`); the tied (or untied) decoder
6 · V · d_last per token. Gate nonlinearities, DropConnect and locked dropout are elementwise and left out.

Convolutional networks (the image task's ResNets) are measured rather than derived:
:func:`per_example_training_flops` counts one example's forward with ``torch.utils.flop_counter.FlopCounterMode``
(convolutions and linears: 2 FLOPs per multiply-accumulate) and multiplies by 3 (backward = 2 × forward: the
gradients of the inputs and of the weights), the same convention as above.

The peak: :func:`matmul_peak` times ``torch.matmul`` on the given shapes (the step's own GEMMs) in the given
dtype and thread count and keeps the fastest; "MFU on this CPU" is the step's model FLOP/s over that measured peak,
not over a vendor figure.
"""
from __future__ import annotations

import time
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["transformer_step_flops", "decoder_lm_step_flops", "causal_lm_step_flops", "awd_lstm_step_flops", "per_example_training_flops",
           "matmul_peak"]


def transformer_step_flops(src_lengths: Sequence[int] | np.ndarray, tgt_lengths: Sequence[int] | np.ndarray, *,
                           d_model: int, ffn_dim: int, encoder_layers: int, decoder_layers: int, vocab_size: int,
                           repeats: int = 1, fork_layer: int = 0, memory_shared: bool = True) -> float:
    """Model FLOPs (forward + backward) of one training step over the given sentence pairs.

    Args:
        src_lengths, tgt_lengths: (B,) tokens of each distinct sample (without padding).
        d_model, ffn_dim, encoder_layers, decoder_layers, vocab_size: the model's sizes.
        repeats: M, copies of each sample.
        fork_layer: k, layers (encoder's, then decoder's) run once per sample; 0: BA at the input.
        memory_shared: with a fork at or above the encoder's top, the copies' cross-attention keys and values come
            from one memory row per sample (adjacent layout) rather than a repeated one.

    Returns:
        FLOPs as a float (about 1e12 for a Transformer-base batch of 4,096 tokens).

    Raises:
        ValueError: lengths of different sizes, ``repeats`` < 1, or ``fork_layer`` outside
            [0, encoder_layers + decoder_layers).
    """
    s = np.asarray(src_lengths, dtype=np.float64)
    t = np.asarray(tgt_lengths, dtype=np.float64)
    if s.shape != t.shape:
        raise ValueError(f"{s.shape} source lengths against {t.shape} target lengths")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if not 0 <= fork_layer < encoder_layers + decoder_layers:
        raise ValueError(f"fork_layer must be in [0, {encoder_layers + decoder_layers}), got {fork_layer}")
    d, f = float(d_model), float(ffn_dim)
    enc_layer = 6 * (4 * d * d + 2 * d * f) * s.sum() + 12 * d * (s * s).sum()
    dec_layer_rows = 6 * (6 * d * d + 2 * d * f) * t.sum() + 12 * d * ((t * t).sum() + (t * s).sum())
    cross_kv = 6 * 2 * d * d * s.sum()
    head = 6 * vocab_size * d * t.sum()
    shared_enc = min(fork_layer, encoder_layers)
    shared_dec = max(fork_layer - encoder_layers, 0)
    kv_once = fork_layer >= encoder_layers and memory_shared
    total = shared_enc * enc_layer + (encoder_layers - shared_enc) * enc_layer * repeats
    total += shared_dec * (dec_layer_rows + cross_kv)
    total += (decoder_layers - shared_dec) * (dec_layer_rows * repeats + cross_kv * (1 if kv_once else repeats))
    return float(total + head * repeats)


def matmul_peak(shapes: Iterable[tuple[int, int, int]], dtype: torch.dtype = torch.float32, threads: int | None = None,
                repeat: int = 5, min_seconds: float = 0.2) -> dict:
    """The fastest ``torch.matmul`` FLOP/s over ``shapes`` on this machine's CPU.

    Args:
        shapes: (m, k, n) GEMMs, (m, k) @ (k, n), e.g. a step's (tokens, d_model) @ (d_model, ffn_dim).
        dtype: ``torch.float32`` or ``torch.bfloat16``.
        threads: ``torch.set_num_threads`` for the timing (restored after); None keeps the current setting.
        repeat: timed rounds per shape (the best is kept: a peak, not a typical figure).
        min_seconds: each round repeats the product until at least this long has passed.

    Returns:
        ``{"flops_per_s": best, "shape": (m, k, n) of the best, "per_shape": {"mxkxn": flops_per_s}, "dtype",
        "threads"}``.

    Raises:
        ValueError: no shapes.
    """
    shapes = list(shapes)
    if not shapes:
        raise ValueError("matmul_peak: no shapes to time")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    per_shape = {}
    try:
        for m, k, n in shapes:
            a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
            torch.matmul(a, b)  # warm-up (oneDNN primitive creation)
            best = 0.0
            for _ in range(repeat):
                calls, start = 0, time.perf_counter()
                while True:
                    torch.matmul(a, b)
                    calls += 1
                    elapsed = time.perf_counter() - start
                    if elapsed >= min_seconds:
                        break
                best = max(best, 2.0 * m * k * n * calls / elapsed)
            per_shape[f"{m}x{k}x{n}"] = best
    finally:
        torch.set_num_threads(before)
    name = max(per_shape, key=per_shape.get)
    return {"flops_per_s": per_shape[name], "shape": tuple(int(v) for v in name.split("x")), "per_shape": per_shape,
            "dtype": str(dtype).removeprefix("torch."), "threads": threads or before}


def causal_lm_step_flops(model: nn.Module, tokens_per_row: int, rows: int, *, repeats: int = 1) -> float:
    """Model FLOPs (forward + backward) of one training step of any causal LM built from a Hugging Face config
    (``model.arch: hf``), counted from the module itself in this module's convention::

        6 · (matmul weights) · T  +  12 · d · T² · layers      per row

    Matmul weights: every 2-D parameter outside the ``nn.Embedding`` modules (``nn.Linear``, GPT-2's ``Conv1D``,
    gated MLPs, grouped-query projections: whatever the architecture has), plus the output projection once
    (``get_output_embeddings()``, tied to the input embedding or not); embedding lookups are free. Attention: d =
    ``config.hidden_size``, layers = ``config.num_hidden_layers``, over the full T x T square as nanoGPT and PaLM
    count it. On a GPT-2 config this equals :func:`decoder_lm_step_flops` of the same sizes.

    Args:
        model: a ``transformers`` causal LM (``PreTrainedModel`` with ``config`` and ``get_output_embeddings``).
        tokens_per_row: T, the window length; rows: B, distinct windows; repeats: M, copies of each (all computed).

    Returns:
        FLOPs as a float.

    Raises:
        ValueError: ``tokens_per_row`` or ``rows`` < 0, or ``repeats`` < 1.
    """
    if tokens_per_row < 0 or rows < 0:
        raise ValueError(f"tokens_per_row and rows must be >= 0, got {tokens_per_row} and {rows}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    lookups = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    weights = {id(p): p for p in model.parameters() if p.dim() == 2 and id(p) not in lookups}
    head = model.get_output_embeddings().weight
    weights[id(head)] = head
    matmul = float(sum(p.numel() for p in weights.values()))
    t, d, layers = float(tokens_per_row), float(model.config.hidden_size), float(model.config.num_hidden_layers)
    return (6 * matmul * t + 12 * d * t * t * layers) * rows * repeats


def decoder_lm_step_flops(tokens_per_row: int, rows: int, *, d_model: int, ffn_dim: int, num_layers: int,
                          vocab_size: int, repeats: int = 1, fork_layer: int = 0) -> float:
    """Model FLOPs (forward + backward) of one training step of a decoder-only LM
    (:class:`seqba.models.transformer_lm.TransformerLM`) over ``rows`` windows of T tokens, in the module's
    convention (6 · parameters · tokens plus attention over the full T x T square)::

        block   6 · (4d² + 2df) · T  +  12 · d · T²      per row
        head    6 · V · d · T                            per row (tied to the embedding; the lookup is free)

    With M copies the blocks from ``fork_layer`` k on and the head run on M·B rows, the first k blocks on B
    (k = 0: BA at the input, everything M times).

    Args:
        tokens_per_row: T, the window length.
        rows: B, distinct windows in the step.
        d_model, ffn_dim, num_layers, vocab_size: the model's sizes.
        repeats: M, copies of each window.
        fork_layer: k, blocks run once per window; 0: BA at the input.

    Returns:
        FLOPs as a float.

    Raises:
        ValueError: ``tokens_per_row`` or ``rows`` < 0, ``repeats`` < 1, or ``fork_layer`` outside
            [0, num_layers).
    """
    if tokens_per_row < 0 or rows < 0:
        raise ValueError(f"tokens_per_row and rows must be >= 0, got {tokens_per_row} and {rows}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if not 0 <= fork_layer < num_layers:
        raise ValueError(f"fork_layer must be in [0, {num_layers}), got {fork_layer}")
    d, f, t = float(d_model), float(ffn_dim), float(tokens_per_row)
    block = (6 * (4 * d * d + 2 * d * f) * t + 12 * d * t * t) * rows
    head = 6 * vocab_size * d * t * rows
    return float(fork_layer * block + (num_layers - fork_layer) * block * repeats + head * repeats)


def awd_lstm_step_flops(tokens_per_row: int, rows: int, *, layer_sizes: Sequence[int], vocab_size: int,
                        repeats: int = 1, fork_layer: int = 0) -> float:
    """Model FLOPs (forward + backward) of one training step of the AWD-LSTM
    (:class:`seqba.models.awd_lstm.AWDLSTM`) over ``rows`` columns of a window of T tokens, in the module's
    convention (6 · matmul parameters · tokens)::

        LSTM layer l   6 · 4h(i + h) · T     per row   (i = layer_sizes[l], h = layer_sizes[l + 1]: the input-to-
                                                        hidden and hidden-to-hidden gate matmuls, 2 forward, 4 back)
        head           6 · V · d_last · T    per row   (d_last = layer_sizes[-1]; tied to the embedding or not)

    With M copies the LSTM layers from ``fork_layer`` k on and the head run on M·B columns, the first k layers
    on B (the AWD-LSTM's fork, ``ba.fork_layer`` in 1..L: k = L shares every LSTM layer and copies only the
    output dropout and the head; k = 0: BA at the input, everything M times). Per-copy masks
    (``model.per_copy_masks``) split the same matmuls into M calls and cost the same.

    Args:
        tokens_per_row: T, the window's length (the drawn one with variable BPTT).
        rows: B, distinct columns (streams) in the step.
        layer_sizes: L + 1 sizes: the embedding size (layer 0's input), then each layer's hidden size
            (``[E, H, ..., H, E]`` with tied weights).
        vocab_size: V.
        repeats: M, copies of each column.
        fork_layer: k, LSTM layers run once per column; 0: BA at the input.

    Returns:
        FLOPs as a float.

    Raises:
        ValueError: ``tokens_per_row`` or ``rows`` < 0, fewer than two ``layer_sizes``, ``repeats`` < 1, or
            ``fork_layer`` outside [0, L].
    """
    if tokens_per_row < 0 or rows < 0:
        raise ValueError(f"tokens_per_row and rows must be >= 0, got {tokens_per_row} and {rows}")
    sizes = [float(v) for v in layer_sizes]
    if len(sizes) < 2:
        raise ValueError(f"layer_sizes needs the input size and at least one layer's, got {list(layer_sizes)}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    layers = len(sizes) - 1
    if not 0 <= fork_layer <= layers:
        raise ValueError(f"fork_layer must be in [0, {layers}], got {fork_layer}")
    per_row = float(tokens_per_row) * rows
    lstm = [6 * 4 * h * (i + h) * per_row for i, h in zip(sizes[:-1], sizes[1:])]
    head = 6 * vocab_size * sizes[-1] * per_row
    return float(sum(lstm[:fork_layer]) + sum(lstm[fork_layer:]) * repeats + head * repeats)


def per_example_training_flops(model: nn.Module, example: Tensor) -> float:
    """Model FLOPs (forward + backward) of training ``model`` on one example, measured: 3 × the FLOPs that
    ``torch.utils.flop_counter.FlopCounterMode`` counts in a forward of ``example`` (the module's convention:
    backward = 2 × forward), divided by the rows of ``example``.

    The forward runs in eval mode under ``torch.no_grad()``, so that it leaves training untouched: no dropout masks
    drawn from the RNG, no BatchNorm (or ghost BatchNorm) running statistics or ``num_batches_tracked`` updated, no
    graph kept. Every submodule's ``training`` flag is restored afterwards, whatever it was. Counts what the counter
    knows (convolutions, matmuls, attention); elementwise work (BN, activations, pooling) is left out, as above.

    Args:
        model: the network, on the device of ``example``.
        example: one batch of n >= 1 inputs of the training shape, e.g. float (1, C, H, W) images.

    Returns:
        FLOPs per example as a float.

    Raises:
        ValueError: an ``example`` with no rows.
    """
    if example.dim() == 0 or example.size(0) < 1:
        raise ValueError(f"example must hold at least one row, got shape {tuple(example.shape)}")
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example)
    finally:
        for m, training in modes:
            m.training = training
    return 3.0 * counter.get_total_flops() / example.size(0)
