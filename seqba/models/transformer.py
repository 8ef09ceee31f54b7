"""Transformer encoder-decoder for translation (Vaswani et al., 2017, "Attention Is All You Need").

Matches fairseq's ``transformer_wmt_en_de`` (Transformer-base) with ``--share-all-embeddings``:

* token embeddings scaled by sqrt(D), plus fairseq's sinusoidal positions (padding aware: pad tokens get
  position ``pad_idx`` whose vector is zero; real tokens count from ``pad_idx + 1``);
* post-norm residual blocks by default (``x = LN(x + dropout(f(x)))``); ``normalize_before=True`` gives
  pre-norm blocks (``x = x + dropout(f(LN(x)))``) and a final LayerNorm after each stack, as fairseq;
* the output projection is tied to the decoder input embedding; ``share_all_embeddings`` also ties the
  encoder's (one table for all three);
* Xavier-uniform linear layers (q/k/v with gain 1/sqrt(2), as fairseq's ``MultiheadAttention``), embeddings
  N(0, D^-0.5) with the pad row zero.

Attention runs through ``F.scaled_dot_product_attention`` (``attention``: in float32 on the CPU for bf16/fp16
inputs); dropout is ``seqba.models.dropout.Dropout``. Incremental decoding keeps a ``DecoderCache``:
cross-attention K/V are computed once from the encoder output, self-attention K/V are appended per step. A beam
cache (``init_cache(beam_size=K)``) keeps the encoder side once per sentence: the K beams of a sentence are its
K queries against one copy of the source keys (no K-fold copy of the encoder output or of its K/V).

Shape notation: B = batch (rows: sentences, or sentences x beams), S = source length, T = target length,
D = d_model, H = heads, Dh = D / H, F = ffn_dim, V = vocab. Tokens are int64, pad = ``pad_idx``.

Tiny CPU run::

    model = Transformer(100, TransformerConfig(d_model=16, ffn_dim=32, num_heads=2, encoder_layers=1,
                                               decoder_layers=1))
    logits = model(src_tokens, src_lengths, prev_output_tokens)  # (B, T, V)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from seqba.errors import FieldError
from seqba.models.dropout import Dropout
from seqba.models.fork import Fork

__all__ = ["Transformer", "TransformerConfig", "EncoderOut", "DecoderCache", "KVCache", "sinusoidal_table"]


class EncoderOut(NamedTuple):
    """Encoder output. ``out``: (B, S, D) float; ``padding_mask``: (B, S) bool, True at pad."""

    out: Tensor
    padding_mask: Tensor


@dataclass
class KVCache:
    """Keys and values of one attention layer, each (B, H, L, Dh); ``None`` until first filled."""

    k: Tensor | None = None
    v: Tensor | None = None


@dataclass
class DecoderCache:
    """Incremental-decoding state of a ``Transformer`` decoder, from ``Transformer.init_cache()``.

    ``self_attn[i]`` grows by one position per decoded token; ``cross_attn[i]`` and ``cross_mask`` (the
    SDPA mask over source keys, (B / beam, 1, 1, S) bool, True = attend) are filled on the first ``decode`` call.
    ``length`` counts tokens decoded so far (it fixes the positions of the next tokens). ``beam``: decoder rows
    per sentence; rows ``s * beam .. s * beam + beam - 1`` share sentence s's encoder output and cross K/V.
    """

    self_attn: list[KVCache]
    cross_attn: list[KVCache]
    cross_mask: Tensor | None = None
    length: int = 0
    beam: int = 1


def sinusoidal_table(num_embeddings: int, dim: int, pad_idx: int) -> Tensor:
    """fairseq's ``SinusoidalPositionalEmbedding.get_embedding``: (num_embeddings, dim) float32.

    Row p = [sin(p * w_0..w_{h-1}), cos(p * w_0..w_{h-1})] with h = dim // 2, w_i = 10000^(-i / (h - 1));
    a zero column is appended when dim is odd; row ``pad_idx`` is zero.
    """
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float) * -(math.log(10000.0) / (half - 1)))
    angles = torch.arange(num_embeddings, dtype=torch.float)[:, None] * freqs[None, :]
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2 == 1:
        table = torch.cat([table, torch.zeros(num_embeddings, 1)], dim=1)
    table[pad_idx] = 0
    return table


def _key_mask(padding_mask: Tensor) -> Tensor:
    """(B, S) bool True=pad -> SDPA mask (B, 1, 1, S) bool True=attend.

    A row that is all padding would give NaN (softmax over nothing); it attends to all its (pad) keys instead.
    """
    all_pad = padding_mask.all(dim=1, keepdim=True)
    return (~padding_mask | all_pad)[:, None, None, :]


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float, is_causal: bool) -> Tensor:
    """``F.scaled_dot_product_attention`` on (B, H, L, Dh) queries and (B, H, S, Dh) keys/values -> (B, H, L, Dh).

    On the CPU, bf16/fp16 inputs are attended in float32 and the output cast back: PyTorch's CPU flash-attention
    kernel in bf16 is several times slower than in float32 (forward + backward, measured by
    ``benchmarks/bench_kernels.py``), and attention is a small share of the step, so float32 costs nothing in
    speed and keeps its softmax exact. On CUDA, SDPA may choose among flash, memory-efficient and math kernels but
    not cuDNN's: cuDNN builds an execution plan per new shape on the host, and a token budget makes every batch a
    new shape (a GPU profile of Transformer-base, ``benchmarks/profile_gpu_step.py``, found those host calls to be
    most of an update's wall time). float32 inputs on the CPU go to SDPA unchanged.
    """
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", enabled=False):  # autocast would cast the float32 inputs back down
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                                 dropout_p=dropout_p, is_causal=is_causal)
        return out.to(q.dtype)
    if q.device.type == "cuda":
        with sdpa_kernel(_CUDA_SDPA):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)


# SDPA kernels allowed on CUDA (the order is PyTorch's own preference among them): everything but cuDNN's
_CUDA_SDPA = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _xavier_linear(in_dim: int, out_dim: int) -> nn.Linear:
    layer = nn.Linear(in_dim, out_dim)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class Attention(nn.Module):
    """Multi-head attention (self or encoder-decoder), as fairseq's ``MultiheadAttention``.

    Self-attention projects q, k, v with one fused (3D, D) matrix, cross-attention q with (D, D) and k, v
    with one fused (2D, D) matrix; each (D, D) block is Xavier-uniform with gain 1/sqrt(2), as fairseq.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float, *, cross: bool):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"Attention: d_model={d_model} is not divisible by num_heads={num_heads}")
        self.num_heads, self.dropout, self.cross = num_heads, dropout, cross
        if cross:
            self.q_proj = nn.Linear(d_model, d_model)
            self.kv_proj = nn.Linear(d_model, 2 * d_model)
            blocks = [self.q_proj.weight, *self.kv_proj.weight.chunk(2)]
        else:
            self.qkv_proj = nn.Linear(d_model, 3 * d_model)
            blocks = list(self.qkv_proj.weight.chunk(3))
        with torch.no_grad():
            for block in blocks:  # chunk() gives views: init in place, block by block
                nn.init.xavier_uniform_(block, gain=1 / math.sqrt(2))
        self.out_proj = _xavier_linear(d_model, d_model)

    def _heads(self, x: Tensor) -> Tensor:  # (B, L, D) -> (B, H, L, Dh)
        b, length, d = x.shape
        return x.view(b, length, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        *,
        memory: Tensor | None = None,
        mask: Tensor | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
        beam: int = 1,
    ) -> Tensor:
        """x: (B, L, D) queries -> (B, L, D).

        Self-attention: keys are x, appended to ``cache`` when given. Cross-attention: keys are ``memory``
        (B / beam, S, D), projected once and kept in ``cache`` when given; with ``beam`` K > 1 the K rows of a
        sentence attend to its one copy as K * L queries. ``mask``: SDPA bool mask, True = attend.
        """
        if self.cross:
            q = self._heads(self.q_proj(x))  # (B, H, L, Dh)
            b, h, length, dh = q.shape
            if beam > 1:  # (n*K, H, L, Dh) -> (n, H, K*L, Dh): a sentence's beams are queries of one row
                q = q.view(b // beam, beam, h, length, dh).transpose(1, 2).reshape(b // beam, h, beam * length, dh)
            if cache is not None and cache.k is not None:
                k, v = cache.k, cache.v
            else:
                k, v = (self._heads(t) for t in self.kv_proj(memory).chunk(2, dim=-1))
                if cache is not None:
                    cache.k, cache.v = k, v
        else:
            q, k, v = (self._heads(t) for t in self.qkv_proj(x).chunk(3, dim=-1))
            if cache is not None:
                if cache.k is not None:
                    k, v = torch.cat([cache.k, k], dim=2), torch.cat([cache.v, v], dim=2)
                cache.k, cache.v = k, v
        dropout_p = self.dropout if self.training else 0.0
        out = attention(q, k, v, mask, dropout_p, is_causal)
        if self.cross and beam > 1:  # (n, H, K*L, Dh) -> (n*K, L, D)
            out = out.view(b // beam, h, beam, length, dh).permute(0, 2, 3, 1, 4).reshape(b, length, h * dh)
            return self.out_proj(out)
        b, _, length, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, length, -1))  # (B, L, D)


class FeedForward(nn.Module):
    """Position-wise FFN: fc2(dropout(relu(fc1(x)))), (B, L, D) -> (B, L, D)."""

    def __init__(self, d_model: int, ffn_dim: int, activation_dropout: float):
        super().__init__()
        self.fc1, self.fc2 = _xavier_linear(d_model, ffn_dim), _xavier_linear(ffn_dim, d_model)
        self.activation_dropout = Dropout(activation_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.activation_dropout(F.relu(self.fc1(x))))


class _Block(nn.Module):
    """Residual wrapper shared by the layers: post-norm LN(x + drop(f(x))) or pre-norm x + drop(f(LN(x)))."""

    def __init__(self, d_model: int, dropout: float, normalize_before: bool):
        super().__init__()
        self.normalize_before = normalize_before
        self.dropout = Dropout(dropout)

    def residual(self, x: Tensor, norm: nn.LayerNorm, fn, **kwargs) -> Tensor:
        y = fn(norm(x) if self.normalize_before else x, **kwargs)
        x = x + self.dropout(y)
        return x if self.normalize_before else norm(x)


class EncoderLayer(_Block):
    def __init__(self, d_model, ffn_dim, num_heads, dropout, attention_dropout, activation_dropout, normalize_before):
        super().__init__(d_model, dropout, normalize_before)
        self.self_attn = Attention(d_model, num_heads, attention_dropout, cross=False)
        self.self_attn_norm = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, ffn_dim, activation_dropout)
        self.ffn_norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x: (B, S, D); mask: (B, 1, 1, S) bool True = attend, or None."""
        x = self.residual(x, self.self_attn_norm, self.self_attn, mask=mask)
        return self.residual(x, self.ffn_norm, self.ffn)


class DecoderLayer(_Block):
    def __init__(self, d_model, ffn_dim, num_heads, dropout, attention_dropout, activation_dropout, normalize_before):
        super().__init__(d_model, dropout, normalize_before)
        self.self_attn = Attention(d_model, num_heads, attention_dropout, cross=False)
        self.self_attn_norm = nn.LayerNorm(d_model)
        self.cross_attn = Attention(d_model, num_heads, attention_dropout, cross=True)
        self.cross_attn_norm = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, ffn_dim, activation_dropout)
        self.ffn_norm = nn.LayerNorm(d_model)

    def forward(self, x, memory, memory_mask, self_mask, is_causal, self_cache=None, cross_cache=None, beam=1):
        """x: (B, T, D); memory: (B / beam, S, D); memory_mask: (B / beam, 1, 1, S) bool True = attend."""
        x = self.residual(x, self.self_attn_norm, self.self_attn, mask=self_mask, is_causal=is_causal, cache=self_cache)
        x = self.residual(x, self.cross_attn_norm, self.cross_attn, memory=memory, mask=memory_mask, cache=cross_cache,
                          beam=beam)
        return self.residual(x, self.ffn_norm, self.ffn)


@dataclass
class TransformerConfig:
    """Transformer hyper-parameters; defaults are Transformer-base (Vaswani et al. 2017; fairseq
    ``transformer_wmt_en_de``). A recipe's ``model:`` section for translation.

    Attributes:
        d_model: D, model width.
        ffn_dim: F, feed-forward inner width.
        num_heads: H; must divide ``d_model``.
        encoder_layers, decoder_layers: block counts.
        dropout: on embeddings and every residual branch (BA's copies differ by these masks).
        attention_dropout: on attention weights.
        activation_dropout: after the feed-forward activation.
        normalize_before: pre-norm blocks (and a final LayerNorm per stack) instead of post-norm.
        share_all_embeddings: one table for encoder input, decoder input and output projection.
        max_positions: longest sequence (tokens, eos included) the positional table covers.
    """

    d_model: int = 512
    ffn_dim: int = 2048
    num_heads: int = 8
    encoder_layers: int = 6
    decoder_layers: int = 6
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    normalize_before: bool = False
    share_all_embeddings: bool = True
    max_positions: int = 1024

    def __post_init__(self) -> None:
        for name in ("d_model", "ffn_dim", "num_heads", "encoder_layers", "decoder_layers", "max_positions"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.num_heads:
            raise FieldError("num_heads", f"must divide d_model={self.d_model}, got {self.num_heads}")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise FieldError(name, f"must be in [0, 1), got {getattr(self, name)}")


class Transformer(nn.Module):
    """Transformer-base encoder-decoder (fairseq ``transformer_wmt_en_de``); see the module docstring.

    Args:
        vocab_size: V, the joint vocabulary.
        config: hyper-parameters; ``None`` builds one from ``fields`` (``Transformer(V, d_model=16)``).
        pad_idx: id of the padding token.

    With vocab_size=32000 and the defaults it has 60.5M parameters (shared embeddings).
    Raises ValueError for a sequence longer than ``max_positions`` tokens.
    """

    def __init__(self, vocab_size: int, config: TransformerConfig | None = None, *, pad_idx: int = 0, **fields):
        super().__init__()
        if config is not None and fields:
            raise TypeError("give a TransformerConfig or keyword fields, not both")
        cfg = config if config is not None else TransformerConfig(**fields)
        self.config = cfg
        d_model, max_positions = cfg.d_model, cfg.max_positions
        self.pad_idx, self.max_positions, self.d_model = pad_idx, max_positions, d_model
        self.embed_scale = math.sqrt(d_model)
        self.decoder_embed = self._embedding(vocab_size, d_model, pad_idx)
        if cfg.share_all_embeddings:
            self.encoder_embed = self.decoder_embed
        else:
            self.encoder_embed = self._embedding(vocab_size, d_model, pad_idx)
        # positions run from pad_idx + 1 to pad_idx + max_positions; not saved in the state dict
        table = sinusoidal_table(max_positions + pad_idx + 1, d_model, pad_idx)
        self.register_buffer("positions", table, persistent=False)
        self.dropout = Dropout(cfg.dropout)
        args = (d_model, cfg.ffn_dim, cfg.num_heads, cfg.dropout, cfg.attention_dropout, cfg.activation_dropout,
                cfg.normalize_before)
        self.encoder_layers = nn.ModuleList(EncoderLayer(*args) for _ in range(cfg.encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(*args) for _ in range(cfg.decoder_layers))
        self.encoder_norm = nn.LayerNorm(d_model) if cfg.normalize_before else nn.Identity()
        self.decoder_norm = nn.LayerNorm(d_model) if cfg.normalize_before else nn.Identity()

    @staticmethod
    def _embedding(vocab_size: int, d_model: int, pad_idx: int) -> nn.Embedding:
        emb = nn.Embedding(vocab_size, d_model, padding_idx=pad_idx)
        nn.init.normal_(emb.weight, mean=0.0, std=d_model**-0.5)
        with torch.no_grad():
            emb.weight[pad_idx].zero_()
        return emb

    def _embed(self, tokens: Tensor, table: nn.Embedding, offset: int | None = None) -> Tensor:
        """tokens (B, L) -> dropout(sqrt(D) * E[tokens] + P[positions]) (B, L, D).

        Without ``offset``: positions = pad + cumsum(non-pad), pad tokens at pad (fairseq ``make_positions``).
        With ``offset`` (incremental decoding, no padding): positions pad + offset + 1 .. pad + offset + L.
        """
        length = tokens.size(1) + (offset or 0)
        if length > self.max_positions:
            raise ValueError(f"Transformer: sequence of {length} tokens exceeds max_positions={self.max_positions}")
        if offset is None:
            not_pad = tokens.ne(self.pad_idx)
            positions = torch.cumsum(not_pad, dim=1) * not_pad + self.pad_idx
            pos = self.positions[positions]  # (B, L, D)
        else:
            start = self.pad_idx + offset + 1
            pos = self.positions[start : start + tokens.size(1)][None]  # (1, L, D)
        x = self.embed_scale * table(tokens) + pos.to(table.weight.dtype)
        return self.dropout(x)

    def encode(self, src_tokens: Tensor, src_lengths: Tensor | None = None, fork: Fork | None = None) -> EncoderOut:
        """src_tokens (B, S) int64, padded with pad_idx -> EncoderOut(out (B, S, D), padding_mask (B, S)).

        ``src_lengths`` (B,) is accepted for interface compatibility; padding is read from the tokens. With a
        ``fork`` at layer k < ``encoder_layers``, the first k layers run on the B rows and the rest on the M·B
        copies (``fork.copy``): the output has M·B rows. A fork at or above ``encoder_layers`` leaves B rows.
        """
        padding_mask = src_tokens.eq(self.pad_idx)  # (B, S)
        x = self._embed(src_tokens, self.encoder_embed)
        mask = _key_mask(padding_mask)
        for i, layer in enumerate(self.encoder_layers):
            if fork is not None and i == fork.layer:  # (B, S, D) -> (M·B, S, D)
                x, padding_mask = fork.copy(x), fork.copy(padding_mask)
                mask = _key_mask(padding_mask)
            x = layer(x, mask)
        return EncoderOut(self.encoder_norm(x), padding_mask)

    def init_cache(self, beam_size: int = 1) -> DecoderCache:
        """An empty ``DecoderCache`` for ``decode``; one per batch of sequences decoded together.

        With ``beam_size`` K > 1, ``decode`` takes K decoder rows per sentence (sentence-major) but the encoder
        output of each sentence once: ``encoder_out`` with B / K rows.
        """
        if beam_size < 1:
            raise ValueError(f"init_cache: beam_size must be >= 1, got {beam_size}")
        n = len(self.decoder_layers)
        return DecoderCache([KVCache() for _ in range(n)], [KVCache() for _ in range(n)], beam=beam_size)

    def decode(self, prev_output_tokens: Tensor, encoder_out: EncoderOut, cache: DecoderCache | None = None) -> Tensor:
        """Decoder logits (B, T, V), pre-softmax, in the model dtype.

        Without ``cache``: ``prev_output_tokens`` (B, T) = [bos, t1..] right-padded, causal self-attention.
        With ``cache``: only the newest tokens (B, n), usually n = 1, without padding; they continue the
        ``cache.length`` tokens already decoded, and the cache is updated in place. ``encoder_out`` has B rows,
        or B / K rows for a beam cache (``init_cache(beam_size=K)``).
        """
        offset = None if cache is None else cache.length
        x = self._embed(prev_output_tokens, self.decoder_embed, offset)
        n = prev_output_tokens.size(1)
        if cache is None:
            memory_mask = _key_mask(encoder_out.padding_mask)
            # causal for any T (a single query sees its one key either way); a plain bool, not `n > 1`, which
            # torch.compile(dynamic=True) turns into a SymBool that SDPA rejects (a graph break per decoder)
            self_mask, is_causal = None, True
        else:
            if cache.cross_mask is None:
                cache.cross_mask = _key_mask(encoder_out.padding_mask)
            memory_mask = cache.cross_mask
            past = cache.length
            # one new token sees everything cached; n new tokens see the past and their own causal prefix
            self_mask = None if n == 1 else torch.ones(n, past + n, dtype=torch.bool, device=x.device).tril(past)
            is_causal = False
            cache.length += n
        for i, layer in enumerate(self.decoder_layers):
            self_cache = None if cache is None else cache.self_attn[i]
            cross_cache = None if cache is None else cache.cross_attn[i]
            x = layer(x, encoder_out.out, memory_mask, self_mask, is_causal, self_cache, cross_cache,
                      1 if cache is None else cache.beam)
        x = self.decoder_norm(x)
        return F.linear(x, self.decoder_embed.weight)  # (B, T, V), tied output projection

    def forward(self, src_tokens: Tensor, src_lengths: Tensor, prev_output_tokens: Tensor,
                fork: Fork | None = None) -> Tensor:
        """Teacher-forced logits (B, T, V) for src_tokens (B, S) and prev_output_tokens (B, T).

        With a ``fork`` (:class:`seqba.models.fork.Fork`, layer k counted over the encoder's layers, then the
        decoder's), the inputs hold B distinct samples and the logits are (M·B, T, V), rows in ``fork.layout``: the
        first k layers run once per sample, the layers above once per copy. Raises ``ValueError`` for k >=
        ``encoder_layers + decoder_layers`` (no layer, hence no dropout mask, would tell the copies apart).
        """
        if fork is None:
            return self.decode(prev_output_tokens, self.encode(src_tokens, src_lengths))
        layers = len(self.encoder_layers) + len(self.decoder_layers)
        if fork.layer >= layers:
            raise ValueError(f"Transformer: fork layer {fork.layer} leaves no layer to tell the copies apart "
                             f"(the model has {layers}); use at most {layers - 1}")
        return self._decode_forked(prev_output_tokens, self.encode(src_tokens, src_lengths, fork), fork)

    def _decode_forked(self, prev_output_tokens: Tensor, encoder_out: EncoderOut, fork: Fork) -> Tensor:
        """Teacher-forced decoder of a forked batch: prev_output_tokens (B, T); encoder_out with M·B rows (fork
        inside the encoder) or B rows (fork at or above its top) -> logits (M·B, T, V).

        The decoder's first ``fork.layer - encoder_layers`` layers run on the B rows; the copies' cross-attention
        reads the B rows of encoder output once per sample when the layout keeps copies adjacent (``beam = M``,
        as beam search does), else a repeated copy.
        """
        shared = fork.layer - len(self.encoder_layers)  # decoder layers run once per sample (<= 0: none)
        memory, padding_mask = encoder_out
        if shared < 0:  # the encoder made the copies: an ordinary decoder over M·B rows
            return self.decode(fork.copy(prev_output_tokens), encoder_out)
        x = self._embed(prev_output_tokens if shared else fork.copy(prev_output_tokens), self.decoder_embed)
        memory_mask, beam = _key_mask(padding_mask), 1
        for i, layer in enumerate(self.decoder_layers):
            if i == shared:  # (B, T, D) -> (M·B, T, D); at i = 0 the embedding was repeated above
                if i:
                    x = fork.copy(x)
                if fork.shares_rows:  # M adjacent rows per sample read its one row of memory
                    beam = fork.repeats
                else:
                    memory, memory_mask = fork.copy(memory), fork.copy(memory_mask)
            x = layer(x, memory, memory_mask, None, True, beam=beam)
        x = self.decoder_norm(x)
        return F.linear(x, self.decoder_embed.weight)  # (M·B, T, V), tied output projection

    @staticmethod
    def reorder_encoder_out(encoder_out: EncoderOut, new_order: Tensor) -> EncoderOut:
        """Rows ``new_order`` (N,) int64 of the encoder output (for beam search): (B, ...) -> (N, ...)."""
        out, padding_mask = encoder_out
        return EncoderOut(out.index_select(0, new_order), padding_mask.index_select(0, new_order))

    @staticmethod
    def reorder_cache(cache: DecoderCache, new_order: Tensor, *, cross_attention: bool = True) -> None:
        """Keep rows ``new_order`` (N,) int64 of every cached tensor, in place (for beam search).

        ``cross_attention=False`` leaves the encoder-side K/V alone: a cheap shortcut that is valid when
        ``new_order`` only permutes rows holding the same source sentence (beams of one sentence). A beam cache
        keeps one encoder-side row per sentence: it keeps sentences ``new_order[::K] // K``, so ``new_order``
        must keep each sentence's K rows together, as beam search's orders do.
        """
        for kv in cache.self_attn:
            if kv.k is not None:
                kv.k, kv.v = kv.k.index_select(0, new_order), kv.v.index_select(0, new_order)
        if not cross_attention:
            return
        sentences = new_order if cache.beam == 1 else new_order.view(-1, cache.beam)[:, 0] // cache.beam
        for kv in cache.cross_attn:
            if kv.k is not None:
                kv.k, kv.v = kv.k.index_select(0, sentences), kv.v.index_select(0, sentences)
        if cache.cross_mask is not None:
            cache.cross_mask = cache.cross_mask.index_select(0, sentences)
