"""Beam search against slow references: exhaustive search, a plain per-sentence beam search, argmax decoding.

Two tiny models: ``PrefixTable``, a random autoregressive model (logits looked up by a hash of source and
prefix) whose hypotheses differ in length and content, for the search logic; and a random ``Transformer``,
for the integration with the real KV cache.
"""

import itertools
import math

import pytest
import torch

from seqba.models.transformer import Transformer
from seqba.search import beam_search

PAD, BOS, EOS = 0, 2, 3


class PrefixTable:
    """Random model with beam_search's interface: next-token logits = table[hash(source, prefix)], (V,)."""

    training = False
    buckets = 1009

    def __init__(self, vocab: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.table = 2.0 * torch.randn(self.buckets, vocab, generator=g)

    def encode(self, src_tokens, src_lengths):  # (B, S) -> (B,) hash of the unpadded source
        weights = torch.arange(1, src_tokens.size(1) + 1)
        return (src_tokens * weights).sum(1) % self.buckets

    def reorder_encoder_out(self, encoder_out, new_order):
        return encoder_out.index_select(0, new_order)

    def init_cache(self):
        return {}

    def decode(self, tokens, encoder_out, cache):  # (B, 1) newest tokens -> (B, 1, V)
        h = (cache.get("h", encoder_out) * 31 + tokens[:, -1] + 1) % self.buckets
        cache["h"] = h
        return self.table[h][:, None]

    def reorder_cache(self, cache, new_order, *, cross_attention=True):
        cache["h"] = cache["h"].index_select(0, new_order)


def tiny_transformer(vocab: int, seed: int) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(vocab, d_model=8, ffn_dim=16, num_heads=2, encoder_layers=1, decoder_layers=1, max_positions=32)
    with torch.no_grad():  # wider weights than the default init: sharper, more varied distributions
        for p in model.parameters():
            p.normal_(0.0, 1.0)
    return model.eval()


def sources(lengths, vocab, seed=1):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, vocab, (len(lengths), max(lengths)), generator=g)
    for i, n in enumerate(lengths):
        src[i, n - 1] = EOS
        src[i, n:] = PAD
    return src, torch.tensor(lengths)


def next_lprobs(model, src, prefix, forced_eos=False):
    """(V,) log-probs of the token after [bos, *prefix] for one source (S,), recomputed from scratch."""
    with torch.no_grad():
        if isinstance(model, Transformer):  # full forward, no cache
            logits = model(src[None], None, torch.tensor([[BOS, *prefix]]))[0, -1]
        else:
            cache, enc = model.init_cache(), model.encode(src[None], None)
            for token in [BOS, *prefix]:
                logits = model.decode(torch.tensor([[token]]), enc, cache)[0, -1]
    lprobs = logits.float().log_softmax(-1)
    lprobs[[PAD, BOS]] = -math.inf
    if forced_eos:
        lprobs[torch.arange(lprobs.numel()) != EOS] = -math.inf
    return lprobs


def exhaustive_best(model, src, max_len, lenpen):
    """Best of all [t1..tn, eos], n <= max_len, by sum log p / (n + 1) ** lenpen."""
    emittable = [v for v in range(next_lprobs(model, src, []).numel()) if v not in (PAD, BOS, EOS)]
    best = (-math.inf, None)
    for n in range(max_len + 1):
        for hyp in itertools.product(emittable, repeat=n):
            total = sum(next_lprobs(model, src, list(hyp[:i]))[t].item() for i, t in enumerate((*hyp, EOS)))
            best = max(best, (total / (n + 1) ** lenpen, list(hyp)), key=lambda c: c[0])
    return best


def reference_beam_search(model, src, k, max_len, lenpen):
    """One sentence, plain Python, fairseq rules: top 2K candidates, eos in the top K finishes, K non-eos go on."""
    beams, finished = [(0.0, [])], []
    for step in range(max_len + 1):
        candidates = []
        for score, hyp in beams:
            lprobs = next_lprobs(model, src, hyp, forced_eos=step == max_len).tolist()
            candidates += [(score + lp, hyp, v) for v, lp in enumerate(lprobs) if lp > -math.inf]
        candidates = sorted(candidates, key=lambda c: -c[0])[: 2 * k]
        for score, hyp, v in candidates[:k]:
            if v == EOS and len(finished) < k:
                finished.append((score / (step + 1) ** lenpen, hyp))
        if len(finished) == k or step == max_len:
            return max(finished, key=lambda c: c[0])
        beams = [(score, hyp + [v]) for score, hyp, v in candidates if v != EOS][:k]


@pytest.mark.parametrize("lenpen", [0.5, 1.0, 2.0])
def test_wide_beam_finds_exhaustive_best(lenpen):
    src, lengths = sources([4, 2, 3], vocab=6)
    # vocab 6 has 3 emittable tokens; max 3 before eos: <= 27 live prefixes and 40 finished hypotheses < 64 beams
    for model in [PrefixTable(6, seed=0), PrefixTable(6, seed=1), tiny_transformer(6, seed=0)]:
        hyps = beam_search(model, src, lengths, beam_size=64, max_len_a=0, max_len_b=3, lenpen=lenpen)
        for i, hyp in enumerate(hyps):
            score, tokens = exhaustive_best(model, src[i, : lengths[i]], 3, lenpen)
            assert hyp.tokens == tokens
            assert hyp.score == pytest.approx(score, abs=1e-5)


@pytest.mark.parametrize("beam_size", [2, 3, 5])
def test_matches_reference_beam_search(beam_size):
    src, lengths = sources([5, 2, 7, 3], vocab=8)
    model = PrefixTable(8, seed=beam_size)
    hyps = beam_search(model, src, lengths, beam_size=beam_size, max_len_a=1.0, max_len_b=1, lenpen=1.2)
    for i, hyp in enumerate(hyps):
        score, tokens = reference_beam_search(model, src[i, : lengths[i]], beam_size, int(lengths[i]) + 1, 1.2)
        assert hyp.tokens == tokens
        assert hyp.score == pytest.approx(score, abs=1e-5)


@pytest.mark.parametrize("model", [PrefixTable(12, seed=3), tiny_transformer(12, seed=0)], ids=["table", "transformer"])
def test_greedy_is_argmax_decoding(model):
    src, lengths = sources([5, 3, 6, 2, 4], vocab=12)
    hyps = beam_search(model, src, lengths, beam_size=1, max_len_a=1.0, max_len_b=2)
    for i, hyp in enumerate(hyps):
        max_len, prefix, total = int(lengths[i]) + 2, [], 0.0
        for step in range(max_len + 1):
            lprobs = next_lprobs(model, src[i, : lengths[i]], prefix, forced_eos=step == max_len)
            token = int(lprobs.argmax())
            total += lprobs[token].item()
            if token == EOS:
                break
            prefix.append(token)
        assert hyp.tokens == prefix
        assert hyp.score == pytest.approx(total / (len(prefix) + 1), abs=1e-5)


@pytest.mark.parametrize("model", [PrefixTable(12, seed=5), tiny_transformer(12, seed=0)], ids=["table", "transformer"])
def test_batched_equals_one_sentence_at_a_time(model):
    src, lengths = sources([5, 2, 7, 3, 4, 6], vocab=12)
    options = dict(beam_size=3, max_len_a=1.0, max_len_b=1, lenpen=1.0)
    batched = beam_search(model, src, lengths, **options)
    for i, hyp in enumerate(batched):
        n = int(lengths[i])
        (single,) = beam_search(model, src[i : i + 1, :n], lengths[i : i + 1], **options)
        assert hyp.tokens == single.tokens
        assert hyp.score == pytest.approx(single.score, abs=1e-5)
        assert len(hyp.tokens) <= n + 1 and not {PAD, BOS, EOS} & set(hyp.tokens)
    if isinstance(model, PrefixTable):  # some sentences finish before their max length: the batch shrinks
        assert any(len(h.tokens) < n + 1 for h, n in zip(batched, lengths.tolist()))


def test_rejects_training_mode_and_bad_beam():
    model = tiny_transformer(6, seed=0)
    src, lengths = sources([3], vocab=6)
    with pytest.raises(ValueError, match="eval"):
        beam_search(model.train(), src, lengths)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model.eval(), src, lengths, beam_size=0)
