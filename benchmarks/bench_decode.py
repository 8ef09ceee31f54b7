"""Benchmark: corpus decoding speed and BLEU of seqba's beam search, against decoding without the KV cache.

On one trained translation checkpoint and one test split (default: Multi30k test_2016_flickr, 1,000 sentences),
``seqba.search.translate`` decodes the whole split under several settings, interleaved round by round (every
setting once per round, ``--rounds`` rounds) so that other jobs on shared cores disturb them alike:

* ``cached``: beam 4 with the KV cache (what ``python -m seqba.eval`` runs);
* ``uncached``: beam 4, the same search, but the decoder recomputes the whole prefix every step
  (``seqba.search.RecomputePrefix``: the obvious reference);
* ``greedy``: beam 1 with the KV cache;
* ``bf16``: beam 4 with the KV cache, ``translate(autocast_dtype=torch.bfloat16)`` (``--bf16``);
* ``cached_a{A}_b{B}``: beam 4 with output length cap ``int(A * src_len + B)`` (``--max-len A,B``, repeatable).

Reports per setting the median over rounds of sentences/s and target tokens/s (output pieces plus one eos per
sentence), sacreBLEU on the detokenized references (identical in every round), the fraction of hypotheses equal
to ``cached``'s, and the ratios of medians to ``cached``. Writes ``benchmarks/results/decode.json`` with the machine
and torch version. ``--profile`` adds a ``torch.profiler`` table of one cached pass (top ops by self CPU time).

A checkpoint (about 6 minutes on 2 CPU cores)::

    python -m seqba.train recipes/transformer_multi30k_m1.yaml output_dir=runs/m30k_m1
    python benchmarks/bench_decode.py runs/m30k_m1/checkpoint_best.pt --rounds 3 --bf16

On cores shared with other jobs use ``--threads 1``: with torch's 2 intra-op threads on 2 oversubscribed cores the
same cached pass took 6x longer (67 s vs 11 s, medians of 3 interleaved rounds, 1,000 sentences), as threads wait
for each other at every small op.

Run it from the directory the checkpoint was trained in (its recipe names the prepared corpus relative to it), or
pass ``--prepared-dir``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ratios import fmt, per_round_ratios, summarize  # noqa: E402  (benchmarks/ratios.py)
from seqba.allocator import configure_malloc  # noqa: E402
from seqba.search import DEFAULT_MAX_LEN_A, DEFAULT_MAX_LEN_B, RecomputePrefix, translate  # noqa: E402


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def load(checkpoint: str, prepared_dir: str | None, split: str, sentences: int, random_init: bool = False):
    """(model in eval mode, sources (list of 1-D int64), references (list of str), SentencePiece processor).

    ``random_init``: the checkpoint's architecture with freshly initialised weights (seed 0), an untrained model.
    """
    from seqba.data.translation import TranslationDataset, load_tokenizer, read_manifest, read_raw_lines
    from seqba.eval import load_model_file
    from seqba.tasks.translation import build_transformer

    cfg, state, _ = load_model_file(checkpoint)
    prepared = Path(prepared_dir or cfg.data.prepared_dir)
    model = build_transformer(cfg.model, int(read_manifest(prepared)["vocab_size"]))
    if random_init:
        torch.manual_seed(0)
        model = build_transformer(cfg.model, int(read_manifest(prepared)["vocab_size"]))
    else:
        model.load_state_dict(state)
    data = TranslationDataset(prepared, split)
    n = min(sentences, len(data))
    sources = [data[i]["source"] for i in range(n)]
    refs = read_raw_lines(prepared, split, "target")[:n]
    return model.eval(), sources, refs, load_tokenizer(prepared)


def settings(args) -> dict[str, dict]:
    """name -> translate() options (+ ``uncached`` / ``bf16`` flags)."""
    base = dict(beam=4, max_len_a=DEFAULT_MAX_LEN_A, max_len_b=DEFAULT_MAX_LEN_B, max_tokens=args.max_tokens)
    out = {"cached": base, "uncached": base | {"uncached": True}, "greedy": base | {"beam": 1}}
    if args.bf16:
        out["bf16"] = base | {"bf16": True}
    for spec in args.max_len:
        a, b = spec.split(",")
        out[f"cached_a{float(a):g}_b{int(b)}"] = base | {"max_len_a": float(a), "max_len_b": int(b)}
    return out


def run_once(model, sources, options: dict) -> tuple[float, list[list[int]]]:
    options = dict(options)
    uncached, bf16 = options.pop("uncached", False), options.pop("bf16", False)
    decoder = RecomputePrefix(model) if uncached else model
    start = time.perf_counter()
    hyps = translate(decoder, sources, autocast_dtype=torch.bfloat16 if bf16 else None, **options)
    return time.perf_counter() - start, hyps


def profile(model, sources, options: dict, rows: int = 15) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        run_once(model, sources, options)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
    return [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total,
             "calls": e.count} for e in events[:rows]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a translation checkpoint_best.pt (see the module docstring)")
    p.add_argument("--prepared-dir", help="prepared corpus (default: the one named in the checkpoint's config)")
    p.add_argument("--split", default="test")
    p.add_argument("--sentences", type=int, default=1000, help="first N sentences of the split")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=4096, help="padded source tokens per decoding batch")
    p.add_argument("--bf16", action="store_true", help="also time bf16 autocast")
    p.add_argument("--max-len", action="append", default=[], metavar="A,B", help="also time this length cap")
    p.add_argument("--only", help="comma-separated subset of the settings")
    p.add_argument("--profile", action="store_true", help="torch.profiler table of one cached pass")
    p.add_argument("--random-init", action="store_true", help="untrained weights of the checkpoint's architecture")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "decode.json"))
    args = p.parse_args()
    malloc = configure_malloc()  # as python -m seqba.eval does
    if args.threads:
        torch.set_num_threads(args.threads)
    import sacrebleu

    model, sources, refs, sp = load(args.checkpoint, args.prepared_dir, args.split, args.sentences,
                                     args.random_init)
    configs = settings(args)
    if args.only:
        configs = {k: v for k, v in configs.items() if k in args.only.split(",")}
    times: dict[str, list[float]] = {name: [] for name in configs}
    hyps: dict[str, list[list[int]]] = {}
    for round_ in range(args.rounds):
        for name, options in configs.items():
            seconds, hyps[name] = run_once(model, sources, options)
            times[name].append(seconds)
            print(f"round {round_ + 1}/{args.rounds} {name:>16}: {seconds:7.2f} s", flush=True)

    reference = hyps.get("cached")
    table = {}
    for name, options in configs.items():
        seconds = statistics.median(times[name])
        tgt_tokens = sum(len(h) + 1 for h in hyps[name])
        bleu = sacrebleu.corpus_bleu([sp.decode(h) for h in hyps[name]], [refs])
        table[name] = {
            "options": options, "seconds_median": seconds, "seconds": times[name],
            "sentences_per_s": len(sources) / seconds, "tgt_tokens_per_s": tgt_tokens / seconds,
            "tgt_tokens": tgt_tokens, "bleu": round(bleu.score, 2),
            "same_hypotheses_as_cached": (None if reference is None else
                                          sum(a == b for a, b in zip(hyps[name], reference)) / len(sources)),
        }
    if "cached" in table:
        for row in table.values():
            row["speed_vs_cached"] = table["cached"]["seconds_median"] / row["seconds_median"]
    print(f"\n{'setting':>16} {'sent/s':>8} {'tok/s':>8} {'x cached':>8} {'BLEU':>6} {'same':>6}")
    for name, row in table.items():
        same = row["same_hypotheses_as_cached"]
        print(f"{name:>16} {row['sentences_per_s']:>8.1f} {row['tgt_tokens_per_s']:>8.0f} "
              f"{row.get('speed_vs_cached', float('nan')):>8.2f} {row['bleu']:>6.2f} "
              f"{'' if same is None else f'{same:.3f}':>6}")
    ratios = {}  # speed ratios per round (both settings decoded in the same round), with median and range
    for key, (fast, slow) in {"cached_over_uncached": ("cached", "uncached"), "greedy_over_cached": ("greedy", "cached"),
                              "bf16_over_cached": ("bf16", "cached")}.items():
        if {fast, slow} <= times.keys():
            ratios[key] = summarize(per_round_ratios(times[slow], times[fast]), 3)
            print(f"{key}: {fmt(ratios[key])} (median (range) of {args.rounds} rounds)")
    if {"cached", "bf16"} <= table.keys():
        ratios["bf16_bleu_delta"] = table["bf16"]["bleu"] - table["cached"]["bleu"]
    print(f"rates: medians over {args.rounds} interleaved rounds; CPU cores shared with other jobs during the run")
    result = {"settings": table, "ratios": ratios, "setup": {
        "checkpoint": str(args.checkpoint), "random_init": args.random_init, "split": args.split, "sentences": len(sources),
        "rounds": args.rounds, "max_tokens": args.max_tokens, "threads": torch.get_num_threads(),
        "default_max_len": [DEFAULT_MAX_LEN_A, DEFAULT_MAX_LEN_B], "malloc": malloc,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus ({cpu_name()}), python {platform.python_version()}",
        "torch": torch.__version__, "note": "2 CPU cores shared with other jobs; settings interleaved per round"}}
    if args.profile:
        result["profile_cached"] = profile(model, sources, configs.get("cached", next(iter(configs.values()))))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
