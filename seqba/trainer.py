"""The training loop of every recipe: ``Trainer(cfg, callbacks).train()``.

Where things are, by name::

    setup()             Accelerator, run-directory lock, task, model + optimizer, resume, config.yaml
    train()             the loop below; returns the final validation metrics
    train_step(batches) ONE update: expand -> sample chunks -> backward -> normalise/clip -> step; returns logs
    after_update(logs)  callbacks.on_update_end (metrics log, progress, ...), then validate / save at intervals
    end_of_epoch()      validate + save when the intervals are per epoch; next epoch
    finished            max_updates / max_epochs reached
    validate()          eval mode, task.validate, best model file, callbacks.on_validation_end
    save_checkpoint()   finite check, atomic resume checkpoint, checkpoint_last.pt

The loop::

    while not finished:
        for batches in update_windows(epoch):      # train.update_freq batches; the epoch's last window may be short
            logs = train_step(batches)
            after_update(logs)
            if finished: break
        else:
            end_of_epoch()
    validate(); save_checkpoint()

Updates never span an epoch and every checkpoint falls between updates, so a resume continues exactly (the
position is the epoch and the number of batches consumed in it; the task and RNG states are restored too).

Gradient normalisation (fairseq's): every backward is of a loss SUMMED over its rows; DDP averages gradients over
ranks, so ``train_step`` multiplies them by ``world_size / total``, where ``total`` is the update's sample size
(target tokens, words or images) summed over ranks and batches: the gradient of the mean loss per token of the
whole update, whatever the split into ranks, batches and sample chunks. All backward passes but the update's
last run under ``accelerator.no_sync`` (one all-reduce per update).

Non-finite values: an update whose loss or gradient is NaN/inf (fp16 overflow aside: the scaler skips those) stops
the run with :class:`~seqba.errors.NonFiniteError`, and so do non-finite parameters at a save. A checkpoint
counts as known good once an update after it has finished with a finite loss; older checkpoints are pruned only
then, so ``train.keep_checkpoints`` never deletes the last known-good one. When the update right after a
checkpoint blows up, that checkpoint (whose weights produced the NaN) is set aside as ``nonfinite_step_*`` and
``latest`` points at the known-good one again.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list

from seqba import config as config_lib
from seqba.ba import BatchAugmentation
from seqba.callbacks import Callback
from seqba.checkpoint import (latest_checkpoint, load_checkpoint, point_latest, prune_checkpoints, save_checkpoint,
                              save_model_file, set_aside)
from seqba.distributed import main_process_first, seed_worker_rngs
from seqba.errors import CheckpointError, ConfigError, NonFiniteError
from seqba.observers import recipe_callbacks
from seqba.optim import build_optimizer, lr_multiplier
from seqba.precision import resolve_precision
from seqba.runlock import RunLock
from seqba.tasks import TASKS

__all__ = ["Trainer"]

logger = logging.getLogger("seqba.train")


class Trainer:
    """Runs one experiment ``cfg`` (a :class:`seqba.config.Config`).

    Args:
        cfg: the resolved config (``seqba.config.load``).
        callbacks: extra observers (:class:`seqba.callbacks.Callback`), called after the built-in metrics log and
            progress bar.

    Attributes (after :meth:`setup`):
        state: the loop position, saved in every checkpoint: ``epoch``, ``iterations_in_epoch`` (batches consumed
            in the epoch), ``num_updates``, ``best`` (best validation value) and ``known_good`` (newest checkpoint
            folder confirmed finite).
        accelerator, task, model (prepared), optimizer (prepared), output_dir.

    Raises (from :meth:`setup` / :meth:`train`):
        ConfigError: ``ba.group_size`` does not divide the number of processes.
        RunLockedError: another live run holds ``output_dir``.
        ConfigError: ``train.resume=none`` on an ``output_dir`` that already holds a run.
        CheckpointError: the checkpoint to resume from is unreadable, of another model, written by another number
            of processes, or trained on data whose fingerprint differs from today's (``TaskSpec.fingerprint``).
        NonFiniteError: a NaN/inf loss, gradient or parameter (the message names the checkpoint to resume from).
    """

    def __init__(self, cfg: config_lib.Config, callbacks: Sequence[Callback] = ()) -> None:
        self.cfg = cfg
        self.extra_callbacks = list(callbacks)
        self.output_dir = Path(cfg.output_dir)
        self.config_dict = config_lib.to_dict(cfg)
        self.state: dict[str, Any] = {"epoch": 0, "iterations_in_epoch": 0, "num_updates": 0, "best": None,
                                      "known_good": None}
        self.provisional: str | None = None  # newest checkpoint not yet followed by a finite update
        self._validated_finite_at: int | None = None  # update whose weights last validated to a finite loss
        self._exit = contextlib.ExitStack()
        self._callback_states: dict[str, dict] = {}  # from the checkpoint resumed, for the callbacks of setup()
        self._tick = time.perf_counter()  # start of the current update's clock (train_step's `seconds`)

    # -- setup ----------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Build everything and resume; writes nothing but the lock before the resume has succeeded."""
        self._setup_accelerator()
        self._lock_output_dir()
        self._setup_task_and_model()
        self._resume()
        self._start_output_dir()
        self.callbacks: list[Callback] = recipe_callbacks(self.cfg.train, self.output_dir) + self.extra_callbacks
        for callback in self.callbacks:  # an open metrics window, ... (saved by save_checkpoint)
            saved = self._callback_states.get(type(callback).__name__)
            if saved is not None:
                callback.load_state_dict(saved)

    def _setup_accelerator(self) -> None:
        tc, ba = self.cfg.train, self.cfg.ba
        # Accelerate only picks gloo for a multi-process launch without CUDA when told cpu=True.
        multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        if tc.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise ConfigError("train.mixed_precision=fp16 needs a CUDA GPU (loss-scaled fp16 training); on the CPU "
                              "use bf16")
        # "auto": the faster of fp32 and bf16 here, timed once per machine and model (seqba.precision)
        self.precision, how = resolve_precision(tc.mixed_precision, self.config_dict,
                                                int(os.environ.get("WORLD_SIZE", "1")))
        self.accelerator = Accelerator(cpu=multi_cpu, mixed_precision=self.precision,
                                       log_with=None if tc.log_with == "none" else tc.log_with,
                                       project_dir=str(self.output_dir / "trackers"),
                                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])
        if self.accelerator.num_processes % ba.group_size:
            raise ConfigError(f"ba.group_size={ba.group_size} must divide the number of processes "
                              f"({self.accelerator.num_processes})")
        logging.basicConfig(level=logging.INFO if self.accelerator.is_main_process else logging.WARNING,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        for noisy in ("accelerate", "matplotlib"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        logger.info("mixed precision: %s (%s)", self.precision, how)

    def _on_main_process(self, check: Callable[[], None]) -> None:
        """Run ``check`` on the main process; every rank raises the error it raised, before any other collective."""
        with main_process_first(self.accelerator):
            if self.accelerator.is_main_process:
                check()

    def _lock_output_dir(self) -> None:
        """Main process takes the run-directory lock; every rank learns whether it succeeded."""
        self._on_main_process(lambda: self._exit.enter_context(RunLock(self.output_dir / ".lock")))

    def _setup_task_and_model(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        spec = TASKS[cfg.task]
        self.task = spec.task_class(cfg, acc)
        self.ba = BatchAugmentation(cfg.ba, self.task, spec.batch_unit)  # copies, chunks and counters of a step
        model = self.task.build_model()
        optimizer = build_optimizer(cfg.optim, self.task.param_groups(model))
        if cfg.train.compile:  # the eager module stays reachable for evaluation and saving
            model = torch.compile(model, dynamic=self.task.compile_dynamic)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        fingerprint = spec.fingerprint  # the data this run reads: recorded in checkpoints and model files
        self.corpus = fingerprint(cfg) if fingerprint is not None else None
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        seed_worker_rngs(cfg.seed, acc.process_index)  # distinct dropout / augmentation per rank
        logger.info("task %s, %d processes, %.2fM parameters, M=%d, sample_chunks=%d, group_size=%d", cfg.task,
                    acc.num_processes, sum(p.numel() for p in self.model.parameters()) / 1e6, cfg.ba.repeats,
                    cfg.ba.sample_chunks, cfg.ba.group_size)

    def _resume(self) -> None:
        resume = self.cfg.train.resume
        if resume == "none":
            self._on_main_process(self._refuse_to_overwrite)
            return
        if resume == "auto":
            path = latest_checkpoint(self.output_dir, repair=self.accelerator.is_main_process)
            if self.accelerator.num_processes > 1:  # the main process may have repaired the folder
                path = broadcast_object_list([path])[0]
        else:
            path = Path(resume)
        if path is None:
            return
        self._check_process_count(path)
        loaded = load_checkpoint(self.accelerator, path)
        recorded = loaded.get("corpus")
        if recorded is not None and self.corpus is not None and recorded != self.corpus:
            raise CheckpointError(f"cannot resume from {path}: it was trained on data with fingerprint {recorded}, "
                                  f"but {self._data_where()} now has fingerprint {self.corpus} (rebuilt with other "
                                  "options?); restore that data, or start afresh in another output_dir")
        self.state.update(loaded["loop"])
        self.task.load_state_dict(loaded["task"])
        self._callback_states = loaded.get("callbacks", {})
        self.provisional = path.name if path.parent == self.output_dir / "checkpoints" else None
        logger.info("resumed from %s at update %d (epoch %d, batch %d)", path, self.state["num_updates"],
                    self.state["epoch"], self.state["iterations_in_epoch"])

    def _check_process_count(self, path: Path) -> None:
        """A checkpoint's batch position is per rank: resuming it with another number of processes would silently
        train on another sharding, so it is refused (``complete.json`` records the count)."""
        try:
            written = json.loads((path / "complete.json").read_text()).get("num_processes")
        except (OSError, ValueError, AttributeError):
            return  # an older or incomplete checkpoint: load_checkpoint reports what is missing
        here = self.accelerator.num_processes
        if written is not None and written != here:
            raise CheckpointError(f"cannot resume from {path}: it was written by {written} process(es) and this "
                                  f"run has {here}; resume with the same number (accelerate launch --num_processes "
                                  f"{written} ...), or start afresh in another output_dir")

    def _data_where(self) -> str:
        data = getattr(self.cfg, "data", None)
        folder = getattr(data, "prepared_dir", None) or getattr(data, "root", None)
        return f"the data folder {folder}" if folder else "the data"

    def _refuse_to_overwrite(self) -> None:
        """``train.resume=none`` starts from update 0: refuse where that would replace another run's files."""
        out = self.output_dir
        held = [name for name in ("metrics.jsonl", "checkpoint_best.pt", "checkpoint_last.pt") if (out / name).exists()]
        if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
            held.append("checkpoints/")
        if held:
            raise ConfigError(f"train.resume=none: {out} already holds a run ({', '.join(held)}); it would be "
                              "overwritten. Continue it with train.resume=auto, or choose another output_dir (or "
                              "move that folder away) to start afresh")

    def _start_output_dir(self) -> None:
        """The run has started cleanly: record its config (a failed resume leaves the old one in place)."""
        if self.accelerator.is_main_process:
            text = yaml.safe_dump(self.config_dict, sort_keys=False)
            tmp = self.output_dir / ".config.yaml.tmp"
            tmp.write_text(text)
            os.replace(tmp, self.output_dir / "config.yaml")
        self.accelerator.wait_for_everyone()

    # -- the loop -------------------------------------------------------------------------------------------------
    @property
    def total_updates(self) -> int:
        tc = self.cfg.train
        if tc.max_updates > 0:
            return tc.max_updates
        return tc.max_epochs * math.ceil(self.task.num_batches(0) / tc.update_freq)

    @property
    def finished(self) -> bool:
        tc, s = self.cfg.train, self.state
        return (tc.max_updates > 0 and s["num_updates"] >= tc.max_updates) or (
            tc.max_epochs > 0 and s["epoch"] >= tc.max_epochs)

    def train(self) -> dict[str, float]:
        """Set up, run the loop to the end, validate and save; return the final validation metrics."""
        with self._exit:
            self.setup()
            self._emit("on_train_begin")
            if self.finished:
                metrics = self._already_finished()
                self._emit("on_train_end", metrics)
                return metrics
            self._tick = time.perf_counter()
            try:
                while not self.finished:
                    for batches in self.update_windows(self.state["epoch"]):
                        logs = self.train_step(batches)
                        self.after_update(logs)
                        if self.finished:
                            break
                    else:
                        self.end_of_epoch()
                metrics = self.validate()
                self.save_checkpoint()
            except NonFiniteError as err:
                raise NonFiniteError(f"{err} {self._recover_from_nonfinite()}") from None
            self._emit("on_train_end", metrics)
            self.accelerator.end_training()
            return metrics

    def update_windows(self, epoch: int) -> Iterator[list[Any]]:
        """The rest of ``epoch`` in lists of ``train.update_freq`` batches (the last one may be shorter)."""
        window: list[Any] = []
        for batch in self.task.epoch_iterator(epoch, start=self.state["iterations_in_epoch"]):
            window.append(batch)
            if len(window) == self.cfg.train.update_freq:
                yield window
                window = []
        if window:
            yield window

    def train_step(self, batches: list[Any]) -> dict[str, float]:
        """One optimizer update over ``batches`` (each B distinct samples on the device); returns this rank's logs.

        Raises:
            NonFiniteError: the loss or the gradient norm is NaN/inf on some rank (nothing is stepped).
        """
        task, acc = self.task, self.accelerator
        self.model.train()
        logs: dict[str, float] = {}
        sample_size, loss_finite = 0.0, True
        for i, batch in enumerate(batches):
            expanded = self.ba.expand(batch)
            self._emit("on_train_batch", expanded, task.batch_state())
            size = self.ba.sample_size(expanded)
            sample_size += size
            for k, v in {**self.ba.counts(size), **task.step_logs(batch, expanded)}.items():
                logs[k] = logs.get(k, 0.0) + float(v)
            chunks = self.ba.split(expanded)
            for j, chunk in enumerate(chunks):
                last = i == len(batches) - 1 and j == len(chunks) - 1
                with contextlib.nullcontext() if last else acc.no_sync(self.model):
                    loss_sum, chunk_logs = task.loss(self.model, chunk)
                    acc.backward(loss_sum)  # summed: normalised by the update's total below
                for k, v in chunk_logs.items():
                    logs[k] = logs.get(k, 0.0) + float(v)
            loss_finite &= math.isfinite(logs.get("loss_sum", 0.0))
        logs["sample_size"] = sample_size
        grad_norm, finite = self._normalise_and_clip(sample_size, loss_finite)
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteError(f"non-finite loss or gradient at update {self.state['num_updates'] + 1} "
                                 f"(loss_sum={logs.get('loss_sum')}, grad_norm={grad_norm}); stopping.")
        lr = self.cfg.optim.lr * lr_multiplier(self.cfg.optim, self.state["num_updates"]) * task.lr_scale(batches[-1])
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state["num_updates"] += 1
        self.state["iterations_in_epoch"] += len(batches)
        task.after_step(self.model)
        self._confirm_provisional()
        now = time.perf_counter()
        logs.update(gnorm=grad_norm, lr=lr, seconds=now - self._tick)
        return logs

    def _normalise_and_clip(self, sample_size: float, loss_finite: bool) -> tuple[float, bool]:
        """Gradients of summed losses -> gradient of the update's mean loss (see the module docstring); clip.

        Returns the L2 norm before clipping and whether the update is finite on every rank. With a loss scaler
        (fp16) an infinite gradient is not fatal: the scaler skips the step and lowers its scale.
        """
        acc = self.accelerator
        total = acc.reduce(torch.tensor([sample_size, float(not loss_finite)], dtype=torch.float64,
                                        device=acc.device), "sum").tolist()
        acc.unscale_gradients()
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads and total[0] > 0:
            torch._foreach_mul_(grads, acc.num_processes / total[0])
        clip = self.cfg.optim.clip_norm
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip if clip > 0 else float("inf")))
        finite = total[1] == 0 and (math.isfinite(grad_norm) or acc.scaler is not None)
        return grad_norm, finite

    def after_update(self, logs: dict[str, float]) -> None:
        """Observers first (metrics log, progress), then validation and checkpoint at their update intervals."""
        self._emit("on_update_end", logs)
        tc, step = self.cfg.train, self.state["num_updates"]
        if not self.finished:  # the end of training validates and saves anyway
            if tc.validate_interval_updates and step % tc.validate_interval_updates == 0:
                self.validate()
                if not tc.save_interval_updates:
                    self.save_checkpoint()
            if tc.save_interval_updates and step % tc.save_interval_updates == 0:
                self.save_checkpoint()
        self._tick = time.perf_counter()  # throughput counts training time only

    def end_of_epoch(self) -> None:
        """Validate (logged under the epoch that ended) and save when intervals are per epoch; next epoch."""
        tc = self.cfg.train
        last = tc.max_epochs > 0 and self.state["epoch"] + 1 >= tc.max_epochs
        if not tc.validate_interval_updates and not last:
            self.validate()
        self.state["epoch"] += 1
        self.state["iterations_in_epoch"] = 0
        if not tc.validate_interval_updates and not last:
            self.save_checkpoint()
        self._tick = time.perf_counter()

    # -- validation and checkpoints -------------------------------------------------------------------------------
    def _validation_metrics(self) -> dict[str, float]:
        """The task's metrics of its eval model (eval mode, no gradients), identical on every rank."""
        model = self.task.eval_model(self.model)
        model.eval()
        with torch.no_grad():
            metrics = self.task.validate(model)
        model.train()
        self.model.train()
        if self.accelerator.num_processes > 1:  # decisions on metrics (best checkpoint, ASGD switch) agree
            metrics = broadcast_object_list([metrics])[0]
        return metrics

    @staticmethod
    def _finite(metrics: dict[str, float]) -> bool:
        return all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))

    def validate(self) -> dict[str, float]:
        """Validate the task's eval model (eval mode, no gradients); write the best model file; notify observers."""
        metrics = self._validation_metrics()
        self.task.after_validate(metrics)
        if self._finite(metrics):
            self._validated_finite_at = self.state["num_updates"]
        name, lower = self.task.best_metric
        value, best = metrics.get(name), self.state["best"]
        if value is not None and math.isfinite(value) and (best is None or (value < best if lower else value > best)):
            self.state["best"] = value
            self._save_model_file("checkpoint_best.pt", {name: value})
        logger.info("update %d valid: %s", self.state["num_updates"],
                    " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        self._emit("on_validation_end", metrics)
        return metrics

    def save_checkpoint(self) -> Path:
        """Write the resume checkpoint and ``checkpoint_last.pt`` (after checking the parameters are finite)."""
        self._check_finite_parameters()
        tc = self.cfg.train
        protect = {self.state["known_good"]} if self.state["known_good"] else set()
        path = save_checkpoint(self.accelerator, self.output_dir, self.state["num_updates"],
                               {"loop": dict(self.state), "task": self.task.state_dict(), "corpus": self.corpus,
                                "callbacks": self._callback_state_dicts()},
                               self.config_dict, tc.keep_checkpoints, protect)
        self.provisional = path.name
        if self._validated_finite_at == self.state["num_updates"]:  # these weights just validated finitely
            self._confirm_provisional()
        self._save_model_file("checkpoint_last.pt")
        self._emit("on_checkpoint_saved", path)
        return path

    def _callback_state_dicts(self) -> dict[str, dict]:
        states = {}
        for callback in self.callbacks:
            state = callback.state_dict()
            if state is not None:
                states[type(callback).__name__] = state
        return states

    def _save_model_file(self, name: str, extra: dict | None = None) -> None:
        if self.accelerator.is_main_process:
            meta = {"step": self.state["num_updates"], **({"corpus": self.corpus} if self.corpus else {}),
                    **(extra or {})}
            save_model_file(self.output_dir / name, self.task.eval_model(self.model).state_dict(),
                            self.config_dict, meta)

    def _check_finite_parameters(self) -> None:
        bad = sum(int(not torch.isfinite(p).all()) for p in self.task.eval_model(self.model).parameters())
        bad = self.accelerator.reduce(torch.tensor(float(bad), device=self.accelerator.device), "sum").item()
        if bad:
            raise NonFiniteError(f"{int(bad)} parameter tensor(s) hold NaN/inf at update {self.state['num_updates']}"
                                 "; not saving them.")

    def _confirm_provisional(self) -> None:
        """A finite update after a checkpoint: that checkpoint is known good; prune the older ones now."""
        if self.provisional is None:
            return
        self.state["known_good"], self.provisional = self.provisional, None
        if self.accelerator.is_main_process:
            prune_checkpoints(self.output_dir / "checkpoints", self.cfg.train.keep_checkpoints,
                              {self.state["known_good"]})

    def _recover_from_nonfinite(self) -> str:
        """Set aside a checkpoint whose weights blew up, point ``latest`` and ``checkpoint_last.pt`` back at the
        known-good checkpoint; return a sentence that says where to resume from."""
        root = self.output_dir / "checkpoints"
        good = self.state["known_good"]
        if self.accelerator.is_main_process and self.provisional is not None and (root / self.provisional).is_dir():
            moved = set_aside(root / self.provisional)
            logger.warning("set aside %s: the update after it was not finite", moved)
        self.accelerator.wait_for_everyone()
        if not (good and (root / good).is_dir()):
            return "No checkpoint known to be finite was written before it (nothing to resume from)."
        loaded = load_checkpoint(self.accelerator, root / good)  # its weights become checkpoint_last.pt again
        self.state.update(loaded["loop"])
        self.task.load_state_dict(loaded["task"])
        self._save_model_file("checkpoint_last.pt")
        if self.accelerator.is_main_process:
            point_latest(root, good)
        self.accelerator.wait_for_everyone()
        return (f"The last checkpoint known to be finite is {root / good}; train.resume=auto continues from it "
                "(lower optim.lr or raise warmup first).")

    def _already_finished(self) -> dict[str, float]:
        """A rerun of a finished run: make ``checkpoint_last.pt`` match the last checkpoint, prune, validate."""
        logger.info("the run in %s already finished at update %d; nothing to train", self.output_dir,
                    self.state["num_updates"])
        metrics = self._validation_metrics()
        if self._finite(metrics):
            self._confirm_provisional()  # prunes what a kill after the final checkpoint left behind
        last = self.output_dir / "checkpoint_last.pt"
        if self.accelerator.is_main_process:
            stored = None
            if last.is_file():
                with contextlib.suppress(Exception):  # a torn file is rewritten below
                    stored = torch.load(last, map_location="cpu", weights_only=True).get("step")
            if stored != self.state["num_updates"]:
                logger.info("rewriting %s (it held update %s)", last, stored)
                self._save_model_file("checkpoint_last.pt")
        self.accelerator.wait_for_everyone()
        return metrics

    def _emit(self, event: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)
