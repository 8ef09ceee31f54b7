"""Benchmark: encoding real text with SentencePiece line by line (before) and through the per-word cache (after).

Both sides do what ``seqba.data.prepare`` does to a block of lines in one encoding process and produce the same
output, checked every round: the flat ids (uint16) and the per-line lengths (int64).

* ``direct``: ``SentencePieceProcessor.encode(lines, num_threads=1)``, flattened (the encoder before the cache);
* ``cached cold``: a new :class:`~seqba.data.word_cache.WordCachedEncoder` over the same lines: every word type
  is segmented once, then looked up — the worst case, a corpus no larger than these lines;
* ``cached warm``: the same encoder over the lines once more: every word is a lookup — the regime of a
  WMT-sized corpus, where almost every token's word has been seen before (its first occurrences and the words
  past ``max_words`` are the only misses).

The text is every line of the real corpora at hand (``multi30k`` train, ``opennmt-wmt-ende`` train with Moses
escapes undone, ``wmt-newstest-deen`` 2013–2016; both sides), and the model a joint BPE learned from them with
``prepare``'s options (``--vocab-size``, default 8,000). ``--rounds`` rounds time the three cases in turn, the
first case rotating; the figures are the median of the per-round ratios ``direct / cached`` with their range
(``benchmarks/ratios.py``)::

    python benchmarks/bench_word_cache.py [--rounds 5] [--vocab-size 8000] [--out benchmarks/results/word_cache.json]

One process, one thread. ``benchmarks/bench_prepare.py`` times the whole preparation.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ratios import fmt, per_round_ratios, summarize  # noqa: E402  (benchmarks/ratios.py)
from seqba.data.paths import data_root  # noqa: E402
from seqba.data.prepare import read_lines, train_sentencepiece  # noqa: E402
from seqba.data.word_cache import WordCachedEncoder  # noqa: E402
from seqba.precision import _cpu_model  # noqa: E402  (/proc/cpuinfo's model name)

FILES = [("multi30k/train.en", False), ("multi30k/train.de", False),
         ("opennmt-wmt-ende/src-train.txt", True), ("opennmt-wmt-ende/tgt-train.txt", True),
         *((f"wmt-newstest-deen/newstest{year}.{lang}", False) for year in (2013, 2014, 2015, 2016)
           for lang in ("en", "de"))]


def direct(processor, lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
    ids = processor.encode(lines, out_type=int, num_threads=1)
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    return np.fromiter((i for row in ids for i in row), dtype=np.uint16, count=int(lengths.sum())), lengths


def cached(encoder: WordCachedEncoder, lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
    ids, lengths = encoder.encode(lines)
    return np.array(ids, dtype=np.uint16), np.array(lengths, dtype=np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--data-root", default=None, help="shared corpora (default: $SEQBA_DATA or ../shared/data)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "word_cache.json"))
    args = parser.parse_args()
    root = Path(args.data_root) if args.data_root else data_root()
    if root is None:
        raise SystemExit("error: real corpora not found: set SEQBA_DATA or pass --data-root")
    import sentencepiece as spm
    import torch

    torch.set_num_threads(1)
    lines = [line for name, moses in FILES for line in read_lines(root / name, moses_escaped=moses)]
    model = train_sentencepiece(lines, seed=0, model_type="bpe", vocab_size=args.vocab_size, character_coverage=1.0,
                                pad_id=0, unk_id=1, bos_id=2, eos_id=3, normalization_rule_name="nmt_nfkc")
    processor = spm.SentencePieceProcessor(model_proto=model)
    reference = direct(processor, lines)
    words = sum(len(line.split(" ")) for line in lines)
    print(f"{len(lines):,} lines, {words:,} words, {reference[0].size:,} pieces; vocabulary {len(processor):,}")

    seconds: dict[str, list[float]] = {"direct": [], "cached cold": [], "cached warm": []}
    types = 0
    for r in range(args.rounds):
        order = list(seconds)[r % 3:] + list(seconds)[:r % 3]
        encoder = WordCachedEncoder(processor)
        for case in order:
            if case == "cached warm" and not len(encoder):
                cached(encoder, lines)  # the warm case needs the cold pass first (not timed here)
            started = time.perf_counter()
            out = direct(processor, lines) if case == "direct" else cached(encoder, lines)
            seconds[case].append(time.perf_counter() - started)
            if not all(np.array_equal(a, b) for a, b in zip(out, reference)):
                raise SystemExit(f"error: {case} gave other ids than the direct encoding")
            if case == "cached cold":
                encoder = WordCachedEncoder(processor)  # the next cold pass starts empty too
        types = max(types, len(encoder))
        print(f"round {r + 1}: " + ", ".join(f"{case} {s[-1]:.2f} s" for case, s in seconds.items()))
    ratios = {case: summarize(per_round_ratios(seconds["direct"], s)) for case, s in seconds.items()
              if case != "direct"}
    for case, summary in ratios.items():
        print(f"direct / {case}: {fmt(summary)}x")
    result = {"benchmark": "word_cache", "lines": len(lines), "words": words, "pieces": int(reference[0].size),
              "word_types": types, "vocab_size": len(processor), "rounds": args.rounds,
              "seconds": {case: [round(v, 3) for v in s] for case, s in seconds.items()},
              "speedup": ratios, "files": [name for name, _ in FILES], "cpu": _cpu_model(),
              "cores": os.cpu_count(), "sentencepiece": spm.__version__, "python": platform.python_version()}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
