"""One prepared check of seqba on a machine with one CUDA GPU, in under 8 minutes (issue 21).

Each stage runs in its own subprocess (its own process group) with a timeout cut to what is left of ``--budget``;
a stage that fails or times out is recorded so, with the tail of its log, and the script goes on:

1. ``cuda_tests``: ``python -m pytest -q -m cuda tests`` (``tests/test_cuda.py``: kernels, the fork and short
   fp32/bf16/fp16 runs against the CPU). If collecting the whole suite fails (a package the machine lacks), it
   reruns on ``tests/test_cuda.py`` alone and says so.
2. ``train``: first the peak matmul FLOP/s of this GPU, measured here: ``torch.matmul`` in bf16 and fp16 on the
   step's GEMM shapes ((T, 512) x (512, 512 | 2048 | 32000) and (T, 2048) x (2048, 512), T = 4,096 and 16,384 rows)
   and 8192^3, timed with CUDA events (warm-up, then rounds of >= 50 ms; the best round of the best shape is the
   peak), as :func:`seqba.flops.matmul_peak` does on the CPU. Then Transformer-base (d 512, FFN 2048, 8 heads, 6+6
   layers, 32k vocabulary, 4,096 distinct tokens per batch) through ``python -m seqba.train`` with
   ``recipes/transformer_synthetic_m4.yaml`` and ``benchmarks/bench_train.py``'s overrides (``recipe_args``) on a
   random-id corpus (``write_random_corpus``), eager: bf16 M=1, bf16 M=4 (``--m4-chunks`` sample chunks, default
   1), fp16 M=1 (Accelerate's loss scaler), ``--updates`` updates each. Per run: the median over the logged
   windows after ``--warmup`` updates (``train.log_interval=1``) of target tokens/s (all M copies),
   distinct tokens/s and ``model_flops_per_s`` (logged by the translation task: 6 x parameters x tokens +
   attention, :mod:`seqba.flops`); MFU = model FLOP/s over the measured peak of the run's dtype, and, labelled as
   such, over the vendor's dense datasheet figure of the detected GPU (H100/H200 989 TFLOP/s, A100 312) where known.
   Peak memory: ``torch.cuda.max_memory_allocated`` (and ``max_memory_reserved``) read at the end of the training
   process itself (this script's ``--child train`` runs ``seqba.train`` as ``python -m`` would, through ``runpy``,
   then reads them), not nvidia-smi: the caching allocator's high-water mark, without the CUDA context.
3. ``decode``: ``python -m seqba.eval --beam 4`` on the bf16 M=1 checkpoint over the corpus's 1,000-sentence test
   split (random ids; a word-level SentencePiece model of exactly 32k pieces is written with the corpus so that
   ``seqba.eval`` reads it as a prepared corpus): sentences/s and tokens/s (output pieces + one eos per
   sentence, as ``bench_decode.py`` counts; the model is barely trained, so its outputs mostly run to the length
   cap 1.2 x source + 10).
4. ``study``: when at least ``--min-study`` seconds are left, a one-seed study of the Multi30k recipe at full size,
   ``python -m seqba.compare recipes/transformer_multi30k_m4.yaml --seeds 1 --arms
   fixed_steps,fixed_samples,ba,ba_symkl,ba_fork_enc --arm ba_symkl:ba.consistency=sym_kl,ba.consistency_alpha=3``
   (alpha 3 as in ``docs/studies/multi30k_4k_long``), test BLEU with beam 4; when the budget runs out first the
   finished arms are reported (``--report-only``) and the stage is marked ``timeout``. Needs the raw Multi30k in
   ``--data-root`` (default ``$SEQBA_DATA``, else ``../shared/data``): copy ``../shared/data/multi30k`` into a folder
   of the checkout that ``.git/info/exclude`` ignores and pass it, since ``../shared`` does not travel.

Writes ``benchmarks/results/device_check.json`` and ``device_check.md``::

    python benchmarks/device_check.py --data-root .devdata     # on the GPU machine
    python benchmarks/device_check.py --smoke                  # CPU, toy sizes, < 3 min; writes to a temp folder

On a lent machine (the device tool), the raw Multi30k copied once into an ignored folder of the checkout
(``mkdir -p .devdata && cp -r ../shared/data/multi30k .devdata/ && echo /.devdata/ >> .git/info/exclude``), carry
``.devdata`` and run ``python3 benchmarks/device_check.py --data-root .devdata --out $OUT --logs $OUT/logs.tar.gz``
with a timeout of about 540 s; copy ``device_check.json`` and ``.md`` into ``benchmarks/results/``.

``--smoke`` runs every stage on the CPU (``CUDA_VISIBLE_DEVICES=``) at toy size: a 1+1-layer d 32 model, vocabulary
1,000, 5 updates, 8 test sentences, the CPU's peak by :func:`seqba.flops.matmul_peak`, fp16 skipped (it needs
CUDA), and the study as 2 arms x 3 updates on the random corpus. Its outputs go to ``--out`` or a temp folder,
never over the committed GPU results. Without a GPU and without ``--smoke`` the script refuses to run.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import runpy
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from bench_train import BASE, recipe_args, write_random_corpus  # benchmarks/bench_train.py

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TINY = ["model.d_model=32", "model.ffn_dim=64", "model.num_heads=2", "model.encoder_layers=1",
        "model.decoder_layers=1"]
# Dense bf16/fp16 tensor-core datasheet figures of the SXM parts (nvidia-smi names them plainly, e.g. "NVIDIA H200");
# PCIe and NVL variants run lower and get none.
VENDOR_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
TRAIN_RUNS = {"bf16_m1": ("bf16", 1), "bf16_m4": ("bf16", 4), "fp16_m1": ("fp16", 1)}
ARMS = "fixed_steps,fixed_samples,ba,ba_symkl,ba_fork_enc"
SYMKL_ARM = "ba_symkl:ba.consistency=sym_kl,ba.consistency_alpha=3"
# (sizes, timeouts in seconds) of a GPU run and of --smoke
SIZES = {
    "gpu": dict(vocab=32000, train_sentences=12000, test_sentences=1000, max_tokens=4096, updates=40, warmup=10,
                model=BASE, budget=450, t_tests=100, t_peak=40, t_train=80, t_decode=80, min_study=150),
    "smoke": dict(vocab=1000, train_sentences=400, test_sentences=8, max_tokens=256, updates=5, warmup=1,
                  model=TINY, budget=170, t_tests=60, t_peak=20, t_train=45, t_decode=40, min_study=40),
}


def cuda_matmul_peak(shapes, dtype, repeat: int = 5, min_ms: float = 50.0) -> dict:
    """The fastest ``torch.matmul`` FLOP/s over ``shapes`` ((m, k, n): (m, k) @ (k, n)) on the current CUDA device,
    timed with CUDA events: 3 warm-up products, then ``repeat`` rounds of enough products to last ``min_ms``; the
    best round counts. Inputs are random normal (zeros run faster). Same return shape as
    :func:`seqba.flops.matmul_peak`."""
    import torch

    per_shape = {}
    for m, k, n in shapes:
        a = torch.randn(m, k, device="cuda", dtype=dtype)
        b = torch.randn(k, n, device="cuda", dtype=dtype)
        c = torch.empty(m, n, device="cuda", dtype=dtype)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(3):
            torch.matmul(a, b, out=c)
        start.record()
        torch.matmul(a, b, out=c)
        end.record()
        end.synchronize()
        calls = max(1, int(min_ms / max(start.elapsed_time(end), 1e-3)))
        best = 0.0
        for _ in range(repeat):
            start.record()
            for _ in range(calls):
                torch.matmul(a, b, out=c)
            end.record()
            end.synchronize()
            best = max(best, 2.0 * m * k * n * calls / (start.elapsed_time(end) / 1e3))
        per_shape[f"{m}x{k}x{n}"] = best
        del a, b, c
    torch.cuda.empty_cache()
    name = max(per_shape, key=per_shape.get)
    return {"flops_per_s": per_shape[name], "shape": name, "per_shape": per_shape,
            "dtype": str(dtype).removeprefix("torch.")}


def child_peak(args) -> dict:
    """Peak matmul FLOP/s per dtype of the step's GEMM shapes (CUDA events on a GPU, seqba.flops on the CPU)."""
    import torch

    from seqba.flops import matmul_peak

    d, f = (512, 2048) if not args.smoke else (32, 64)
    shapes = [(t, kk, n) for t in (args.max_tokens, 4 * args.max_tokens)
              for kk, n in ((d, d), (d, f), (f, d), (d, args.vocab))]
    if torch.cuda.is_available():
        shapes.append((8192, 8192, 8192))
        return {name: cuda_matmul_peak(shapes, dtype) for name, dtype in
                (("bf16", torch.bfloat16), ("fp16", torch.float16))}
    result = {"bf16": matmul_peak(shapes, torch.bfloat16, repeat=2, min_seconds=0.05),
              "fp32": matmul_peak(shapes, torch.float32, repeat=2, min_seconds=0.05)}
    return {k: {**v, "shape": "x".join(map(str, v["shape"]))} for k, v in result.items()}


def child_train(args) -> dict:
    """``python -m seqba.train ARGS`` in this process (through runpy), then its peak memory."""
    import torch

    sys.argv = ["seqba.train", *args.train_args]
    try:
        runpy.run_module("seqba.train", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    if torch.cuda.is_available():
        return {"exit_code": code, "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20,
                "peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20,
                "peak_memory_kind": "torch.cuda.max_memory_allocated"}
    return {"exit_code": code, "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_memory_kind": "peak RSS of the process (CPU)"}


class Stages:
    """Runs stage subprocesses against one deadline and records each one's status, seconds and log tail."""

    def __init__(self, budget: float, env: dict, logs: Path) -> None:
        self.deadline, self.env, self.logs = time.monotonic() + budget, env, logs
        self.started = time.monotonic()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, cmd: list[str], timeout: float) -> dict:
        """Run ``cmd`` for at most ``min(timeout, time left)`` seconds; kill its process group on timeout.
        Returns ``{"status": ok|failed|timeout, "seconds", "timeout_s", "rc", "log", "tail"}``, or status skipped
        when under 5 s are left."""
        if self.left() < 5:
            return {"status": "skipped", "reason": "the budget is spent", "seconds": 0, "rc": None, "tail": ""}
        timeout = min(timeout, self.left())
        log = self.logs / f"{name}.log"
        start = time.monotonic()
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                rc = None
                _kill_group(proc, signal.SIGTERM)  # the stage's own process group: seqba.compare's children too
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
                _kill_group(proc, signal.SIGKILL)  # whatever ignored SIGTERM (the group may be gone already)
                proc.wait()
        status = "timeout" if rc is None else ("ok" if rc == 0 else "failed")
        text = log.read_text(errors="replace")
        reason = {"timeout": f"timed out after {timeout:.0f} s", "failed": f"exit code {rc}"}.get(status)
        return {"status": status, **({"reason": reason} if reason else {}),
                "seconds": round(time.monotonic() - start, 1), "timeout_s": round(timeout),
                "rc": rc, "log": str(log), "tail": text[-3000:] if status != "ok" else text[-300:]}


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the process group that ``proc`` leads (started with ``start_new_session``)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def make_corpus(folder: Path, vocab: int, train: int, test: int) -> None:
    """``write_random_corpus`` (train + 64 valid sentences of random ids), plus a ``test`` split of ``test``
    sentences, a word-level SentencePiece model of exactly ``vocab`` pieces (pad 0, unk 1, bos 2, eos 3) and the
    raw text of valid/test (the ids decoded), so that ``seqba.eval`` and ``seqba.compare`` read it as prepared."""
    import sentencepiece as spm

    from seqba.data.prepare import train_sentencepiece
    from seqba.data.translation import BOS_ID, EOS_ID, PAD_ID, SPM_MODEL, UNK_ID, TranslationDataset

    write_random_corpus(folder, vocab, train)
    with tempfile.TemporaryDirectory() as tmp:
        write_random_corpus(Path(tmp), vocab, test, seed=1)
        for lang in ("en", "de"):
            for ext in ("bin", "idx"):
                shutil.move(Path(tmp) / f"train.{lang}.{ext}", folder / f"test.{lang}.{ext}")
    words = [_word(i) for i in range(vocab)]
    model = train_sentencepiece([" ".join(words[i:i + 16]) for i in range(0, vocab, 16)], model_type="word",
                                vocab_size=vocab, hard_vocab_limit=False, pad_id=PAD_ID, unk_id=UNK_ID,
                                bos_id=BOS_ID, eos_id=EOS_ID, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=model)
    if len(sp) != vocab:
        raise RuntimeError(f"word model has {len(sp)} pieces, wanted {vocab}")
    (folder / SPM_MODEL).write_bytes(model)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["splits"]["test"] = {"sentences": test}
    manifest["special_ids"] = {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for split in ("valid", "test"):
        data = TranslationDataset(folder, split)
        for side, lang in (("source", "en"), ("target", "de")):
            lines = [sp.decode([t for t in data[i][side].tolist() if t > EOS_ID]) for i in range(len(data))]
            (folder / f"{split}.{lang}.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _word(i: int) -> str:
    """A distinct lowercase word for every i >= 0 (base 26)."""
    letters = chr(97 + i % 26)
    while i >= 26:
        i //= 26
        letters += chr(97 + i % 26)
    return letters


def train_figures(run_dir: Path, warmup: int, peak: dict, precision: str, vendor: float | None) -> dict:
    """Medians over the logged updates after ``warmup`` of tokens/s, distinct tokens/s and model FLOP/s; MFU."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "tokens_per_s" in r]
    steps = [r for r in logged if r["step"] > warmup] or logged
    median = lambda key: statistics.median(r[key] for r in steps)  # noqa: E731
    out = {"updates_timed": len(steps), "tokens_per_s": median("tokens_per_s"),
           "distinct_tokens_per_s": median("distinct_tokens_per_s"), "tokens_per_step": median("tokens_per_step"),
           "model_flops_per_s": median("model_flops_per_s"),
           "last_loss": [r["loss"] for r in records if "loss" in r][-1]}
    measured = peak.get(precision)
    if measured:
        out["mfu_measured_peak"] = out["model_flops_per_s"] / measured["flops_per_s"]
    if vendor:
        out["mfu_vendor_peak"] = out["model_flops_per_s"] / vendor
    return out


def stage_train(stages: Stages, args, size: dict, work: Path, machine: dict) -> dict:
    """Measure the matmul peak, then train each of TRAIN_RUNS; figures per run (see the module docstring)."""
    result: dict = {"model": "tiny (d32, 1+1)" if args.smoke else "Transformer-base (d512, FFN 2048, 8 heads, 6+6)",
                    "vocab_size": size["vocab"], "max_tokens": size["max_tokens"], "updates": size["updates"],
                    "warmup_updates": size["warmup"], "m4_sample_chunks": args.m4_chunks, "compile": False,
                    "runs": {}}
    make_corpus(work / "corpus", size["vocab"], size["train_sentences"], size["test_sentences"])
    peak_json = work / "peak.json"
    run = stages.run("peak", [sys.executable, __file__, "--child", "peak", "--json", str(peak_json),
                              "--vocab", str(size["vocab"]), "--max-tokens", str(size["max_tokens"])]
                     + (["--smoke"] if args.smoke else []), size["t_peak"])
    result["peak"] = {**json.loads(peak_json.read_text()), "seconds": run["seconds"]} if run["status"] == "ok" else run
    vendor = machine.get("vendor_peak_flops_per_s")
    for name, (precision, repeats) in TRAIN_RUNS.items():
        if precision == "fp16" and not machine["cuda"]:
            result["runs"][name] = {"status": "skipped", "reason": "fp16 (Accelerate's loss scaler) needs a CUDA GPU"}
            continue
        out = work / name
        bench = argparse.Namespace(data=work / "corpus", max_tokens=size["max_tokens"], steps=size["updates"],
                                   precision=precision, compile=False, small=False)
        train_args = [*recipe_args(bench, out, repeats, args.m4_chunks if repeats > 1 else 1), *size["model"]]
        child_json = work / f"{name}.json"
        run = stages.run(f"train_{name}", [sys.executable, __file__, "--child", "train", "--json", str(child_json),
                                           "--", *train_args], size["t_train"])
        if run["status"] == "ok":
            run.update(json.loads(child_json.read_text()))
            try:
                run.update(train_figures(out, size["warmup"], result.get("peak", {}), precision, vendor))
            except (OSError, KeyError, ValueError, statistics.StatisticsError) as err:
                run.update(status="failed", reason=f"metrics.jsonl: {type(err).__name__}: {err}")
        result["runs"][name] = {"precision": precision, "repeats": repeats, **run}
    result["seconds"] = round(sum(r.get("seconds", 0) for r in [result["peak"], *result["runs"].values()]), 1)
    statuses = {r["status"] for r in result["runs"].values()} - {"skipped"}
    statuses.add(result["peak"].get("status", "ok"))
    result["status"] = "ok" if statuses == {"ok"} else "failed" if "failed" in statuses else "timeout"
    if statuses == {"skipped"}:
        result.update(status="skipped", reason="the budget was spent before training")
    return result


def stage_decode(stages: Stages, size: dict, work: Path, machine: dict) -> dict:
    """``python -m seqba.eval --beam 4`` on the bf16 M=1 checkpoint: sentences/s and tokens/s."""
    import sentencepiece as spm

    checkpoint = work / "bf16_m1" / "checkpoint_last.pt"
    if not checkpoint.is_file():
        return {"status": "skipped", "reason": "no bf16 M=1 checkpoint (the train stage did not finish it)"}
    metrics = work / "decode.json"
    cmd = [sys.executable, "-m", "seqba.eval", "--checkpoint", str(checkpoint), "--beam", "4", "--split", "test",
           "--device", "cuda" if machine["cuda"] else "cpu", "--metrics-out", str(metrics),
           "--output", str(work / "hyp.test.txt")]
    run = stages.run("decode", cmd, size["t_decode"])
    if run["status"] != "ok":
        return run
    found = json.loads(metrics.read_text())
    sp = spm.SentencePieceProcessor(model_file=str(work / "corpus" / "spm.model"))
    hyps = (work / "hyp.test.txt").read_text(encoding="utf-8").splitlines()
    tokens = sum(len(sp.encode(h)) + 1 for h in hyps)  # pieces + one eos per sentence (bench_decode.py)
    return {**run, "sentences": found["sentences"], "beam": 4, "decode_seconds": found["seconds"],
            "sentences_per_s": found["sentences"] / found["seconds"], "tokens": tokens,
            "tokens_per_s": tokens / found["seconds"], "corpus": "random ids (the train stage's corpus), test split"}


def stage_study(stages: Stages, args, size: dict, work: Path) -> dict:
    """The one-seed Multi30k mini-study (smoke: 2 arms x 3 updates on the random corpus)."""
    left = stages.left()
    if left < size["min_study"]:
        return {"status": "skipped", "reason": f"{left:.0f} s of the budget left, under the {size['min_study']} s "
                                               f"a study needs"}
    study = work / "study"
    recipe = str(ROOT / "recipes" / "transformer_multi30k_m4.yaml")
    if args.smoke:
        arms, corpus = "fixed_steps,ba_symkl", "random ids (the train stage's corpus)"
        overrides = [f"data.prepared_dir={work / 'corpus'}", "data.prepare.preset=null", "train.max_updates=3",
                     "train.validate_interval_updates=3", "train.save_interval_updates=3", *TINY]
    else:
        data_root = Path(args.data_root) if args.data_root else ROOT.parent / "shared" / "data"
        if not (data_root / "multi30k" / "train.en").is_file():
            return {"status": "skipped", "reason": f"no Multi30k in {data_root}/multi30k (pass --data-root)"}
        arms, corpus = ARMS, f"Multi30k ({data_root / 'multi30k'})"
        overrides = [f"data.prepared_dir={work / 'multi30k_en_de'}"]
    cmd = [sys.executable, "-m", "seqba.compare", recipe, "--seeds", "1", "--arms", arms, "--arm", SYMKL_ARM,
           "--out", str(study), "--eval-args=--beam=4", *overrides]
    run = stages.run("study", cmd, left - 20)
    if run["status"] == "timeout":  # the finished arms, if any
        try:
            subprocess.run([*cmd, "--report-only"], cwd=ROOT, env=stages.env, capture_output=True, timeout=15)
        except subprocess.TimeoutExpired:
            run["note"] = "--report-only timed out too"
    rows = []
    if (study / "results.csv").is_file():
        with open(study / "results.csv") as f:
            rows = list(csv.DictReader(f))
    table = (study / "table.md").read_text() if (study / "table.md").is_file() else ""
    return {**run, "arms": arms.split(","), "corpus": corpus, "command": " ".join(cmd[1:]), "rows": rows,
            "table_md": table}


def stage_tests(stages: Stages, size: dict) -> dict:
    """``pytest -m cuda tests``; on a collection error, ``tests/test_cuda.py`` alone."""
    base = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"]
    run = stages.run("cuda_tests", [*base, "tests"], size["t_tests"])
    if run["rc"] in (2, 3, 4):  # interrupted / internal / usage error: most likely a module that did not import
        retry = stages.run("cuda_tests_file", [*base, "tests/test_cuda.py"], size["t_tests"])
        run = {**retry, "note": f"collecting tests/ failed (rc {run['rc']}); ran tests/test_cuda.py alone",
               "first_tail": run["tail"]}
    lines = [line for line in run["tail"].splitlines() if " in " in line and ("passed" in line or "skipped" in line
                                                                            or "failed" in line)]
    run["summary"] = lines[-1].strip("= ") if lines else ""
    if run["status"] == "ok" and "passed" not in run["summary"]:
        run.update(status="skipped", reason=f"no CUDA test ran here: {run['summary']}")
    return run


def machine_info(cuda: bool) -> dict:
    import torch

    info = {"cuda": cuda, "python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if cuda:
        name = torch.cuda.get_device_name(0)
        info.update(gpu=name, gpu_memory_gb=round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1),
                    cuda_version=torch.version.cuda)
        vendor = next((v for key, v in VENDOR_PEAK.items() if key in name and not {"PCIe", "NVL"} & set(name.split())),
                      None)
        if vendor:
            info["vendor_peak_flops_per_s"] = vendor
            info["vendor_peak_note"] = "datasheet dense bf16/fp16 tensor-core figure, not measured here"
    return info


def write_markdown(result: dict, path: Path) -> None:
    """A short human summary of ``result`` (the JSON holds every figure)."""
    m, st = result["machine"], result["stages"]
    lines = [f"# device_check ({result['mode']})", "",
             f"{m.get('gpu', 'CPU: ' + m['cpu'])}, torch {m['torch']}, {m['date']}; total {result['seconds']} s "
             f"of a {result['budget_s']} s budget.", "", "| stage | status | seconds | note |", "|---|---|---|---|"]
    for name, stage in st.items():
        note = stage.get("reason") or stage.get("summary") or stage.get("note") or ""
        lines.append(f"| {name} | {stage['status']} | {stage.get('seconds', '')} | {note} |")
    train = st["train"]
    if "runs" not in train:
        train = {"model": "?", "vocab_size": "?", "max_tokens": "?", "updates": "?", "warmup_updates": "?", "runs": {}}
    peak = {k: v["flops_per_s"] / 1e12 for k, v in train.get("peak", {}).items() if isinstance(v, dict)}
    lines += ["", f"Train: {train['model']}, vocabulary {train['vocab_size']}, {train['max_tokens']} distinct tokens "
              f"per batch, {train['updates']} updates (medians after update {train['warmup_updates']}). Measured "
              f"matmul peak (TFLOP/s): " + ", ".join(f"{k} {v:.3g}" for k, v in peak.items()), "",
              "| run | status | tokens/s | distinct tokens/s | peak memory MB | model TFLOP/s | MFU (measured peak) | "
              "MFU (vendor figure) |", "|---|---|---|---|---|---|---|---|"]
    for name, r in train["runs"].items():
        if "tokens_per_s" not in r:
            lines.append(f"| {name} | {r['status']} | {r.get('reason', '')} | | | | | |")
            continue
        vendor = f"{r['mfu_vendor_peak']:.1%}" if "mfu_vendor_peak" in r else "–"
        measured = f"{r['mfu_measured_peak']:.1%}" if "mfu_measured_peak" in r else "–"
        lines.append(f"| {name} | ok | {r['tokens_per_s']:.0f} | {r['distinct_tokens_per_s']:.0f} | "
                     f"{r['peak_memory_mb']:.0f} | {r['model_flops_per_s'] / 1e12:.3g} | "
                     f"{measured} | {vendor} |")
    dec = st["decode"]
    if "sentences_per_s" in dec:
        lines += ["", f"Decode (beam 4, {dec['sentences']} sentences): {dec['sentences_per_s']:.1f} sentences/s, "
                      f"{dec['tokens_per_s']:.0f} tokens/s."]
    if st["study"].get("table_md"):
        lines += ["", f"Study ({st['study']['corpus']}, one seed):", "", st["study"]["table_md"]]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="every stage on the CPU at toy size (< 3 min)")
    p.add_argument("--out", help="folder for device_check.json/.md (default: benchmarks/results; --smoke: a temp "
                                 "folder)")
    p.add_argument("--data-root", help="folder holding multi30k/ (default: $SEQBA_DATA, else ../shared/data)")
    p.add_argument("--budget", type=float, help="seconds for all stages (default 450; --smoke 170)")
    p.add_argument("--logs", help="also write the stages' logs into this .tar.gz")
    p.add_argument("--m4-chunks", type=int, default=1, help="ba.sample_chunks of the M=4 run")
    p.add_argument("--child", choices=["peak", "train"], help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    p.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    p.add_argument("--max-tokens", type=int, help=argparse.SUPPRESS)
    p.add_argument("train_args", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        found = child_peak(args) if args.child == "peak" else child_train(args)
        Path(args.json).write_text(json.dumps(found))
        return int(found.get("exit_code", 0))
    import torch

    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        print("error: no CUDA GPU here; run with --smoke for the CPU check", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else RESULTS if not args.smoke else Path(tempfile.mkdtemp(prefix="device_check_"))
    if args.smoke and out.resolve() == RESULTS.resolve():
        print(f"error: --smoke never writes over the committed GPU results in {RESULTS}", file=sys.stderr)
        return 2
    size = SIZES["smoke" if args.smoke else "gpu"]
    budget = args.budget or size["budget"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    if args.smoke:
        env["CUDA_VISIBLE_DEVICES"] = ""
        env.setdefault("OMP_NUM_THREADS", "1")  # toy models run fastest on one thread (as tests/conftest.py sets)
    if args.data_root:
        env["SEQBA_DATA"] = str(Path(args.data_root).resolve())
        args.data_root = env["SEQBA_DATA"]
    elif os.environ.get("SEQBA_DATA"):
        args.data_root = os.environ["SEQBA_DATA"]
    machine = machine_info(cuda)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="device_check_work_") as tmp:
        work = Path(tmp)
        stages = Stages(budget, env, work)
        result = {"mode": "smoke (CPU, toy sizes)" if args.smoke else "gpu", "budget_s": budget, "machine": machine,
                  "stages": {}}
        for name, stage in (("cuda_tests", lambda: stage_tests(stages, size)),
                            ("train", lambda: stage_train(stages, args, size, work, machine)),
                            ("decode", lambda: stage_decode(stages, size, work, machine)),
                            ("study", lambda: stage_study(stages, args, size, work))):
            try:
                result["stages"][name] = stage()
            except Exception as err:  # a broken stage is a finding; the next stage still runs
                result["stages"][name] = {"status": "failed", "reason": f"{type(err).__name__}: {err}"}
            print(f"{name}: {result['stages'][name]['status']} ({stages.left():.0f} s left)", flush=True)
        result["seconds"] = round(time.monotonic() - stages.started, 1)
        if args.logs:
            with tarfile.open(args.logs, "w:gz") as tar:
                for log in sorted(work.glob("*.log")):
                    tar.add(log, arcname=log.name)
    (out / "device_check.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, out / "device_check.md")
    print((out / "device_check.md").read_text())
    print(f"wrote {out / 'device_check.json'} and device_check.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
