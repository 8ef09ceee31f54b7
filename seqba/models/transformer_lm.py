"""GPT-style decoder-only Transformer language model, and sliding-window perplexity over a whole split.

The model follows nanoGPT's ``model.py`` (Karpathy; itself GPT-2, Radford et al. 2019):

* token embeddings plus learned absolute positions (GPT-2), or rotary positions on queries and keys instead
  (RoFormer, Su et al. 2021; the "rotate half" pairing of GPT-NeoX / Llama: dimension i turns with i + Dh/2);
* pre-LayerNorm blocks ``x = x + drop(attn(LN(x)))``, ``x = x + drop(mlp(LN(x)))``, a final LayerNorm;
* causal self-attention through :func:`seqba.models.transformer.attention` (SDPA; float32 on the CPU under bf16);
* a GELU MLP of width F; output projection tied to the token embedding (Press & Wolf 2017);
* dropout (:class:`seqba.models.dropout.Dropout`) on the embedding and on every residual branch, and
  ``attention_dropout`` on the attention weights: BA's copies differ by these masks;
* nanoGPT's init: every Linear and Embedding N(0, 0.02), biases zero, the residual output projections
  (attention's ``out_proj``, the MLP's ``fc2``) N(0, 0.02 / sqrt(2 · num_layers)) (GPT-2 paper, section 2.3).

With a :class:`seqba.models.fork.Fork` at layer k the embedding and the first k blocks run on the B rows, the
blocks above on the M·B copies (``fork.copy``)::

    tokens (B, T) -> embed -> block 0 .. block k-1 -> copy (M·B, T, D) -> block k .. block n-1 -> LN -> head

Shape notation: B = rows (token windows), T = window length, D = d_model, H = heads, Dh = D / H, F = ffn_dim,
V = vocab, L = tokens of a split, M = BA copies. Tokens are int64; there is no padding.

Tiny CPU run::

    model = TransformerLM(100, d_model=16, num_layers=2, num_heads=2, ffn_dim=64, max_positions=32)
    logits = model(torch.randint(0, 100, (4, 32)))  # (4, 32, 100)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqba.errors import FieldError
from seqba.models.dropout import Dropout
from seqba.models.fork import Fork
from seqba.models.transformer import attention

__all__ = ["TransformerLM", "TransformerLMConfig", "rotary_tables", "apply_rotary", "sliding_window_nll"]

POSITIONS = ("learned", "rotary")


@dataclass
class TransformerLMConfig:
    """Decoder-only LM hyper-parameters; defaults are nanoGPT's ``config/train_shakespeare_char.py`` model
    (6 layers, 6 heads, width 384, dropout 0.2, 256 positions). A recipe's ``model:`` section for
    ``model.arch: transformer``.

    Attributes:
        d_model: D, model width.
        num_layers: n, decoder blocks.
        num_heads: H; must divide ``d_model`` (and leave an even Dh with rotary positions).
        ffn_dim: F, MLP inner width (4 · D in GPT-2).
        dropout: on the embedding and every residual branch.
        attention_dropout: on the attention weights.
        max_positions: longest window (tokens) the model accepts; the learned table's size.
        positions: ``"learned"`` (GPT-2's absolute table) or ``"rotary"`` (RoFormer, no table).
        rotary_base: the rotary frequencies' base, theta_i = base^(-2i / Dh).
        bias: biases in the Linears and LayerNorms (GPT-2: True; nanoGPT offers False).
    """

    d_model: int = 384
    num_layers: int = 6
    num_heads: int = 6
    ffn_dim: int = 1536
    dropout: float = 0.2
    attention_dropout: float = 0.0
    max_positions: int = 256
    positions: str = "learned"
    rotary_base: float = 10000.0
    bias: bool = True

    def __post_init__(self) -> None:
        for name in ("d_model", "num_layers", "num_heads", "ffn_dim", "max_positions"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be >= 1, got {getattr(self, name)!r}")
        if self.d_model % self.num_heads:
            raise FieldError("num_heads", f"must divide d_model={self.d_model}, got {self.num_heads}")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise FieldError(name, f"must be in [0, 1), got {getattr(self, name)!r}")
        if self.positions not in POSITIONS:
            raise FieldError("positions", f"must be one of {POSITIONS}, got {self.positions!r}")
        if self.positions == "rotary" and (self.d_model // self.num_heads) % 2:
            raise FieldError("num_heads", f"rotary positions need an even head width d_model / num_heads, got "
                                          f"{self.d_model} / {self.num_heads}")
        if self.rotary_base <= 1.0:
            raise FieldError("rotary_base", f"must be > 1, got {self.rotary_base!r}")


def rotary_tables(max_positions: int, head_dim: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """RoFormer's angles: cos and sin of p · theta_i, each (max_positions, Dh / 2) float32, theta_i =
    base^(-2i / Dh) (Su et al. 2021, eq. 15)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(max_positions, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, T, Dh) queries or keys by position: pair (x_i, x_{i + Dh/2}) turns by angle p · theta_i.

    ``cos``, ``sin``: (T, Dh / 2) rows of :func:`rotary_tables`. The result has x's dtype.
    """
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, (B, T, D) -> (B, T, D): fused qkv projection (3D, D), SDPA with
    ``is_causal``, output projection ``out_proj`` (D, D); rotary positions applied to q and k when given."""

    def __init__(self, cfg: TransformerLMConfig):
        super().__init__()
        self.num_heads, self.dropout = cfg.num_heads, cfg.attention_dropout
        self.qkv_proj = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)

    def forward(self, x: Tensor, rotary: tuple[Tensor, Tensor] | None = None) -> Tensor:
        b, t, d = x.shape
        # (B, T, 3D) -> 3 x (B, H, T, Dh)
        q, k, v = (y.view(b, t, self.num_heads, d // self.num_heads).transpose(1, 2)
                   for y in self.qkv_proj(x).chunk(3, dim=-1))
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        out = attention(q, k, v, None, self.dropout if self.training else 0.0, True)  # (B, H, T, Dh)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))  # (B, T, D)


class Block(nn.Module):
    """Pre-LayerNorm decoder block (GPT-2 / nanoGPT ``Block``), (B, T, D) -> (B, T, D)::

        x = x + drop(attn(LN(x)));  x = x + drop(fc2(gelu(fc1(LN(x)))))
    """

    def __init__(self, cfg: TransformerLMConfig):
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.mlp_norm = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.fc1 = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=cfg.bias)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=cfg.bias)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: Tensor, rotary: tuple[Tensor, Tensor] | None = None) -> Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), rotary))
        return x + self.dropout(self.fc2(F.gelu(self.fc1(self.mlp_norm(x)))))


class TransformerLM(nn.Module):
    """GPT-style decoder-only language model (nanoGPT ``GPT``); see the module docstring.

    Args:
        vocab_size: V.
        config: hyper-parameters (:class:`TransformerLMConfig`); ``None`` builds one from ``fields``
            (``TransformerLM(V, d_model=16)``).

    Attributes:
        num_layers: n, the blocks a ``Fork`` counts (k in 1 .. n - 1).
        vocab_size, max_positions: V and the longest window accepted.

    Raises:
        ValueError: a non-positive ``vocab_size``; :class:`~seqba.errors.FieldError` (a ``ValueError``) for a bad
            field; ``TypeError`` for a config and keyword fields together.
    """

    def __init__(self, vocab_size: int, config: TransformerLMConfig | None = None, **fields) -> None:
        super().__init__()
        if config is not None and fields:
            raise TypeError("give a TransformerLMConfig or keyword fields, not both")
        cfg = config if config is not None else TransformerLMConfig(**fields)
        if vocab_size < 1:
            raise ValueError(f"TransformerLM vocab_size must be >= 1, got {vocab_size!r}")
        self.config, self.vocab_size, self.max_positions = cfg, vocab_size, cfg.max_positions
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        if cfg.positions == "learned":
            self.pos_embed = nn.Embedding(cfg.max_positions, cfg.d_model)
        else:  # rotary angles, recomputed on load (not in the state dict)
            cos, sin = rotary_tables(cfg.max_positions, cfg.d_model // cfg.num_heads, cfg.rotary_base)
            self.register_buffer("rotary_cos", cos, persistent=False)
            self.register_buffer("rotary_sin", sin, persistent=False)
        self.dropout = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.reset_parameters()

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def reset_parameters(self) -> None:
        """nanoGPT's ``_init_weights``: Linear and Embedding weights N(0, 0.02), biases 0, LayerNorms (1, 0); the
        residual projections (``attn.out_proj``, ``fc2``) N(0, 0.02 / sqrt(2 · num_layers)) (GPT-2)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        for block in self.blocks:
            for proj in (block.attn.out_proj, block.fc2):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * self.num_layers))

    def forward(self, tokens: Tensor, fork: Fork | None = None) -> Tensor:
        """tokens (B, T) int64 -> logits (B, T, V) in the model's (or autocast's) dtype; logits[:, t] predict
        token t + 1 from tokens 0..t.

        With a ``fork`` (:class:`seqba.models.fork.Fork`, layer k), the logits are (M·B, T, V), rows in
        ``fork.layout``: embedding and blocks 0..k-1 run on the B rows, blocks k..n-1 and the head on the copies.

        Raises:
            ValueError: T > ``max_positions``, or a fork at k >= ``num_layers`` (no block, hence no dropout mask,
                above it would tell the copies apart).
        """
        t = tokens.size(1)
        if t > self.max_positions:
            raise ValueError(f"TransformerLM: window of {t} tokens exceeds max_positions={self.max_positions}")
        if fork is not None and fork.layer >= self.num_layers:
            raise ValueError(f"TransformerLM: fork layer {fork.layer} leaves no block to tell the copies apart "
                             f"(the model has {self.num_layers}); use at most {self.num_layers - 1}")
        x = self.embed(tokens)  # (B, T, D)
        rotary = None
        if self.config.positions == "learned":
            x = x + self.pos_embed.weight[:t]
        else:
            rotary = (self.rotary_cos[:t], self.rotary_sin[:t])
        x = self.dropout(x)
        for i, block in enumerate(self.blocks):
            if fork is not None and i == fork.layer:
                x = fork.copy(x)  # (B, T, D) -> (M·B, T, D)
            x = block(x, rotary)
        return F.linear(self.norm(x), self.embed.weight)  # (B, T, V), tied output projection


def _windows(length: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """HF's strided windows over L tokens: (begin, end, new) with inputs tokens[begin:end], targets
    tokens[begin + 1:end + 1], of which the last ``new`` are scored (all of them in the first window)."""
    last = length - 1  # targets are tokens 1 .. L-1
    windows, prev_end = [], 0
    for begin in range(0, last, stride):
        end = min(begin + context, last)
        windows.append((begin, end, end - prev_end))
        prev_end = end
        if end == last:
            break
    return windows


@torch.no_grad()
def sliding_window_nll(model: nn.Module, tokens: Tensor, context: int, stride: int,
                       batch_size: int, token_nll: Tensor | None = None) -> tuple[float, int]:
    """Summed next-token NLL of a whole split with a sliding window ("Perplexity of fixed-length models",
    Hugging Face transformers docs, strided method).

    Windows of ``context`` inputs start every ``stride`` tokens; each scores only the targets no earlier window
    scored (its last ``stride``; the first window scores all of its own), so every token from the second on is
    scored exactly once, with at least ``context - stride`` tokens of context after the first window.
    ``stride == context`` is plain non-overlapping evaluation; smaller strides cost context / stride times more.
    Windows of equal length run ``batch_size`` at a time.

    Args:
        model: ``model(tokens (B, T)) -> logits (B, T, V)``; run in eval mode (restored after), without grad.
        tokens: (L,) int64, the split as one stream.
        context: window length T (at most the model's ``max_positions``).
        stride: new targets per window, 1 <= stride <= context.
        batch_size: windows per forward.
        token_nll: a (L,) float64 CPU tensor that receives the NLL of predicting each position (every one from the
            second on), or None.

    Returns:
        (sum of -log p(token) in nats over the scored tokens as a float, number of tokens scored = L - 1);
        perplexity is ``exp(nll / scored)``.

    Raises:
        ValueError: tokens not 1-D with at least 2 tokens, or a bad ``context``, ``stride`` or ``batch_size``.
    """
    if tokens.dim() != 1 or tokens.numel() < 2:
        raise ValueError(f"sliding_window_nll: tokens must be 1-D with >= 2 tokens, got shape {tuple(tokens.shape)}")
    if context < 1 or not 1 <= stride <= context or batch_size < 1:
        raise ValueError(f"sliding_window_nll: need context >= 1, 1 <= stride <= context and batch_size >= 1, got "
                         f"context={context}, stride={stride}, batch_size={batch_size}")
    device, out = next(model.parameters()).device, token_nll
    windows = _windows(tokens.numel(), context, stride)
    was_training = model.training
    model.eval()
    nll, scored = 0.0, 0
    try:
        i = 0
        while i < len(windows):
            size = windows[i][1] - windows[i][0]
            group = [windows[i]]
            while (len(group) < batch_size and i + len(group) < len(windows)
                   and windows[i + len(group)][1] - windows[i + len(group)][0] == size):
                group.append(windows[i + len(group)])
            i += len(group)
            inputs = torch.stack([tokens[b:e] for b, e, _ in group]).to(device)  # (B, T)
            targets = torch.stack([tokens[b + 1:e + 1] for b, e, _ in group]).to(device)  # (B, T)
            logits = model(inputs)
            token_nll = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")  # (B, T)
            new = torch.tensor([n for _, _, n in group], device=device)
            keep = torch.arange(size, device=device)[None, :] >= size - new[:, None]  # the last `new` of each row
            nll += float(token_nll[keep].sum(dtype=torch.float64))
            scored += int(new.sum())
            if out is not None:  # window (b, e) scores the targets of its last n inputs: positions e + 1 - n .. e
                for row, (_, e, n) in enumerate(group):
                    out[e + 1 - n:e + 1] = token_nll[row, size - n:].double().cpu()
    finally:
        model.train(was_training)
    return nll, scored
