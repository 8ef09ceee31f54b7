"""WordCachedEncoder gives SentencePieceProcessor.encode's ids, line by line, on real corpora and on generated text.

The reference is the processor itself, one call per line; the models are trained as seqba.data.prepare trains
them (BPE, nmt_nfkc), on text that holds the awkward characters, so they are pieces, not only <unk>.
"""
from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqba.data.prepare import iter_lines, train_sentencepiece
from seqba.data.word_cache import WordCachedEncoder

sentencepiece = pytest.importorskip("sentencepiece")

# Characters a per-word split could get wrong: combining marks (after a space too), zero-width and control
# characters, spaces the normalizer maps or Python splits on, compatibility forms NFKC rewrites, Hangul jamo that
# compose, the "▁" SentencePiece itself writes for a space, and characters outside the BMP.
AWKWARD = ["a", "b", "ä", "ß", "é", " ", "  ", "\u0301", "\u0308", " \u0301", "\u00a0", "\t", "\r", "\u3000",
           "\u2002", "\u202f", "\u200b", "\u200d", "\ufeff", "\u00ad", "\x01", "\x1c", "\x85", "\u2028", "\u1680",
           "\u180e", "\uff21", "\ufb01", "\u2167", "\u1100", "\u1161", "\u11a8", "\u304b", "\u3099", " \u3099",
           "\u2581", "\u2581 ", "\U0001f600", "\U0001f469\u200d\U0001f52c", "\u0345", "\u0f73"]


def _model(lines: list[str], vocab_size: int) -> "sentencepiece.SentencePieceProcessor":
    proto = train_sentencepiece(lines, seed=0, model_type="bpe", vocab_size=vocab_size, character_coverage=1.0,
                                pad_id=0, unk_id=1, bos_id=2, eos_id=3, normalization_rule_name="nmt_nfkc")
    return sentencepiece.SentencePieceProcessor(model_proto=proto)


@pytest.fixture(scope="module")
def awkward_model():
    words = ["Zürich", "Straße", "naïve", "café", "x\u00a0y", "ﬁne", "Ⅷ", "か\u3099", "e\u0301", "😀", "▁x",
             "ab"]
    lines = [" ".join(itertools.islice(itertools.cycle(words), i, i + 1 + i % 7)) for i in range(400)]
    return _model(lines + ["".join(AWKWARD)] * 3, vocab_size=120)


def _assert_same(encoder: WordCachedEncoder, lines: list[str]) -> None:
    flat, lengths = encoder.encode(lines)
    assert len(lengths) == len(lines) and sum(lengths) == len(flat)
    start = 0
    for line, length in zip(lines, lengths):
        assert flat[start:start + length] == encoder.processor.encode(line, out_type=int), repr(line)
        start += length


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.lists(st.sampled_from(AWKWARD), max_size=12).map("".join), st.text(max_size=20)),
                max_size=8))
def test_generated_lines_encode_as_whole_lines(awkward_model, lines):
    _assert_same(WordCachedEncoder(awkward_model), lines)


def test_a_full_cache_stops_growing_and_stays_exact(awkward_model):
    encoder = WordCachedEncoder(awkward_model, max_words=3)
    lines = ["Zürich Straße café naïve", "ab ab Zürich ﬁne", "  Ⅷ  ab "]
    _assert_same(encoder, lines)
    _assert_same(encoder, lines)  # warm: the cached words and the uncached ones
    assert len(encoder) == 3
    with pytest.raises(ValueError, match="max_words"):
        WordCachedEncoder(awkward_model, max_words=-1)


@pytest.mark.parametrize("files", [("multi30k/train.en", "multi30k/train.de"),
                                   ("opennmt-wmt-ende/src-train.txt", "opennmt-wmt-ende/tgt-train.txt"),
                                   ("wmt-newstest-deen/newstest2016.en", "wmt-newstest-deen/newstest2016.de")])
def test_real_corpora_encode_as_whole_lines(shared_data, files):
    """Every line of each file (up to 10k per side), with a model learned from them as prepare learns it."""
    lines = [line for name in files for line in itertools.islice(iter_lines(shared_data / name), 10000)]
    encoder = WordCachedEncoder(_model(lines, vocab_size=2000))
    _assert_same(encoder, lines)
    assert 0 < len(encoder) < sum(len(line.split()) for line in lines)  # words repeat: the cache is used
