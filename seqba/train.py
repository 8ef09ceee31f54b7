"""Train any recipe with Batch Augmentation: ``accelerate launch -m seqba.train RECIPE.yaml [key=value ...]``.

Also runs as ``python -m seqba.train RECIPE.yaml`` (one process). On a CPU-only machine,
``accelerate launch --multi_gpu --num_processes 2 -m seqba.train ...`` starts two gloo processes.

One step (see :mod:`seqba.tasks.base`): the task yields B distinct samples on the device, expands them to M·B rows
(``repeat_batch``; per-copy augmentation for images), the loop evaluates them in ``ba.micro_batches`` chunks with
gradients accumulated (equal to the whole M·B batch up to float error), clips, sets the learning rate and steps.
``train.update_freq`` accumulates over batches with ``accelerator.accumulate``.

Writes to ``output_dir``: ``config.yaml``, ``metrics.jsonl`` (one JSON object per log interval and validation),
``curves.png`` (learning curves), ``checkpoints/`` (atomic Accelerate state + loop/task/RNG state, for
``train.resume=auto``), ``checkpoint_best.pt`` and ``checkpoint_last.pt`` (model weights + config, what
``seqba.eval`` reads). A non-finite loss or gradient stops the run with exit status 1 and the last good
checkpoint kept.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list
from tqdm.auto import tqdm

from seqba import config as config_lib
from seqba.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from seqba.distributed import seed_worker_rngs
from seqba.optim import build_optimizer, lr_multiplier
from seqba.plots import plot_curves
from seqba.tasks import TASKS

logger = logging.getLogger("seqba.train")

FAULT_ENV = "SEQBA_FAULT_KILL_AFTER_UPDATE"  # test hook: SIGKILL this process right after that update


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm of a step was NaN or infinite."""


def save_model_file(path: Path, model: torch.nn.Module, cfg: config_lib.Config, extra: dict | None = None) -> None:
    """Write ``{"config", "model", **extra}`` to ``path`` atomically (what ``seqba.eval`` loads)."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"config": config_lib.to_dict(cfg), "model": model.state_dict(), **(extra or {})}, tmp)
    os.replace(tmp, path)


class MetricsLog:
    """Appends JSON lines to ``metrics.jsonl`` on the main process and redraws ``curves.png``."""

    def __init__(self, output_dir: Path, enabled: bool) -> None:
        self.path = output_dir / "metrics.jsonl"
        self.png = output_dir / "curves.png"
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def truncate(self, step: int) -> None:
        """Drop records after ``step`` (written by a run killed after its last checkpoint) and torn lines."""
        if self.enabled and self.path.exists():
            kept = []
            for line in self.path.read_text().splitlines(keepends=True):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a write cut short by a kill
                    continue
                if record.get("step", 0) <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text("".join(kept))
            os.replace(tmp, self.path)

    def plot(self) -> None:
        if self.enabled and self.path.exists():
            plot_curves(self.path, self.png)


def train(cfg: config_lib.Config) -> dict[str, float]:
    """Run the experiment ``cfg``; return the last validation metrics."""
    tc, ba = cfg.train, cfg.ba
    if tc.max_updates <= 0 and tc.max_epochs <= 0:
        raise config_lib.ConfigError("set train.max_updates or train.max_epochs")
    if ba.repeats < 1 or ba.micro_batches < 1:
        raise config_lib.ConfigError(f"ba.repeats and ba.micro_batches must be >= 1, got {ba.repeats}, {ba.micro_batches}")
    # Accelerate only picks gloo for a multi-process launch without CUDA when told cpu=True.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(
        cpu=multi_cpu,
        gradient_accumulation_steps=tc.update_freq,
        mixed_precision=tc.mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )
    if accelerator.num_processes % ba.group_size:
        raise config_lib.ConfigError(f"ba.group_size={ba.group_size} must divide the number of processes "
                                     f"({accelerator.num_processes})")
    output_dir = Path(cfg.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(yaml.safe_dump(config_lib.to_dict(cfg), sort_keys=False))
    accelerator.wait_for_everyone()
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("accelerate", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    task = TASKS[cfg.task].task_class(cfg, accelerator)
    model = task.build_model()
    optimizer = build_optimizer(cfg.optim, task.param_groups(model))
    model, optimizer = accelerator.prepare(model, optimizer)
    seed_worker_rngs(cfg.seed, accelerator.process_index)  # distinct dropout / augmentation per rank
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("task %s, %d processes, %.2fM parameters, M=%d, micro_batches=%d, group_size=%d", cfg.task,
                accelerator.num_processes, n_params / 1e6, ba.repeats, ba.micro_batches, ba.group_size)

    state = {"epoch": 0, "iterations_in_epoch": 0, "num_updates": 0, "best": None}
    resume_from = None
    if tc.resume == "auto":
        resume_from = latest_checkpoint(output_dir)
    elif tc.resume != "none":
        resume_from = Path(tc.resume)
    if resume_from is not None:
        loaded = load_checkpoint(accelerator, resume_from)
        state.update(loaded["loop"])
        task.load_state_dict(loaded["task"])
        logger.info("resumed from %s at update %d (epoch %d, batch %d)", resume_from, state["num_updates"],
                    state["epoch"], state["iterations_in_epoch"])

    log = MetricsLog(output_dir, accelerator.is_main_process)
    log.truncate(state["num_updates"])
    cfg_dict = config_lib.to_dict(cfg)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    fault_step = int(os.environ.get(FAULT_ENV, "0"))
    total = tc.max_updates if tc.max_updates > 0 else tc.max_epochs * task.num_batches(0) // tc.update_freq
    bar = tqdm(total=total, initial=state["num_updates"], disable=not (tc.progress_bar and accelerator.is_main_process),
               desc=cfg.task, dynamic_ncols=True)

    def checkpoint() -> None:
        save_checkpoint(accelerator, output_dir, state["num_updates"],
                        {"loop": dict(state), "task": task.state_dict()}, cfg_dict, tc.keep_checkpoints)
        if accelerator.is_main_process:
            save_model_file(output_dir / "checkpoint_last.pt", task.eval_model(model), cfg, {"step": state["num_updates"]})

    def validate() -> dict[str, float]:
        metrics = task.validate(task.eval_model(model))
        if accelerator.num_processes > 1:  # decisions taken on metrics (best checkpoint, ASGD switch) agree on all ranks
            metrics = broadcast_object_list([metrics])[0]
        task.after_validate(metrics)
        name, lower = task.best_metric
        value = metrics.get(name)
        best = state["best"]
        if value is not None and (best is None or (value < best if lower else value > best)):
            state["best"] = value
            if accelerator.is_main_process:
                save_model_file(output_dir / "checkpoint_best.pt", task.eval_model(model), cfg,
                                {"step": state["num_updates"], name: value})
        log.write({"step": state["num_updates"], "epoch": state["epoch"], **{f"valid_{k}": v for k, v in metrics.items()}})
        logger.info("update %d valid: %s", state["num_updates"], " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        log.plot()
        return metrics

    window: dict[str, float] = {}
    window_start = time.perf_counter()
    metrics: dict[str, float] = {}
    pending_size, pending_finite = 0.0, True  # target tokens / words / images and loss sanity of this update
    done = ((tc.max_updates > 0 and state["num_updates"] >= tc.max_updates)
            or (tc.max_epochs > 0 and state["epoch"] >= tc.max_epochs))
    if done:
        logger.info("the run in %s already finished at update %d; nothing to train", output_dir, state["num_updates"])
        return task.validate(task.eval_model(model))
    while not done:
        epoch = state["epoch"]
        for batch in task.epoch_iterator(epoch, start=state["iterations_in_epoch"]):
            state["iterations_in_epoch"] += 1
            with accelerator.accumulate(model):
                expanded = task.expand(batch)
                sample_size = task.sample_size(expanded)
                chunks = task.split(expanded, ba.micro_batches)
                step_logs: dict[str, float] = task.step_logs(batch, expanded)
                for i, chunk in enumerate(chunks):
                    last = i == len(chunks) - 1
                    sync = contextlib.nullcontext() if last else accelerator.no_sync(model)
                    with sync:
                        loss_sum, logs = task.loss(model, chunk)
                        accelerator.backward(loss_sum)  # summed: normalised by the update's total below
                    for k, v in logs.items():
                        step_logs[k] = step_logs.get(k, 0.0) + float(v)
                step_logs["sample_size"] = float(sample_size)
                pending_size += float(sample_size)
                pending_finite &= math.isfinite(step_logs.get("loss_sum", 0.0))
                if not accelerator.sync_gradients:
                    _accumulate(window, step_logs)
                    continue
                grad_norm, finite = _normalise_and_clip(accelerator, params, pending_size, pending_finite,
                                                        cfg.optim.clip_norm)
                pending_size, pending_finite = 0.0, True
                if not finite:
                    optimizer.zero_grad(set_to_none=True)
                    raise NonFiniteLossError(
                        f"non-finite loss or gradient at update {state['num_updates'] + 1} (loss_sum="
                        f"{step_logs.get('loss_sum')}, grad_norm={grad_norm}); stopping. The last good checkpoint "
                        f"in {output_dir / 'checkpoints'} is kept.")
                lr = cfg.optim.lr * lr_multiplier(cfg.optim, state["num_updates"]) * task.lr_scale(batch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state["num_updates"] += 1
            task.after_step(model)
            step_logs.update(gnorm_sum=grad_norm, lr_sum=lr, updates=1.0)
            _accumulate(window, step_logs)
            bar.update(1)

            if state["num_updates"] % tc.log_interval == 0:
                record = _summarise(accelerator, window, time.perf_counter() - window_start)
                record = {"step": state["num_updates"], "epoch": epoch, **record}
                log.write(record)
                bar.set_postfix(loss=f"{record.get('loss', float('nan')):.3f}", lr=f"{lr:.2e}")
                window, window_start = {}, time.perf_counter()
            done = (tc.max_updates > 0 and state["num_updates"] >= tc.max_updates)
            paused = time.perf_counter()
            if tc.validate_interval_updates and state["num_updates"] % tc.validate_interval_updates == 0 and not done:
                metrics = validate()
                if not tc.save_interval_updates:
                    checkpoint()
            if tc.save_interval_updates and state["num_updates"] % tc.save_interval_updates == 0 and not done:
                checkpoint()
            window_start += time.perf_counter() - paused  # throughput counts training time only
            if fault_step and state["num_updates"] == fault_step:
                os.kill(os.getpid(), signal.SIGKILL)
            if done:
                break
        else:
            done = tc.max_epochs > 0 and state["epoch"] + 1 >= tc.max_epochs
            if not tc.validate_interval_updates and not done:
                metrics = validate()  # logged under the epoch that just ended
            state["epoch"] += 1
            state["iterations_in_epoch"] = 0
            if not tc.validate_interval_updates and not done:
                checkpoint()
    bar.close()
    metrics = validate()
    checkpoint()
    accelerator.end_training()
    return metrics


def _normalise_and_clip(accelerator: Accelerator, params: list[torch.Tensor], sample_size: float,
                        loss_finite: bool, clip_norm: float) -> tuple[float, bool]:
    """Turn the accumulated gradients of summed losses into the gradient of the update's mean loss; clip.

    Each rank back-propagated summed losses; DDP averaged them over ranks and Accelerate divided by
    ``update_freq``. Multiplying by ``world_size * update_freq / total`` (total = the update's sample size summed
    over ranks and accumulated batches) normalises by the true number of target tokens (words, images) of the
    update, as fairseq does, whatever the batch sizes of the ranks and batches were.

    Returns the gradient L2 norm before clipping and whether the update is finite on every rank. With a loss
    scaler (fp16) an infinite gradient is not fatal: the scaler skips the step and lowers its scale.
    """
    total = accelerator.reduce(torch.tensor([sample_size, float(not loss_finite)], dtype=torch.float64,
                                            device=accelerator.device), "sum").tolist()
    accelerator.unscale_gradients()
    grads = [p.grad for p in params if p.grad is not None]
    if grads and total[0] > 0:
        torch._foreach_mul_(grads, accelerator.num_processes * accelerator.gradient_accumulation_steps / total[0])
    max_norm = clip_norm if clip_norm > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    finite = total[1] == 0 and (math.isfinite(grad_norm) or accelerator.scaler is not None)
    return grad_norm, finite


def _accumulate(window: dict[str, float], logs: dict[str, float]) -> None:
    for k, v in logs.items():
        window[k] = window.get(k, 0.0) + v


def _summarise(accelerator: Accelerator, window: dict[str, float], seconds: float) -> dict[str, float]:
    """Turn summed per-step logs of all ranks into per-token means and rates.

    ``loss``/``nll`` are ``loss_sum``/``nll_sum`` over ``sample_size`` (nats per target token or word);
    ``ppl = exp(nll)``; every other ``*_count`` key becomes a per-step mean and a ``*_per_s`` rate.
    """
    keys = sorted(window)
    values = torch.tensor([window[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    values = accelerator.reduce(values, "sum")
    summed = dict(zip(keys, values.tolist()))
    updates = max(window.get("updates", 1.0), 1.0)  # per rank
    out: dict[str, float] = {}
    size = summed.get("sample_size", 0.0)
    if size:
        out["loss"] = summed.get("loss_sum", 0.0) / size
        if "nll_sum" in summed:
            out["nll"] = summed["nll_sum"] / size
            out["ppl"] = math.exp(min(out["nll"], 50.0))
    for k in ("correct", "accuracy"):
        if f"{k}_sum" in summed and size:
            out[k] = summed[f"{k}_sum"] / size
    out["lr"] = window.get("lr_sum", 0.0) / updates
    out["gnorm"] = window.get("gnorm_sum", 0.0) / updates
    for k, v in summed.items():
        if k.endswith("_count"):
            name = k[: -len("_count")]
            out[f"{name}_per_step"] = v / updates
            out[f"{name}_per_s"] = v / max(seconds, 1e-9)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seqba.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="YAML recipe, e.g. recipes/transformer_wmt16_m4.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. ba.repeats=1 train.max_updates=100")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)
    try:
        cfg = config_lib.load(args.recipe, args.overrides)
    except (config_lib.ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(config_lib.to_dict(cfg), sort_keys=False))
        return 0
    try:
        metrics = train(cfg)
    except (NonFiniteLossError, config_lib.ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"final_valid": metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
