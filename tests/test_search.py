"""Beam search against slow references: exhaustive search, a plain per-sentence beam search, argmax decoding,
decoding without the KV cache (``RecomputePrefix``), and one sentence at a time.

Two tiny models: ``PrefixTable``, a random autoregressive model (logits looked up by a hash of source and
prefix) whose hypotheses differ in length and content, for the search logic; and a random ``Transformer``,
for the integration with the real KV cache.
"""

import itertools
import math

import pytest
import torch

from seqba.models.transformer import Transformer
from seqba.search import RecomputePrefix, beam_search, translate

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

    def reorder_encoder_out(self, encoder_out, sentences):
        return encoder_out.index_select(0, sentences)

    def init_cache(self, beam_size=1):
        return {"beam": beam_size}

    def decode(self, tokens, encoder_out, cache):  # (N, 1) newest tokens, (N / beam,) sources -> (N, 1, V)
        start = encoder_out.repeat_interleave(cache["beam"])
        h = (cache.get("h", start) * 31 + tokens[:, -1] + 1) % self.buckets
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


class ShrinkSpy:
    """Forwards to a model and counts the reorders that drop finished sentences (``cross_attention=True``)."""

    def __init__(self, model):
        self.model, self.shrinks, self.training = model, 0, False
        self.max_positions = model.max_positions

    def __getattr__(self, name):
        return getattr(self.model, name)

    def reorder_cache(self, cache, new_order, *, cross_attention=True):
        self.shrinks += cross_attention
        self.model.reorder_cache(cache, new_order, cross_attention=cross_attention)


def random_sources(n, vocab, seed, max_len=9):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len, (n,), generator=g).tolist()
    return [torch.cat([torch.randint(4, vocab, (k - 1,), generator=g), torch.tensor([EOS])]) for k in lengths]


@pytest.mark.parametrize("beam_size", [1, 4])
def test_cached_equals_recomputed_prefix(beam_size):
    """The KV cache (with beam-shared encoder rows) against full recomputation of every prefix."""
    model = tiny_transformer(12, seed=2)
    src, lengths = sources([5, 2, 7, 3, 4, 6, 1, 8], vocab=12, seed=3)
    options = dict(beam_size=beam_size, max_len_a=1.0, max_len_b=2, lenpen=1.0)
    cached = beam_search(model, src, lengths, **options)
    reference = beam_search(RecomputePrefix(model), src, lengths, **options)
    assert [h.tokens for h in cached] == [h.tokens for h in reference]
    assert [h.score for h in cached] == pytest.approx([h.score for h in reference], abs=1e-5)


def test_finished_sentences_leave_the_batch_without_changing_results():
    model = ShrinkSpy(tiny_transformer(12, seed=5))
    src, lengths = sources([6, 2, 7, 3, 5, 4], vocab=12, seed=5)
    options = dict(beam_size=4, max_len_a=1.0, max_len_b=3, lenpen=1.0)
    batched = beam_search(model, src, lengths, **options)
    assert model.shrinks > 0  # sentences finished at different steps and were dropped
    assert any(len(h.tokens) < n + 3 for h, n in zip(batched, lengths.tolist()))  # some before their max length
    for i, hyp in enumerate(batched):
        (alone,) = beam_search(model.model, src[i : i + 1, : lengths[i]], lengths[i : i + 1], **options)
        assert hyp.tokens == alone.tokens
        assert hyp.score == pytest.approx(alone.score, abs=1e-5)


def test_beam_cache_shares_encoder_rows():
    """decode with init_cache(beam_size=K) and one encoder row per sentence == K copies of the encoder rows."""
    model = tiny_transformer(12, seed=1)
    src, lengths = sources([5, 3], vocab=12)
    k = 3
    tokens = torch.randint(4, 12, (2 * k, 4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        enc = model.encode(src, lengths)
        shared, copied = model.init_cache(beam_size=k), model.init_cache()
        enc_rows = model.reorder_encoder_out(enc, torch.arange(2).repeat_interleave(k))
        for t in range(tokens.size(1)):
            got = model.decode(tokens[:, t : t + 1], enc, shared)
            want = model.decode(tokens[:, t : t + 1], enc_rows, copied)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        order = torch.tensor([5, 4, 4])  # keep sentence 1 only, beams permuted
        model.reorder_cache(shared, order)
        model.reorder_cache(copied, order)
        got = model.decode(tokens[order, :1], model.reorder_encoder_out(enc, torch.tensor([1])), shared)
        want = model.decode(tokens[order, :1], model.reorder_encoder_out(enc_rows, order), copied)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert shared.cross_attn[0].k.size(0) == 1 and copied.cross_attn[0].k.size(0) == 3


@pytest.mark.parametrize("beam", [1, 4])
def test_translate_is_independent_of_batching_and_order(beam):
    model = tiny_transformer(12, seed=2)
    srcs = random_sources(23, vocab=12, seed=7)
    kept = [s.clone() for s in srcs]
    options = dict(beam=beam, max_len_a=1.0, max_len_b=2)
    one_batch = translate(model, srcs, max_tokens=10_000, **options)
    assert all(torch.equal(a, b) for a, b in zip(srcs, kept))  # inputs untouched
    for batching in [dict(batch_size=1), dict(batch_size=5), dict(max_tokens=16)]:
        assert translate(model, srcs, **batching, **options) == one_batch
    perm = torch.randperm(len(srcs), generator=torch.Generator().manual_seed(0)).tolist()
    shuffled = translate(model, [srcs[i] for i in perm], batch_size=4, **options)
    assert shuffled == [one_batch[i] for i in perm]  # results in input order
    for i in (0, 9, 22):  # against beam_search on the sentence alone, and the uncached reference
        (alone,) = beam_search(model, srcs[i][None], torch.tensor([len(srcs[i])]), beam_size=beam,
                               max_len_a=1.0, max_len_b=2)
        assert one_batch[i] == alone.tokens
    assert translate(RecomputePrefix(model), srcs, batch_size=8, **options) == one_batch


def test_translate_cuts_long_sources_and_rejects_empty():
    model = tiny_transformer(12, seed=2)  # max_positions 32
    long = torch.cat([torch.full((40,), 5), torch.tensor([EOS])])
    (out,) = translate(model, [long], beam=2, max_len_a=0, max_len_b=3)
    (want,) = beam_search(model, torch.cat([long[:30], torch.tensor([EOS])])[None], torch.tensor([31]),
                          beam_size=2, max_len_a=0, max_len_b=3)
    assert out == want.tokens and len(long) == 41
    with pytest.raises(ValueError, match="source 1 is empty"):
        translate(model, [long, torch.tensor([], dtype=torch.long)])


def test_translate_under_bf16_autocast_runs():
    model = tiny_transformer(12, seed=2)
    srcs = random_sources(6, vocab=12, seed=8)
    out = translate(model, srcs, beam=2, max_len_a=1.0, max_len_b=2, autocast_dtype=torch.bfloat16)
    assert len(out) == 6
    assert all(len(t) <= len(s) + 2 and not {PAD, BOS, EOS} & set(t) for t, s in zip(out, srcs))
