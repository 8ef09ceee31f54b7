"""Benchmark: preparing a WMT16-sized corpus (clean, SentencePiece, binarize), wall time and peak memory by size.

The corpus is generated, never committed: shuffled real words with a real length distribution. Each pair takes the
(source, target) word counts of a random pair of ``opennmt-wmt-ende``'s train split (10k WMT en-de pairs, so the
lengths and their ratio are WMT's), and each word is drawn from that side's unigram distribution (Moses escapes
undone). Valid and test get 3,000 pairs each. The words come from the 25k English and 36k German word types of
those pairs, far fewer than a real WMT corpus holds, so the encoder's per-word cache (``seqba.data.word_cache``)
finds nearly every word after the first blocks here; ``benchmarks/bench_word_cache.py`` times it on real text, where
every word type is new once. The files go to a temporary folder (``--workdir``), deleted at the end
unless ``--keep``.

Each size runs ``data_prep/prepare_translation.py`` as a subprocess with the WMT16 recipe's ``data.prepare``
options (vocab 32,000, max_len 250, max_ratio 1.5; ``spm_input_sentence_size`` left at its default), and reports:

* ``seconds``: wall time of the subprocess;
* ``cpu_seconds``: user + system time of it and every process it waited for (``os.wait4``);
* ``peak_rss_mb``: the largest peak resident set of any one process of the tree (``ru_maxrss``);
* ``peak_tree_pss_mb``: the largest sum of the tree's proportional set sizes (PSS: a page shared by k processes,
  such as what forked encoding processes share with their parent, counts 1/k in each), sampled every 0.1 s with
  psutil; the memory the whole preparation holds at its peak.

    python benchmarks/bench_prepare.py                       # 0.5M, 1.5M, 4.5M pairs -> benchmarks/results/prepare.json
    python benchmarks/bench_prepare.py --sizes 0.05 --out /tmp/prepare.json   # a quick check (about a minute)

Run it on a quiet machine: other jobs distort both time and memory.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seqba.data.paths import data_root  # noqa: E402
from seqba.data.prepare import read_lines  # noqa: E402

WMT16_OPTIONS = ["--vocab-size", "32000", "--max-len", "250", "--max-ratio", "1.5", "--src-lang", "en",
                 "--tgt-lang", "de"]
CHUNK = 50_000  # pairs generated at a time


class CorpusModel:
    """Word counts of real pairs and unigram distributions of each side, from ``opennmt-wmt-ende`` train."""

    def __init__(self, folder: Path) -> None:
        src = read_lines(folder / "src-train.txt", moses_escaped=True)
        tgt = read_lines(folder / "tgt-train.txt", moses_escaped=True)
        self.lengths = np.array([(len(s.split()), len(t.split())) for s, t in zip(src, tgt)
                                 if s.split() and t.split()], dtype=np.int64)  # (pairs, 2)
        self.vocab, self.probs = [], []
        for lines in (src, tgt):
            counts = Counter(word for line in lines for word in line.split())
            words, freq = zip(*counts.most_common())
            self.vocab.append(np.array(words, dtype=object))
            self.probs.append(np.array(freq, dtype=np.float64) / sum(freq))

    def write(self, prefix: Path, pairs: int, seed: int) -> int:
        """Write ``prefix.en`` / ``prefix.de`` with ``pairs`` lines each; return their total bytes."""
        rng = np.random.default_rng(seed)
        with open(f"{prefix}.en", "w", encoding="utf-8") as en, open(f"{prefix}.de", "w", encoding="utf-8") as de:
            for start in range(0, pairs, CHUNK):
                lengths = self.lengths[rng.integers(0, len(self.lengths), size=min(CHUNK, pairs - start))]
                for side, f in ((0, en), (1, de)):
                    words = self.vocab[side][rng.choice(len(self.vocab[side]), size=int(lengths[:, side].sum()),
                                                        p=self.probs[side])]
                    ends = np.cumsum(lengths[:, side])
                    f.writelines(" ".join(words[end - n:end]) + "\n" for n, end in zip(lengths[:, side], ends))
        return os.path.getsize(f"{prefix}.en") + os.path.getsize(f"{prefix}.de")


def run_measured(command: list[str], log: Path) -> dict:
    """Run ``command``; return its wall seconds, CPU seconds and peak memory (see the module docstring)."""
    import psutil

    peak_tree = 0
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        done = threading.Event()

        def sample() -> None:
            nonlocal peak_tree
            parent = psutil.Process(proc.pid)
            while not done.is_set():
                try:
                    tree = [parent, *parent.children(recursive=True)]
                    peak_tree = max(peak_tree, sum(p.memory_full_info().pss for p in tree))
                except psutil.Error:
                    pass
                done.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} failed ({proc.returncode}); see {log}:\n"
                         f"{log.read_text()[-2000:]}")
    return {"seconds": round(seconds, 1), "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024), "peak_tree_pss_mb": round(peak_tree / 2**20)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="0.5,1.5,4.5", help="millions of train pairs, comma-separated")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prepare.json"))
    parser.add_argument("--workdir", default=None, help="folder for the generated corpora (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the generated corpora and prepared folders")
    parser.add_argument("--data-root", default=None, help="shared corpora (default: $SEQBA_DATA or ../shared/data)")
    parser.add_argument("--workers", type=int, default=0, help="PrepareConfig.workers (0: one per usable core)")
    args = parser.parse_args(argv)
    sizes = [float(s) for s in args.sizes.split(",")]
    root = Path(args.data_root) if args.data_root else data_root()
    if root is None or not (root / "opennmt-wmt-ende").is_dir():
        raise SystemExit("error: opennmt-wmt-ende not found: pass --data-root or set SEQBA_DATA")
    model = CorpusModel(root / "opennmt-wmt-ende")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_prepare."))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        model.write(work / "valid", 3000, seed=1)
        model.write(work / "test", 3000, seed=2)
        for size in sizes:
            pairs = int(round(size * 1e6))
            corpus_bytes = model.write(work / f"train{pairs}", pairs, seed=0)
            out_dir = work / f"prepared{pairs}"
            command = [sys.executable, str(ROOT / "data_prep" / "prepare_translation.py"), "--out-dir", str(out_dir),
                       "--train-src", f"{work}/train{pairs}.en", "--train-tgt", f"{work}/train{pairs}.de",
                       "--valid-src", f"{work}/valid.en", "--valid-tgt", f"{work}/valid.de",
                       "--test-src", f"{work}/test.en", "--test-tgt", f"{work}/test.de",
                       "--workers", str(args.workers), *WMT16_OPTIONS]
            row = {"pairs": pairs, "corpus_mb": round(corpus_bytes / 2**20),
                   **run_measured(command, work / f"prepare{pairs}.log")}
            manifest = json.loads((out_dir / "manifest.json").read_text())
            row["spm_input_sentence_size"] = manifest["config"]["spm_input_sentence_size"]
            results.append(row)
            print(f"{pairs:>9,d} pairs  {row['corpus_mb']:>5d} MB of text  {row['seconds']:>7.1f} s wall  "
                  f"{row['cpu_seconds']:>7.1f} CPU-s  peak RSS {row['peak_rss_mb']:>5d} MB (one process), "
                  f"{row['peak_tree_pss_mb']:>5d} MB (tree, PSS)", flush=True)
            if not args.keep:
                shutil.rmtree(out_dir)
                for suffix in ("en", "de"):
                    os.remove(work / f"train{pairs}.{suffix}")
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    import sentencepiece

    report = {"benchmark": "prepare", "options": WMT16_OPTIONS, "workers": args.workers,
              "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
              "python": platform.python_version(), "sentencepiece": sentencepiece.__version__,
              "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
