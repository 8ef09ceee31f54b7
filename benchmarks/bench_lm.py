"""Benchmark: language-model training throughput: the AWD-LSTM without and with BA, and the Transformer LM through
seqba's trainer beside a bare nanoGPT-style loop (``--transformer``).

AWD-LSTM mode (the default): words/s without BA (M=1, B=20 columns) and with BA (M=10, 200 columns).

One timed step is what ``seqba.train`` does per update for the language-modeling task: forward in training mode
(all dropouts on, ``repeats=M``), summed cross-entropy + AR + TAR, backward, gradient clipping at 0.25, an SGD step,
and the hidden state carried (detached) into the next window. Random PTB-sized data (V = 10000); the same model for
both M. Reports, median over ``--steps`` timed steps after ``--warmup``:

* ``step_s``: seconds per update;
* ``words_per_s``: T * N words processed per second (N = B * M columns, all copies counted);
* ``distinct_words_per_s``: T * B distinct words per second (what the data advances).

BA at fixed B costs up to M times the work per update; what it buys is fewer updates to a given perplexity.

    python benchmarks/bench_lm.py                  # full PTB model (400/1150x3), bptt 70: slow on a CPU
    python benchmarks/bench_lm.py --small          # the small recipes' model (128/256x3), bptt 35
    python benchmarks/bench_lm.py --device cuda    # on a GPU

Writes ``benchmarks/results/lm.json`` (``--out``) and prints it.

Transformer mode (``--transformer``): words/s (all M·B rows counted) of ``recipes/transformer_lm_ptb_m4.yaml``'s
model and batches (B=20 windows of 64 PTB tokens x M=4 copies, tiled) trained two ways, each run its own process:

* ``seqba``: ``python -m seqba.train`` on the recipe (``train.mixed_precision`` no / bf16), rates read from its
  per-update ``metrics.jsonl`` records;
* ``bare``: a nanoGPT-style loop on the same model class and the same windows (the streams of
  ``seqba.data.lm.batchify``, windows in order, copies repeated): forward, mean cross-entropy, backward, clip 1.0,
  Adam step; ``torch.autocast(bfloat16)`` for bf16; no Accelerate, no BA plumbing, no logging.

Rounds interleave fp32/bf16 x bare/seqba so that other jobs on shared cores disturb them alike; the headline is the
median (range) over rounds of the per-round ratio seqba / bare (``benchmarks/ratios.py``). Validation runs on a short
valid split (the first 200 lines) so that it does not dominate the children's wall time; it is not timed.

    python benchmarks/bench_lm.py --transformer --threads 1 --rounds 3 --steps 30 --warmup 10
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ratios import per_round_ratios, summarize  # benchmarks/ratios.py

from seqba.losses import activation_regularization, temporal_activation_regularization
from seqba.models.awd_lstm import AWDLSTM, detach_hidden

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "transformer_lm_ptb_m4.yaml"

VOCAB = 10000  # PTB
FULL = {"emb_size": 400, "hidden_size": 1150, "num_layers": 3, "bptt": 70}
SMALL = {"emb_size": 128, "hidden_size": 256, "num_layers": 3, "bptt": 35}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(model: AWDLSTM, batch_size: int, repeats: int, bptt: int, steps: int, warmup: int,
          device: torch.device) -> dict[str, float]:
    """Time ``steps`` training updates on (bptt, batch_size * repeats) windows of random tokens."""
    n = batch_size * repeats
    optimizer = torch.optim.SGD(model.parameters(), lr=30.0, weight_decay=1.2e-6)
    gen = torch.Generator().manual_seed(0)
    streams = torch.randint(VOCAB, ((steps + warmup) * bptt + 1, batch_size), generator=gen)
    data = streams.repeat(1, repeats).to(device)  # (L, N): copy-major, as seqba.data.lm.repeat_streams
    hidden = model.init_hidden(n)
    model.train()
    times = []
    for k in range(steps + warmup):
        x, y = data[k * bptt:(k + 1) * bptt], data[k * bptt + 1:(k + 1) * bptt + 1]  # (T, N)
        sync(device)
        start = time.perf_counter()
        logits, hidden, raw, dropped = model(x, hidden, repeats=repeats)  # (T, N, V)
        hidden = detach_hidden(hidden)
        nll = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum")
        reg = activation_regularization(dropped[-1], 2.0) + temporal_activation_regularization(raw[-1], 1.0)
        loss = (nll + reg * x.numel()) / x.numel()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        optimizer.step()
        sync(device)
        if k >= warmup:
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    return {"repeats": repeats, "batch_size": batch_size, "columns": n, "bptt": bptt, "step_s": step_s,
            "words_per_s": bptt * n / step_s, "distinct_words_per_s": bptt * batch_size / step_s}


def ptb_slice(out: Path) -> Path:
    """A corpus folder for the Transformer runs: PTB's train split, the first 200 lines of valid and test."""
    from seqba.data.paths import data_root

    shared = data_root()
    if shared is None:
        raise SystemExit("bench_lm.py --transformer needs ../shared/data/ptb (set SEQBA_DATA)")
    (out / "ptb.train.txt").symlink_to(shared / "ptb" / "ptb.train.txt")
    for split in ("valid", "test"):
        lines = (shared / "ptb" / f"ptb.{split}.txt").read_text().splitlines(keepends=True)[:200]
        (out / f"ptb.{split}.txt").write_text("".join(lines))
    return out


def recipe_overrides(args, out: Path, precision: str) -> list[str]:
    return [f"output_dir={out}", f"data.root={args.data}", f"train.max_updates={args.steps}", "train.log_interval=1",
            "train.validate_interval_updates=0", "train.save_interval_updates=1000000", "train.progress_bar=false",
            f"train.mixed_precision={precision}"]


def child_seqba(args) -> dict:
    """``seqba.train`` on the recipe in this process; the median words/s of its updates after the warm-up."""
    from seqba import train
    from seqba.allocator import configure_malloc

    configure_malloc()  # as the entry point does
    out = Path(args.out_dir)
    if train.main([str(RECIPE), *recipe_overrides(args, out, args.precision)]):
        raise SystemExit(1)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "words_per_s" in r][args.warmup:]
    return {"words_per_s": statistics.median(r["words_per_s"] for r in steps),
            "words_per_step": statistics.median(r["words_per_step"] for r in steps)}


def child_bare(args) -> dict:
    """nanoGPT's training step on the recipe's model and windows, with nothing of seqba but the model class."""
    import torch.nn.functional as F

    from seqba import config as config_lib
    from seqba.allocator import configure_malloc
    from seqba.data.lm import batchify, load_corpus
    from seqba.models.transformer_lm import TransformerLM

    configure_malloc()
    cfg = config_lib.load(RECIPE, recipe_overrides(args, Path(args.out_dir), "no"))
    torch.manual_seed(cfg.seed)
    corpus = load_corpus(args.data)
    streams = batchify(corpus.train, cfg.data.batch_size)  # (L, B), as the task's streams
    model = TransformerLM(len(corpus.dictionary), cfg.model.arch_config())
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    t, m = cfg.data.bptt, cfg.ba.repeats
    model.train()
    rates = []
    for k in range(args.steps):
        start = time.perf_counter()
        window = streams[k * t:(k + 1) * t + 1].t()  # (B, T + 1)
        x, y = window[:, :-1].repeat(m, 1), window[:, 1:].repeat(m, 1)  # (M·B, T), copies tiled
        with autocast:
            logits = model(x)  # (M·B, T, V)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        rates.append(x.numel() / (time.perf_counter() - start))
    return {"words_per_s": statistics.median(rates[args.warmup:]), "words_per_step": float(x.numel())}


def spawn(args, kind: str, precision: str) -> dict:
    """One child run (``--child kind``) in its own process and temporary folder; its JSON result."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, __file__, "--child", kind, "--out-dir", tmp, "--precision", precision,
                               "--steps", str(args.steps), "--warmup", str(args.warmup), "--data", str(args.data)],
                              env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"{kind} {precision} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def transformer_compare(args) -> None:
    """seqba / bare words/s of the Transformer LM, fp32 and bf16, interleaved over ``args.rounds`` rounds."""
    precisions = ("no", "bf16")
    runs = {p: {"bare": [], "seqba": []} for p in precisions}
    for round_ in range(args.rounds):
        for precision in precisions:
            for kind in ("bare", "seqba"):
                runs[precision][kind].append(spawn(args, kind, precision)["words_per_s"])
                print(f"round {round_ + 1}/{args.rounds} {precision:>4} {kind:>5}: "
                      f"{runs[precision][kind][-1]:.0f} words/s", flush=True)
    table = {}
    for precision in precisions:
        rows = runs[precision]
        table["fp32" if precision == "no" else precision] = {
            "seqba_words_per_s": summarize(rows["seqba"], 1), "bare_words_per_s": summarize(rows["bare"], 1),
            "seqba_over_bare": summarize(per_round_ratios(rows["seqba"], rows["bare"]), 3)}
    for name, row in table.items():
        ratio = row["seqba_over_bare"]
        print(f"{name:>5}: seqba {row['seqba_words_per_s']['median']:.0f} words/s, bare "
              f"{row['bare_words_per_s']['median']:.0f}, seqba/bare {ratio['median']:.3f} "
              f"({ratio['min']:.3f}-{ratio['max']:.3f})")
    from seqba import config as config_lib

    cfg = config_lib.load(RECIPE)
    m = cfg.model
    result = {"benchmark": "transformer_lm_train_step", "recipe": str(RECIPE.relative_to(ROOT)),
              "model": {"vocab_size": 10000, "d_model": m.d_model, "num_layers": m.num_layers,
                        "num_heads": m.num_heads, "ffn_dim": m.ffn_dim, "bptt": cfg.data.bptt,
                        "batch_size": cfg.data.batch_size, "repeats": cfg.ba.repeats},
              "settings": table, "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
              "threads": args.threads or "torch default", "torch": torch.__version__,
              "machine": f"{platform.machine()} {os.cpu_count()} cpus",
              "note": "2-core machine shared with other jobs (other agents' tests); rounds interleaved"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the small recipes' model (emb 128, hidden 256, bptt 35)")
    parser.add_argument("--batch-size", type=int, default=20, help="B distinct streams (default 20)")
    parser.add_argument("--repeats", type=int, nargs="+", default=[1, 10], help="values of M (default 1 10)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per M")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads on CPU (0: torch's default)")
    parser.add_argument("--per-copy-masks", action="store_true", help="AWDLSTM(per_copy_masks=True)")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/lm.json (--transformer: "
                        "lm_transformer.json)")
    parser.add_argument("--transformer", action="store_true", help="the Transformer LM: seqba vs a bare loop")
    parser.add_argument("--rounds", type=int, default=3, help="--transformer: interleaved rounds")
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=["seqba", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="no", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_seqba(args) if args.child == "seqba" else child_bare(args)))
        return
    if args.transformer:
        args.out = args.out or str(ROOT / "benchmarks" / "results" / "lm_transformer.json")
        with tempfile.TemporaryDirectory() as tmp:
            args.data = ptb_slice(Path(tmp))
            transformer_compare(args)
        return
    args.out = args.out or "benchmarks/results/lm.json"

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sizes = SMALL if args.small else FULL
    results = []
    for repeats in args.repeats:
        torch.manual_seed(0)
        model = AWDLSTM(VOCAB, emb_size=sizes["emb_size"], hidden_size=sizes["hidden_size"],
                        num_layers=sizes["num_layers"], per_copy_masks=args.per_copy_masks).to(device)
        results.append(bench(model, args.batch_size, repeats, sizes["bptt"], args.steps, args.warmup, device))
        print(json.dumps(results[-1]), flush=True)
    report = {
        "benchmark": "awd_lstm_train_step",
        "model": {"vocab_size": VOCAB, **sizes, "per_copy_masks": args.per_copy_masks},
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "steps": args.steps,
        "results": results,
    }
    if len(results) > 1:
        base = results[0]
        for r in results[1:]:
            report[f"step_time_m{r['repeats']}_over_m{base['repeats']}"] = r["step_s"] / base["step_s"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
