"""SentencePiece encoding through a per-word cache: the same ids as encoding each sentence, at a fraction of the cost.

The models that :mod:`seqba.data.prepare` trains (BPE, ``nmt_nfkc``, SentencePiece's default
``split_by_whitespace``, ``add_dummy_prefix`` and ``remove_extra_whitespaces``) never make a piece across a space:
every word of a sentence becomes "▁word" and is segmented on its own, so a sentence's ids are the concatenation of
its words' ids, each word encoded alone. A corpus repeats its words (Zipf's law), so most words are looked up, not
segmented. Lines are split on the ASCII space only: any other whitespace (a tab, a no-break or ideographic space)
stays inside its word, where the normalizer makes the same word boundary of it as in the whole line (each part is
normalized with its leading, trailing and repeated whitespace dropped and "▁" put in front, as at a boundary).

``tests/test_word_cache.py`` checks the equality against ``SentencePieceProcessor.encode`` on real corpora and on
generated text with combining marks, zero-width and control characters, unusual spaces and the "▁" symbol itself.
"""
from __future__ import annotations


class WordCachedEncoder:
    """Encode lines with a SentencePiece processor, looking each space-separated word up in a bounded cache.

    Args:
        processor: a ``sentencepiece.SentencePieceProcessor`` whose model does not make pieces across spaces
            (every model :func:`seqba.data.prepare.train_sentencepiece` builds for a corpus).
        max_words: distinct words kept (about 0.2 kB each); once full, new words are encoded and not kept, so the
            most frequent words, which a corpus meets first, stay cached and memory stays bounded.

    Not thread-safe; one per encoding process.
    """

    def __init__(self, processor, max_words: int = 1 << 19) -> None:
        if max_words < 0:
            raise ValueError(f"max_words must be >= 0, got {max_words}")
        self.processor, self.max_words = processor, max_words
        self._ids: dict[str, tuple[int, ...]] = {}

    def __len__(self) -> int:
        """Words cached."""
        return len(self._ids)

    def encode(self, lines: list[str]) -> tuple[list[int], list[int]]:
        """``(flat, lengths)``: every line's piece ids, concatenated, and the number of ids of each line.

        ``flat[sum(lengths[:i]):sum(lengths[:i + 1])] == processor.encode(lines[i], out_type=int)`` for every i.
        """
        flat: list[int] = []
        lengths: list[int] = []
        cache, encode, room = self._ids, self.processor.encode, self.max_words - len(self._ids)
        for line in lines:
            start = len(flat)
            for word in line.split(" "):  # "" (two spaces in a row) encodes to nothing, as in the whole line
                ids = cache.get(word)
                if ids is None:
                    ids = tuple(encode(word, out_type=int))
                    if room > 0:
                        cache[word], room = ids, room - 1
                flat += ids
            lengths.append(len(flat) - start)
        return flat, lengths
