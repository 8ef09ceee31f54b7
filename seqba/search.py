"""Beam search for encoder-decoder models, batched over sentences and beams, as fairseq's ``SequenceGenerator``.

Rows are sentence-major: row ``s * K + j`` is beam j of sentence s. Each step:

1. decode the newest token of every row with the KV cache; log-probs in float32; pad and bos get -inf;
   rows at their sentence's max length may only emit eos;
2. per sentence, take the top 2K of (beam score + token log-prob) over all K x V extensions (computed exactly
   from each row's own top 2K);
3. eos candidates among the top K finish a hypothesis, scored ``sum log p / len ** lenpen`` with ``len``
   counting the eos; the first K non-eos candidates become the next beams (cache rows reordered to match);
4. a sentence is done once it has K finished hypotheses or reaches its max length
   ``int(max_len_a * src_len + max_len_b)``; done sentences leave the batch, so they stop costing compute.

The result is the best finished hypothesis per sentence. ``beam_size=1`` is greedy decoding.

Cost: the decoder runs one position per row and step (KV cache); the encoder output and the cross-attention K/V
are kept once per sentence, not once per beam (``init_cache(beam_size=K)``), and rows of finished sentences are
dropped. :func:`translate` decodes a corpus in length-sorted batches. Its speed against the same search without the
KV cache (:class:`RecomputePrefix`, the reference kept for tests and ``benchmarks/bench_decode.py``) and its
profile are in README.md and ``benchmarks/results/decode.json``.

Tiny CPU run::

    model = Transformer(100, d_model=16, ffn_dim=32, num_heads=2, encoder_layers=1, decoder_layers=1).eval()
    hyps = translate(model, [torch.tensor([5, 6, 7, 3])], beam=4)   # [[piece ids]]

Shape notation: B = sentences, K = beam size, N = active rows (sentences still decoding x K), V = vocab.
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["Hypothesis", "beam_search", "translate", "check_beam", "vocab_size", "RecomputePrefix",
           "DEFAULT_MAX_LEN_A", "DEFAULT_MAX_LEN_B"]

# Output length cap: at most int(a * source tokens + b) tokens before eos (source tokens counting its eos).
# fairseq's generate defaults are a=0, b=200: a model that rarely emits eos (untrained, or diverging) then decodes
# 200 steps for every sentence. a=1.2, b=10 (as Ott et al. 2018, "Scaling Neural Machine Translation", for WMT)
# caps a 14-token Multi30k source at 26 tokens and a 28-token WMT one at 43, above any plausible en<->de
# translation. Its effect on BLEU and time: benchmarks/results/decode_maxlen*.json and README.md.
DEFAULT_MAX_LEN_A = 1.2
DEFAULT_MAX_LEN_B = 10


class Hypothesis(NamedTuple):
    """A finished translation: ``tokens`` without bos/eos, ``score`` = sum of log-probs / len ** lenpen."""

    tokens: list[int]
    score: float


@torch.inference_mode()
def beam_search(
    model,
    src_tokens: Tensor,
    src_lengths: Tensor,
    *,
    beam_size: int = 4,
    max_len_a: float = DEFAULT_MAX_LEN_A,
    max_len_b: int = DEFAULT_MAX_LEN_B,
    lenpen: float = 1.0,
    bos: int = 2,
    eos: int = 3,
    pad: int = 0,
) -> list[Hypothesis]:
    """Best hypothesis per source sentence, in input order (fairseq ``SequenceGenerator`` semantics).

    Args:
        model: in eval mode, with ``encode``, ``init_cache(beam_size=K)``, ``decode(tokens, encoder_out, cache)``,
            ``reorder_cache(cache, order, cross_attention=)`` and ``reorder_encoder_out(encoder_out, sentences)``
            (see ``seqba.models.transformer.Transformer``); an optional ``max_positions`` caps the length. The
            encoder output keeps one row per active sentence (n rows) while ``decode`` takes N = n x K rows:
            the model shares each sentence's encoder side among its K beams.
        src_tokens: (B, S) int64, right-padded with ``pad``, each ending with eos.
        src_lengths: (B,) int64, source lengths in tokens (eos included).
        beam_size: K, hypotheses kept per sentence; 1 is greedy decoding.
        max_len_a, max_len_b: a sentence emits at most ``int(max_len_a * src_len + max_len_b)`` tokens before
            its eos (eos is forced there), capped at ``model.max_positions - 1``.
        lenpen: length-penalty exponent; >1 favours longer, <1 shorter hypotheses.

    Returns:
        B ``Hypothesis`` (tokens without bos/eos, normalized score).

    Raises:
        ValueError: for ``beam_size < 1``, a model in training mode, or mismatched batch sizes. (A beam wider than
            the vocabulary is exact, only slow: :func:`translate`, the corpus-level entry, refuses it.)
    """
    if beam_size < 1:
        raise ValueError(f"beam_search: beam_size must be >= 1, got {beam_size}")
    if getattr(model, "training", False):
        raise ValueError("beam_search: model is in training mode (dropout active); call model.eval() first")
    if src_tokens.dim() != 2 or src_lengths.shape != src_tokens.shape[:1]:
        raise ValueError(
            f"beam_search: expected src_tokens (B, S) and src_lengths (B,), got {tuple(src_tokens.shape)} "
            f"and {tuple(src_lengths.shape)}"
        )
    k, bsz, device = beam_size, src_tokens.size(0), src_tokens.device
    max_lens = [int(max_len_a * n + max_len_b) for n in src_lengths.tolist()]
    if getattr(model, "max_positions", None) is not None:
        max_lens = [min(n, model.max_positions - 1) for n in max_lens]
    if bsz == 0:
        return []

    encoder_out = model.encode(src_tokens, src_lengths)  # one row per sentence, shared by its K beams
    cache = model.init_cache(beam_size=k)

    sent_ids = list(range(bsz))  # original index of each active sentence
    tokens = torch.empty(bsz * k, 0, dtype=torch.long, device=device)  # (N, step) emitted tokens
    scores = torch.full((bsz, k), -math.inf, device=device)  # (n, K) cumulative log-probs
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    last = torch.full((bsz * k, 1), bos, dtype=torch.long, device=device)  # (N, 1) newest token
    n_finished = [0] * bsz
    best: list[tuple[float, Tensor] | None] = [None] * bsz
    cand_offsets = torch.arange(2 * k, device=device)
    special = torch.tensor([pad, bos], device=device)  # never emitted

    for step in range(max(max_lens) + 1):
        n = len(sent_ids)
        logits = model.decode(last, encoder_out, cache)[:, -1]  # (N, V)
        lprobs = torch.log_softmax(logits, dim=-1, dtype=torch.float32)  # fused; modified in place below
        per_row = min(2 * k, lprobs.size(1))
        lprobs.index_fill_(1, special, -math.inf)
        at_max = [i for i, s in enumerate(sent_ids) if step >= max_lens[s]]
        if at_max:  # only eos allowed
            rows = (torch.tensor(at_max, device=device)[:, None] * k + torch.arange(k, device=device)).view(-1)
            eos_lp = lprobs[rows, eos]
            lprobs[rows] = -math.inf
            lprobs[rows, eos] = eos_lp

        # Top 2K extensions per sentence (at most K of them are eos, so K non-eos beams always remain). A row's
        # beam score is shared by its V extensions, so a sentence's top 2K lie in its rows' own top 2K: take
        # those first (no (N, V) sum and no (n, K*V) top-k), then the best 2K of the n x K x 2K.
        row_lprobs, row_tokens = lprobs.topk(per_row, dim=1)  # (N, P), P = min(2K, V)
        row_scores = (scores.view(-1, 1) + row_lprobs).view(n, k * per_row)
        cand_scores, cand_idx = row_scores.topk(2 * k, dim=1)  # (n, 2K)
        cand_beams = cand_idx // per_row
        cand_tokens = row_tokens.view(n, k * per_row).gather(1, cand_idx)
        is_eos = cand_tokens.eq(eos)

        # finish the eos candidates ranked in the top K
        finish = (is_eos[:, :k] & cand_scores[:, :k].isfinite()).nonzero()  # (E, 2): sentence, candidate
        if finish.numel():
            sent_pos, cand_pos = finish.unbind(1)
            rows = sent_pos * k + cand_beams[sent_pos, cand_pos]
            normalized = cand_scores[sent_pos, cand_pos] / (step + 1) ** lenpen
            for i, row, score in zip(sent_pos.tolist(), rows.tolist(), normalized.tolist()):
                s = sent_ids[i]
                if n_finished[s] < k:
                    n_finished[s] += 1
                    if best[s] is None or score > best[s][0]:
                        best[s] = (score, tokens[row])

        # the first K non-eos candidates continue
        active = (is_eos.long() * 2 * k + cand_offsets).topk(k, dim=1, largest=False).indices  # (n, K)
        new_tokens = cand_tokens.gather(1, active)
        scores = cand_scores.gather(1, active)
        order = torch.arange(n, device=device)[:, None] * k + cand_beams.gather(1, active)  # (n, K) rows

        keep = [i for i, s in enumerate(sent_ids) if n_finished[s] < k and step < max_lens[s]]
        if not keep:
            break
        shrink = len(keep) < n
        if shrink:  # drop finished sentences from every per-row tensor
            keep_t = torch.tensor(keep, device=device)
            order, new_tokens, scores = order[keep_t], new_tokens[keep_t], scores[keep_t]
            sent_ids = [sent_ids[i] for i in keep]
        order = order.view(-1)
        tokens = torch.cat([tokens.index_select(0, order), new_tokens.view(-1, 1)], dim=1)
        last = new_tokens.view(-1, 1)
        # beams of one sentence share their source, so encoder-side rows move only when the batch shrinks
        model.reorder_cache(cache, order, cross_attention=shrink)
        if shrink:
            encoder_out = model.reorder_encoder_out(encoder_out, keep_t)

    return [Hypothesis(hyp_tokens.tolist(), score) for score, hyp_tokens in best]


class RecomputePrefix:
    """The slow, obvious reference: decoding without a KV cache, for tests and ``benchmarks/bench_decode.py``.

    Wraps a model with :func:`beam_search`'s interface; its "cache" only stores the emitted prefix (N, t) and each
    ``decode`` runs the model's full teacher-forced decoder over ``[bos, t1..tn]`` (causal self-attention, cross-
    attention recomputed from the encoder output) and returns the last position. Step t therefore costs O(t) decoder
    positions instead of one; the hypotheses must match the cached decoding's (up to float rounding).
    """

    training = False

    def __init__(self, model):
        self.model = model
        self.max_positions = getattr(model, "max_positions", None)

    def eval(self) -> "RecomputePrefix":
        self.model.eval()
        return self

    def encode(self, src_tokens: Tensor, src_lengths: Tensor):
        return self.model.encode(src_tokens, src_lengths)

    def reorder_encoder_out(self, encoder_out, new_order: Tensor):
        return self.model.reorder_encoder_out(encoder_out, new_order)

    def init_cache(self, beam_size: int = 1) -> dict:
        return {"prefix": None, "beam": beam_size, "rows": None}

    def decode(self, tokens: Tensor, encoder_out, cache: dict) -> Tensor:
        """tokens (N, n) newest tokens -> logits (N, n, V) from a full decoder pass over the whole prefix.

        ``encoder_out`` has N / beam rows (one per sentence); it is expanded to N rows once per batch shape.
        """
        prefix = tokens if cache["prefix"] is None else torch.cat([cache["prefix"], tokens], dim=1)  # (N, t)
        cache["prefix"] = prefix
        if cache["rows"] is None:  # first step, or the batch shrank: one encoder row per decoder row
            rows = torch.arange(encoder_out.out.size(0), device=tokens.device).repeat_interleave(cache["beam"])
            cache["rows"] = self.model.reorder_encoder_out(encoder_out, rows)
        return self.model.decode(prefix, cache["rows"])[:, -tokens.size(1) :]

    def reorder_cache(self, cache: dict, new_order: Tensor, *, cross_attention: bool = True) -> None:
        cache["prefix"] = cache["prefix"].index_select(0, new_order)
        if cross_attention:
            cache["rows"] = None


def vocab_size(model) -> int | None:
    """The output vocabulary of ``model``: its ``vocab_size``, or the rows of its ``decoder_embed`` table
    (:class:`seqba.models.transformer.Transformer`); ``None`` when neither exists."""
    size = getattr(model, "vocab_size", None)
    if size is None and getattr(model, "decoder_embed", None) is not None:
        size = model.decoder_embed.num_embeddings
    return None if size is None else int(size)


def check_beam(model, beam: int) -> None:
    """Refuse a beam wider than ``vocab_size(model) - 1`` (fairseq's cap) before any decoding.

    Raises:
        ValueError: naming the beam and the limit (no check when the vocabulary size is unknown).
    """
    vocab = vocab_size(model)
    if vocab is not None and beam > vocab - 1:
        raise ValueError(f"beam size {beam} is larger than the vocabulary size - 1 ({vocab - 1}), fairseq's "
                         "limit: the search would only get slower; use a smaller --beam")


def translate(
    model,
    sources: list[Tensor],
    *,
    beam: int = 4,
    lenpen: float = 1.0,
    max_len_a: float = DEFAULT_MAX_LEN_A,
    max_len_b: int = DEFAULT_MAX_LEN_B,
    max_tokens: int | None = None,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    autocast_dtype: torch.dtype | None = None,
    bos: int = 2,
    eos: int = 3,
    pad: int = 0,
) -> list[list[int]]:
    """Decode a corpus with :func:`beam_search`: best hypothesis per source, piece ids in input order.

    Sources are sorted by length and cut into batches of at most ``max_tokens`` padded source tokens and/or
    ``batch_size`` sentences (:class:`seqba.samplers.TokenBudgetBatchSampler`, no shuffling; default 4096 tokens),
    so that padding is small; each batch is decoded together and results are put back in input order.

    Args:
        model: a ``Transformer`` (or any model with beam_search's interface); put in eval mode here.
        sources: 1-D int64 piece ids, each ending with ``eos``; a source of ``model.max_positions`` tokens or
            more is cut to ``max_positions - 1`` tokens with eos last. The inputs are not modified.
        beam: beam size K (1: greedy).
        lenpen: length-penalty exponent (fairseq semantics).
        max_len_a, max_len_b: at most ``int(max_len_a * source_tokens + max_len_b)`` output tokens before eos
            (source tokens counting its eos).
        max_tokens: padded source tokens per batch (raised to the longest source when smaller).
        batch_size: sentences per batch.
        device: where to decode; the model must already be there.
        progress: show a tqdm bar over batches.
        autocast_dtype: e.g. ``torch.bfloat16``: decode under ``torch.autocast`` with that dtype (log-probs and
            scores stay float32; on the CPU attention runs in float32, ``seqba.models.transformer.attention``). Off by
            default. Hypotheses may differ from fp32 decoding; its speed and BLEU against fp32 are in README.md
            (Benchmarks) and ``benchmarks/results/decode.json``.
        bos, eos, pad: special ids (seqba's SentencePiece ids by default).

    Returns:
        One list of piece ids per source (without bos/eos), in input order.

    Raises:
        ValueError: a bad beam size (below 1, or above the vocabulary size - 1: checked before decoding), an
            empty source.
    """
    from tqdm.auto import tqdm

    from seqba.samplers import TokenBudgetBatchSampler

    if beam < 1:
        raise ValueError(f"translate: beam must be >= 1, got {beam}")
    check_beam(model, beam)
    if max_tokens is None and batch_size is None:
        max_tokens = 4096
    limit = getattr(model, "max_positions", None)
    clipped = []
    for i, src in enumerate(sources):
        if src.numel() == 0:
            raise ValueError(f"translate: source {i} is empty (expected at least eos)")
        if limit is not None and src.numel() >= limit:
            src = torch.cat([src[: limit - 2], src.new_tensor([eos])])
        elif src[-1] != eos:
            src = torch.cat([src[:-1], src.new_tensor([eos])])
        clipped.append(src)
    lengths = [src.numel() for src in clipped]
    if max_tokens is not None:
        max_tokens = max(max_tokens, max(lengths, default=1))
    sampler = TokenBudgetBatchSampler(lengths, max_tokens, max_sentences=batch_size, shuffle=False)
    out: list[list[int]] = [[] for _ in clipped]
    model.eval()
    device_type = torch.device(device).type
    autocast = torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    for ids in tqdm(sampler, disable=not progress, desc="beam search"):
        src = torch.nn.utils.rnn.pad_sequence([clipped[i] for i in ids], batch_first=True, padding_value=pad)
        src_lengths = torch.tensor([lengths[i] for i in ids])
        with autocast:
            hyps = beam_search(model, src.to(device), src_lengths.to(device), beam_size=beam, max_len_a=max_len_a,
                               max_len_b=max_len_b, lenpen=lenpen, bos=bos, eos=eos, pad=pad)
        for i, hyp in zip(ids, hyps):
            out[i] = hyp.tokens
    return out
