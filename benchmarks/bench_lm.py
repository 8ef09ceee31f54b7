"""Benchmark: AWD-LSTM training throughput (words/s) without BA (M=1, B=20 columns) and with BA (M=10, 200 columns).

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
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from seqba.losses import activation_regularization, temporal_activation_regularization
from seqba.models.awd_lstm import AWDLSTM, detach_hidden

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
    parser.add_argument("--out", default="benchmarks/results/lm.json")
    args = parser.parse_args()

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
