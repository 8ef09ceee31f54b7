"""Benchmark: training throughput of seqba's loop for M=1 and M=4 (in 4 sample chunks) vs a bare PyTorch loop.

Each configuration runs in its own subprocess (so peak memory is its own) on the same model, corpus and
distinct-token budget:

* ``seqba_m1``: ``seqba.train`` with ``ba.repeats=1``;
* ``seqba_m4``: ``seqba.train`` with ``ba.repeats=4 ba.sample_chunks=4`` (each step: 4x the target tokens of M=1,
  evaluated in 4 chunks);
* ``bare_m1``: a plain loop over the same model and the same batches (built beforehand): forward, label-smoothed
  cross-entropy, backward, clip, Adam step; no Accelerate, no sampler, no logging.

Reports target tokens per second (median over the timed steps, the first ``--warmup`` steps excluded), peak memory
(CUDA: ``max_memory_allocated``; CPU: peak RSS of the process) and the ratios M=4 / M=1 and seqba / bare. Goals:
M=4 per-token throughput >= 0.95x of M=1, seqba's loop >= 0.9x of the bare loop.

MFU on this CPU: each configuration's model FLOP/s (median over the same steps; seqba logs ``model_flops_per_s``,
the bare loop counts its batches with ``seqba.flops.transformer_step_flops``: 6 x parameters x tokens plus
attention, as nanoGPT and PaLM's appendix B) over the peak GEMM FLOP/s of the step's shapes that
``benchmarks/mfu.py`` measures before and after the runs (float32 and bfloat16, one thread and all threads; the
runs' ``--precision`` and ``--threads`` pick the peak). ``--settings`` reports it for every setting.

    python benchmarks/bench_train.py                       # Transformer-base, fp32, 4096 tokens (slow on CPU)
    python benchmarks/bench_train.py --small --steps 8     # a small model for a quick look

Allocator: every child calls ``seqba.allocator.configure_malloc()`` right after its imports, as
``python -m seqba.train`` does (glibc ``mallopt``: no ``mmap``, no heap trimming), so the figures are what the
CLI gives; ``--default-malloc`` sets ``SEQBA_MALLOC=default`` for the children (glibc's defaults).

``--malloc-compare`` instead times one configuration (``--kind``, default seqba M=1) under five allocator
settings, interleaved round by round (default, default, ... then the next round) so that other jobs on shared
cores disturb them alike, and writes ``results/malloc.json`` with medians and ratios to glibc's defaults:

* ``default``: glibc's defaults (``SEQBA_MALLOC=default``);
* ``env``: ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000`` in the environment (what this script did
  before the CLI applied ``configure_malloc``);
* ``mallopt``: ``configure_malloc()`` in the process (what the CLI does);
* ``jemalloc`` / ``tcmalloc``: ``LD_PRELOAD`` of Debian's ``libjemalloc2`` / ``libtcmalloc-minimal4`` (skipped when
  not installed), with ``SEQBA_MALLOC=default``.

    python benchmarks/bench_train.py --small --steps 10 --malloc-compare --rounds 3

``--settings`` times seqba M=1 and the bare loop under fp32/bf16 x eager/compiled (``train.mixed_precision`` /
``train.compile``; the bare loop uses ``torch.autocast`` and ``torch.compile(dynamic=True)`` as the Trainer does),
interleaved, and writes ``results/train_settings.json`` with seqba/bare per setting and each setting / fp32 eager:

    python benchmarks/bench_train.py --settings --rounds 1 --steps 5 --warmup 2 --threads 1   # Transformer-base
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mfu as mfu_lib  # benchmarks/mfu.py
from ratios import per_round_ratios, summarize  # benchmarks/ratios.py

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["model.d_model=256", "model.ffn_dim=1024", "model.num_heads=4", "model.encoder_layers=3",
         "model.decoder_layers=3"]


BASE = ["model.d_model=512", "model.ffn_dim=2048", "model.num_heads=8", "model.encoder_layers=6",
        "model.decoder_layers=6"]


def write_random_corpus(out: Path, vocab_size: int, sentences: int, seed: int = 0) -> None:
    """A prepared corpus of random piece ids with WMT-like lengths (lognormal, mean ~28 tokens, clipped to
    [1, 256]), so that the benchmark has WMT16's 32k-entry softmax without a 32k SentencePiece model."""
    import numpy as np

    from seqba.data.translation import token_dtype, write_indexed

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(vocab_size)
    splits = {"train": sentences, "valid": 64}
    for split, n in splits.items():
        for lang in ("en", "de"):
            lengths = np.clip(np.round(rng.lognormal(np.log(28) - 0.18, 0.6, n)), 1, 255).astype(int)
            write_indexed(out / f"{split}.{lang}", [rng.integers(4, vocab_size, k) for k in lengths], dtype)
    manifest = {"vocab_size": vocab_size, "dtype": dtype.name, "src_lang": "en", "tgt_lang": "de",
                "splits": {split: {"sentences": n} for split, n in splits.items()}}
    (out / "manifest.json").write_text(json.dumps(manifest))


def recipe_args(args, out: Path, repeats: int, micro: int) -> list[str]:
    overrides = [
        f"output_dir={out}", f"data.prepared_dir={args.data}", "data.prepare.preset=null",
        f"data.max_tokens={args.max_tokens}",
        f"ba.repeats={repeats}", f"ba.sample_chunks={micro}", f"train.max_updates={args.steps}",
        "train.log_interval=1", "train.validate_interval_updates=0", "train.save_interval_updates=1000000",
        "train.progress_bar=false",
        "model.dropout=0.1", "optim.warmup_updates=4000", "data.required_batch_size_multiple=8",
        f"train.mixed_precision={args.precision}", f"train.compile={str(args.compile).lower()}",
    ]
    return [str(ROOT / "recipes" / "transformer_synthetic_m4.yaml"), *overrides, *(SMALL if args.small else BASE)]


def step_peaks(args) -> dict:
    """Measured GEMM peaks (benchmarks/mfu.py) of the step's shapes: ``--max-tokens`` rows, the model's d_model and
    ffn_dim, the corpus's vocabulary."""
    sizes = dict(item.split("=") for item in (SMALL if args.small else BASE))
    vocab = json.loads((Path(args.data) / "manifest.json").read_text())["vocab_size"]
    return mfu_lib.measure_peaks(mfu_lib.step_shapes(args.max_tokens, int(sizes["model.d_model"]),
                                                     int(sizes["model.ffn_dim"]), vocab))


def with_mfu(rows: list[dict], peaks: dict, precision: str, threads: int | None) -> dict:
    """MFU on this CPU of the median model FLOP/s of ``rows`` (one per round): :func:`mfu.mfu_row`."""
    return mfu_lib.mfu_row(statistics.median(r["model_flops_per_s"] for r in rows), peaks, precision, threads)


def peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_seqba(args) -> dict:
    """Run seqba.train in this process and read its per-step target tokens/s from metrics.jsonl."""
    from seqba import train
    from seqba.allocator import configure_malloc

    malloc = configure_malloc()  # as the entry point does (a second call inside train.main is a no-op)
    out = Path(args.out_dir)
    code = train.main(recipe_args(args, out, args.repeats, args.micro))
    if code:
        raise SystemExit(code)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "tokens_per_s" in r][args.warmup:]
    return {"tgt_tokens_per_s": statistics.median(r["tokens_per_s"] for r in steps),
            "model_flops_per_s": statistics.median(r["model_flops_per_s"] for r in steps), "tgt_tokens_per_step":
            statistics.mean(r["tokens_per_step"] for r in records if "tokens_per_step" in r),
            "peak_memory_mb": peak_memory_mb(args.device), "malloc": malloc}


def child_bare(args) -> dict:
    """A bare PyTorch loop over the same model and batches, with none of seqba's machinery."""
    import torch
    import torch.nn.functional as F

    from seqba import config as config_lib
    from seqba.data.translation import TranslationDataset, collate, read_manifest
    from seqba.flops import transformer_step_flops
    from seqba.samplers import TokenBudgetBatchSampler
    from seqba.tasks.translation import build_transformer
    from seqba.allocator import configure_malloc

    malloc = configure_malloc()  # the same allocator settings as the CLI
    cfg = config_lib.load(*(lambda a: (a[0], a[1:]))(recipe_args(args, Path(args.out_dir), 1, 1)))
    torch.manual_seed(cfg.seed)
    device = torch.device(args.device)
    data = TranslationDataset(cfg.data.prepared_dir, "train")
    sampler = TokenBudgetBatchSampler(data.num_tokens, cfg.data.max_tokens, required_batch_size_multiple=8, seed=1)
    batches = [collate([data[i] for i in ids]) for ids, _ in zip(sampler, range(args.steps))]
    vocab_size = int(read_manifest(cfg.data.prepared_dir)["vocab_size"])
    model = build_transformer(cfg.model, vocab_size).to(device)
    m = cfg.model  # model FLOPs of each batch, counted as seqba's trainer logs them (seqba.flops)
    flops = [transformer_step_flops(b["src_lengths"].numpy(), b["target"].ne(0).sum(1).numpy(), d_model=m.d_model,
                                    ffn_dim=m.ffn_dim, encoder_layers=m.encoder_layers,
                                    decoder_layers=m.decoder_layers, vocab_size=vocab_size) for b in batches]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98))
    forward = torch.compile(model, dynamic=True) if args.compile else model  # as seqba's Trainer compiles
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    rates, flops_per_s = [], []
    for batch, batch_flops in zip(batches, flops):
        start = time.perf_counter()
        src, lengths = batch["src_tokens"].to(device), batch["src_lengths"].to(device)
        prev, target = batch["prev_output_tokens"].to(device), batch["target"].to(device)
        with autocast:
            logits = forward(src, lengths, prev)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), target.view(-1), ignore_index=0,
                                   label_smoothing=0.1, reduction="sum") / batch["ntokens"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        rates.append(batch["ntokens"] / seconds)
        flops_per_s.append(batch_flops / seconds)
    return {"tgt_tokens_per_s": statistics.median(rates[args.warmup:]),
            "model_flops_per_s": statistics.median(flops_per_s[args.warmup:]),
            "tgt_tokens_per_step": statistics.mean(b["ntokens"] for b in batches),
            "peak_memory_mb": peak_memory_mb(args.device), "malloc": malloc}


PRELOADS = {"jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
            "tcmalloc": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"}
MALLOC_VARS = ("SEQBA_MALLOC", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")


def malloc_env(setting: str) -> dict[str, str]:
    """Environment of a child for an allocator ``setting`` (see the module docstring)."""
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_VARS}
    if setting == "mallopt":
        return env
    env["SEQBA_MALLOC"] = "default"
    if setting == "env":
        env.update(MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_="100000000000")
    elif setting in PRELOADS:
        env["LD_PRELOAD"] = PRELOADS[setting]
    return env


def spawn(args, kind: str, repeats: int = 1, micro: int = 1, setting: str | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--child", kind, "--out-dir", tmp, "--repeats", str(repeats), "--micro",
               str(micro), "--steps", str(args.steps), "--warmup", str(args.warmup), "--max-tokens",
               str(args.max_tokens), "--device", args.device, "--data", str(args.data),
               "--precision", args.precision] + (["--small"] if args.small else []) + (
                   ["--compile"] if args.compile else [])
        env = malloc_env(setting or ("default" if args.default_malloc else "mallopt"))
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode:
            raise RuntimeError(f"{kind} failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> str:
    import torch

    return (f"{platform.machine()} {os.cpu_count()} cpus ({platform.processor() or 'cpu'}), python "
            f"{platform.python_version()}, torch {torch.__version__}, {'/'.join(platform.libc_ver())}")


def malloc_compare(args) -> None:
    """Time ``args.kind`` under each allocator setting, interleaved over ``args.rounds`` rounds."""
    settings = ["default", "env", "mallopt"] + [name for name, path in PRELOADS.items() if Path(path).exists()]
    kind, repeats = args.kind.split("_")[0], 1
    runs: dict[str, list[dict]] = {name: [] for name in settings}
    for round_ in range(args.rounds):
        for name in settings:
            runs[name].append(spawn(args, kind, repeats, 1, setting=name))
            print(f"round {round_ + 1}/{args.rounds} {name:>9}: {runs[name][-1]['tgt_tokens_per_s']:.0f} tgt tok/s",
                  flush=True)
    base = statistics.median(r["tgt_tokens_per_s"] for r in runs["default"])
    table = {}
    for name in settings:
        rates = [r["tgt_tokens_per_s"] for r in runs[name]]
        per_round = [r / d["tgt_tokens_per_s"] for r, d in zip(rates, runs["default"])]
        table[name] = {"tgt_tokens_per_s_median": statistics.median(rates), "runs": rates,
                       "ratio_to_default": statistics.median(rates) / base, "ratio_per_round": per_round,
                       "ratio_per_round_median": statistics.median(per_round),
                       "ratio": summarize(per_round, 3),  # the headline: median (range) of the per-round ratios
                       "peak_memory_mb_median": statistics.median(r["peak_memory_mb"] for r in runs[name]),
                       "malloc": runs[name][0]["malloc"]}
    print(f"{'setting':>9} {'tgt tok/s':>10} {'x default':>9} {'per round':>18} {'peak MB':>8}")
    for name, row in table.items():
        rounds = "/".join(f"{r:.2f}" for r in row["ratio_per_round"])
        print(f"{name:>9} {row['tgt_tokens_per_s_median']:>10.0f} {row['ratio_to_default']:>9.2f} {rounds:>18} "
              f"{row['peak_memory_mb_median']:>8.0f}")
    print("medians of per-run medians; runs interleaved round by round; CPU cores shared with other jobs")
    result = {"kind": args.kind, "settings": table, "setup": {
        "model": "small (d256, 3+3)" if args.small else "Transformer-base", "vocab_size": args.vocab_size,
        "max_tokens": args.max_tokens, "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
        "threads": args.threads or "torch default", "device": args.device, "machine": machine(),
        "note": "2 CPU cores shared with other jobs; interleaved"}}
    out = Path(args.out).with_name("malloc.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


SETTINGS = {"fp32_eager": ("no", False), "bf16_eager": ("bf16", False), "fp32_compiled": ("no", True),
            "bf16_compiled": ("bf16", True)}


def settings_compare(args) -> None:
    """seqba M=1 and the bare loop under each of ``SETTINGS``, interleaved over ``args.rounds`` rounds.

    Every figure is a ratio to a reference timed in the same run: seqba / bare under the same setting, and each
    setting / fp32 eager of the same loop. Compilation happens in the warm-up steps, which are not timed.
    """

    peaks_before = step_peaks(args)
    runs: dict[str, dict[str, list[dict]]] = {name: {"seqba": [], "bare": []} for name in SETTINGS}
    for round_ in range(args.rounds):
        for name, (precision, compiled) in SETTINGS.items():
            for kind in ("bare", "seqba"):
                child_args = argparse.Namespace(**{**vars(args), "precision": precision, "compile": compiled})
                runs[name][kind].append(spawn(child_args, kind))
                print(f"round {round_ + 1}/{args.rounds} {name:>13} {kind:>5}: "
                      f"{runs[name][kind][-1]['tgt_tokens_per_s']:.0f} tgt tok/s", flush=True)
    peaks = mfu_lib.best_peaks(peaks_before, step_peaks(args))
    median = lambda rows: statistics.median(r["tgt_tokens_per_s"] for r in rows)  # noqa: E731
    ref = {kind: median(runs["fp32_eager"][kind]) for kind in ("seqba", "bare")}
    table = {}
    for name in SETTINGS:
        seqba, bare = median(runs[name]["seqba"]), median(runs[name]["bare"])
        table[name] = {"seqba_tgt_tokens_per_s": seqba, "bare_tgt_tokens_per_s": bare,
                       "seqba_over_bare": seqba / bare, "seqba_over_fp32_eager": seqba / ref["seqba"],
                       "bare_over_fp32_eager": bare / ref["bare"],
                       "seqba_peak_memory_mb": statistics.median(r["peak_memory_mb"] for r in runs[name]["seqba"]),
                       "bare_peak_memory_mb": statistics.median(r["peak_memory_mb"] for r in runs[name]["bare"]),
                       "runs": {kind: [r["tgt_tokens_per_s"] for r in rows] for kind, rows in runs[name].items()},
                       "mfu": {kind: with_mfu(rows, peaks, SETTINGS[name][0], args.threads)
                               for kind, rows in runs[name].items()}}
        rate = {kind: [r["tgt_tokens_per_s"] for r in runs[name][kind]] for kind in ("seqba", "bare")}
        base = {kind: [r["tgt_tokens_per_s"] for r in runs["fp32_eager"][kind]] for kind in ("seqba", "bare")}
        table[name]["per_round"] = {  # the headlines: median (range) of ratios taken inside each round
            "seqba_over_bare": summarize(per_round_ratios(rate["seqba"], rate["bare"]), 3),
            "seqba_over_fp32_eager": summarize(per_round_ratios(rate["seqba"], base["seqba"]), 3),
            "bare_over_fp32_eager": summarize(per_round_ratios(rate["bare"], base["bare"]), 3)}
    print(f"{'setting':>13} {'seqba tok/s':>11} {'bare tok/s':>10} {'seqba/bare':>10} {'x fp32 eager':>12} "
          f"{'MFU seqba':>9} {'MFU bare':>8}")
    for name, row in table.items():
        print(f"{name:>13} {row['seqba_tgt_tokens_per_s']:>11.0f} {row['bare_tgt_tokens_per_s']:>10.0f} "
              f"{row['seqba_over_bare']:>10.2f} {row['seqba_over_fp32_eager']:>12.2f} "
              f"{100 * row['mfu']['seqba']['mfu']:>8.1f}% {100 * row['mfu']['bare']['mfu']:>7.1f}%")
    print(mfu_lib.describe(peaks) + "\n  MFU on this CPU: " + mfu_lib.FLOPS_NOTE)
    result = {"settings": table, "peaks": peaks, "mfu_note": mfu_lib.FLOPS_NOTE, "setup": {
        "model": "small (d256, 3+3)" if args.small else "Transformer-base", "vocab_size": args.vocab_size,
        "max_tokens": args.max_tokens, "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
        "threads": args.threads or "torch default", "device": args.device, "machine": machine(),
        "malloc": "default" if args.default_malloc else "seqba.allocator.configure_malloc()"}}
    out = Path(args.out).with_name("train_settings.json" if not args.small else "train_settings_small.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--small", action="store_true", help="d_model 256, 3+3 layers instead of Transformer-base")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", default=None, help="a prepared corpus (default: random ids, 32k vocabulary)")
    p.add_argument("--vocab-size", type=int, default=32000, help="vocabulary of the default random corpus")
    p.add_argument("--default-malloc", action="store_true", help="SEQBA_MALLOC=default: glibc's defaults")
    p.add_argument("--malloc-compare", action="store_true", help="time --kind under five allocator settings")
    p.add_argument("--kind", default="seqba_m1", choices=["seqba_m1", "bare_m1"], help="for --malloc-compare")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians and per-round ratios reported)")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the children (default: torch's choice)")
    p.add_argument("--precision", default="no", choices=["no", "bf16"], help="train.mixed_precision of the runs")
    p.add_argument("--compile", action="store_true", help="train.compile=true (bare loop: torch.compile, dynamic)")
    p.add_argument("--settings", action="store_true",
                   help="seqba M=1 and the bare loop under fp32/bf16 x eager/compiled, interleaved (settings.json)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train.json"))
    p.add_argument("--child", choices=["seqba", "bare"], help=argparse.SUPPRESS)
    p.add_argument("--out-dir", help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--micro", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        result = child_seqba(args) if args.child == "seqba" else child_bare(args)
        print(json.dumps(result))
        return

    if args.data is None:
        args.data = Path(tempfile.mkdtemp(prefix="seqba-bench-")) / "corpus"
        write_random_corpus(args.data, args.vocab_size, sentences=max(2000, 200 * args.steps))
    if args.malloc_compare:
        malloc_compare(args)
        return
    if args.settings:
        settings_compare(args)
        return
    peaks_before = step_peaks(args)
    runs: dict[str, list[dict]] = {"bare_m1": [], "seqba_m1": [], "seqba_m4": []}
    for round_ in range(args.rounds):  # interleaved: the three configurations back to back in every round
        runs["bare_m1"].append(spawn(args, "bare"))
        runs["seqba_m1"].append(spawn(args, "seqba", 1, 1))
        runs["seqba_m4"].append(spawn(args, "seqba", 4, 4))
        print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(
            f"{name} {rows[-1]['tgt_tokens_per_s']:.0f}" for name, rows in runs.items()) + " tgt tok/s", flush=True)
    peaks = mfu_lib.best_peaks(peaks_before, step_peaks(args))
    rate = {name: [r["tgt_tokens_per_s"] for r in rows] for name, rows in runs.items()}
    results = {name: {"tgt_tokens_per_s": statistics.median(rate[name]), "runs": rate[name],
                      "tgt_tokens_per_step": rows[0]["tgt_tokens_per_step"],
                      "peak_memory_mb": statistics.median(r["peak_memory_mb"] for r in rows),
                      "model_flops_per_s": [round(r["model_flops_per_s"]) for r in rows],  # per round
                      "mfu": with_mfu(rows, peaks, args.precision, args.threads)}
               for name, rows in runs.items()}
    # the headlines: median (range) of the ratios taken inside each round
    results["ratio_m4_over_m1"] = summarize(per_round_ratios(rate["seqba_m4"], rate["seqba_m1"]), 3)
    results["ratio_seqba_over_bare"] = summarize(per_round_ratios(rate["seqba_m1"], rate["bare_m1"]), 3)
    results["setup"] = {"model": "small (d256, 3+3)" if args.small else "Transformer-base", "corpus": str(args.data),
                        "vocab_size": args.vocab_size, "max_tokens":
                        args.max_tokens, "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
                        "device": args.device,
                        "malloc": "default" if args.default_malloc else "seqba.allocator.configure_malloc()",
                        "precision": args.precision, "compile": args.compile,
                        "threads": args.threads or "torch default", "machine": machine()}
    results["peaks"], results["mfu_note"] = peaks, mfu_lib.FLOPS_NOTE
    for key, value in results.items():
        if key not in ("peaks", "mfu_note"):
            print(f"{key:>22}: {value}")
    for name in runs:
        print(f"{name:>22}: {mfu_lib.fmt_mfu(results[name]['mfu'])}")
    print(mfu_lib.describe(peaks) + "\n  " + mfu_lib.FLOPS_NOTE)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
