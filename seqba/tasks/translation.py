"""Translation task: Transformer on a prepared parallel corpus, label-smoothed cross-entropy, BA by dropout.

Data flow of one step (M = ``ba.repeats``)::

    TokenBudgetBatchSampler (B distinct sentences, <= data.max_tokens tokens incl. padding)
      -> DataLoader + collate (CPU)          src_tokens (B, S), prev_output_tokens/target (B, T)
      -> to device once
      -> repeat_batch (device)               (M·B, S), (M·B, T): copies differ only by their dropout masks
      -> ba.sample_chunks chunks             on sentence boundaries: every copy of a sentence in one chunk
      -> loss per chunk                      label-smoothed CE summed over the M·B rows
                                             (+ ba.consistency_alpha * consistency across copies, summed over
                                             the distinct target tokens), normalised by the M·B target tokens

Label smoothing applies to the cross-entropy only; the consistency term compares the copies' model distributions
as they are (as R-Drop).

The recipe's ``data.prepare`` section describes the corpus (:class:`seqba.data.prepare.PrepareConfig`); the main
process prepares it into ``data.prepared_dir`` on first use (a no-op when up to date), so a recipe runs from raw
text in one command.

The run records itself as a user of the prepared folder (``users/`` in it): a later preparation of that folder
with other inputs or options is then refused while this run's folder holds checkpoints, unless
``data.prepare.overwrite=true``. :func:`fingerprint` (the ``TaskSpec`` hook) identifies the built corpus, so that
checkpoints record it and a resume or ``seqba.eval`` on a rebuilt corpus is refused. The valid split is checked
at setup (not empty, every pair within the validation token budget), not at the first validation.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.data import DataLoader

from seqba.data.prepare import PrepareConfig, prepare_translation, read_lines
from seqba.data.translation import (BOS_ID, EOS_ID, MANIFEST, PAD_ID, TranslationDataset, collate,
                                    corpus_fingerprint, load_tokenizer, read_manifest, read_raw_lines, record_user)
from seqba.consistency import ConsistencyTerm
from seqba.losses import cross_entropy_with_term, label_smoothed_cross_entropy, label_smoothed_nll_loss
from seqba.distributed import main_process_first
from seqba.errors import ConfigError, FieldError, SeqbaError, UsageError
from seqba.flops import transformer_step_flops
from seqba.gradstats import per_sample_grads
from seqba.layout import CopyLayout
from seqba.metrics import perplexity
from seqba.models.fork import Fork
from seqba.models.transformer import Transformer, TransformerConfig
from seqba.samplers import TokenBudgetBatchSampler
from seqba.search import DEFAULT_MAX_LEN_A, DEFAULT_MAX_LEN_B, translate
from seqba.tasks.base import GradAdapter, Task
from seqba.tasks.spec import EvalOptions, Metric, SignificanceTest, TaskSpec, option

logger = logging.getLogger(__name__)


@dataclass
class TranslationDataConfig:
    """Corpus and batching.

    Attributes:
        prepared_dir: where the binarized corpus is (or is written to).
        prepare: how to build it from raw text (preset or files, vocab size, filters); with neither a preset nor
            train files (``data.prepare.preset=null``) the corpus in ``prepared_dir`` is used as it is (e.g. one
            made with ``data_prep/prepare_translation.py``).
        max_tokens: distinct-token budget per batch before BA repetition (the paper's B: 4096), padding included.
        max_sentences: at most this many distinct sentences per batch (``None``: no limit).
        required_batch_size_multiple: batch sizes are multiples of it where the budget allows (fairseq's 8).
        skip_invalid_size: drop training pairs longer than ``max_tokens`` instead of failing.
        valid_max_tokens: token budget of validation batches (``None``: ``max_tokens``).
    """

    prepared_dir: str = "data-bin/synthetic"
    prepare: PrepareConfig = field(default_factory=lambda: PrepareConfig(preset="synthetic"))
    max_tokens: int = 4096
    max_sentences: int | None = None
    required_batch_size_multiple: int = 8
    skip_invalid_size: bool = False
    valid_max_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_tokens", "required_batch_size_multiple"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("max_sentences", "valid_max_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise FieldError(name, f"must be >= 1 or null, got {getattr(self, name)}")


@dataclass
class TranslationCriterionConfig:
    """Label-smoothed cross-entropy (Szegedy et al. 2016), normalised by target tokens."""

    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise FieldError("label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")


def select_rows(batch: dict[str, Any], rows: Tensor, pad: int = PAD_ID) -> dict[str, Any]:
    """The sentences ``rows`` (int64 (n,)) of a collated translation batch, with the padding no kept sentence needs
    trimmed and ``ntokens``/``nsentences`` recounted (a BA chunk: see :meth:`seqba.ba.BatchAugmentation.split`)."""
    target = batch["target"].index_select(0, rows)
    src_lengths = batch["src_lengths"].index_select(0, rows)
    tgt_width = int((target != pad).sum(1).max())
    src_width = int(src_lengths.max())
    return {
        "src_tokens": batch["src_tokens"].index_select(0, rows)[:, :src_width],
        "src_lengths": src_lengths,
        "prev_output_tokens": batch["prev_output_tokens"].index_select(0, rows)[:, :tgt_width],
        "target": target[:, :tgt_width],
        "sample_id": batch["sample_id"].index_select(0, rows),
        "ntokens": int((target != pad).sum()),
        "nsentences": len(rows),
    }


def build_transformer(model_cfg: TransformerConfig, vocab_size: int) -> Transformer:
    """The recipe's Transformer for a joint vocabulary of ``vocab_size`` pieces."""
    return Transformer(vocab_size, model_cfg, pad_idx=PAD_ID)


class TranslationTask(Task):
    """Transformer translation with BA (Hoffer et al. 2020, Sec. 4.2: WMT16 en-de, M=4)."""

    best_metric = ("nll", True)

    def __init__(self, cfg, accelerator) -> None:
        super().__init__(cfg, accelerator)
        data = cfg.data
        with main_process_first(accelerator):  # an error on the main process (a refused rebuild) stops every rank
            if accelerator.is_main_process and (data.prepare.preset or data.prepare.train_src):
                prepare_translation(data.prepared_dir, data.prepare, user=cfg.output_dir)  # records this run
            elif accelerator.is_main_process and (Path(data.prepared_dir) / MANIFEST).is_file():
                record_user(data.prepared_dir, cfg.output_dir)
        self.vocab_size = int(read_manifest(data.prepared_dir)["vocab_size"])
        self.train_data = TranslationDataset(data.prepared_dir, "train")
        self.valid_data = TranslationDataset(data.prepared_dir, "valid")
        self._check_valid_split()
        self.sampler = TokenBudgetBatchSampler(
            self._fit_positions(self.train_data, "train"), data.max_tokens, max_sentences=data.max_sentences,
            required_batch_size_multiple=data.required_batch_size_multiple, shuffle=True, seed=cfg.seed,
            num_replicas=accelerator.num_processes, rank=accelerator.process_index, group_size=cfg.ba.group_size,
            skip_invalid_size=data.skip_invalid_size)
        self.consistency = ConsistencyTerm.from_config(cfg.ba)  # None without ba.consistency
        ba = cfg.ba  # ba.fork_layer > 0: batches stay B rows and the model makes the M copies at layer k
        self.fork = Fork(ba.fork_layer, ba.repeats, ba.layout) if ba.fork_layer else None

    def _fit_positions(self, dataset: TranslationDataset, split: str) -> np.ndarray:
        """``num_tokens`` of ``dataset``, with pairs longer than ``model.max_positions`` marked for skipping.

        Such pairs would make the model raise mid-run (fairseq's ``filter_by_size``). They are given a length over
        the token budget, so the sampler drops and counts them when ``data.skip_invalid_size`` is set.

        Raises:
            ValueError: naming the first such pair, when ``skip_invalid_size`` is off.
        """
        limit = self.cfg.model.max_positions
        num_tokens = dataset.num_tokens
        too_long = num_tokens > limit
        if not too_long.any():
            return num_tokens
        first = int(np.flatnonzero(too_long)[0])
        if not self.cfg.data.skip_invalid_size and split == "train":
            raise ValueError(f"{split} pair {first} has {int(num_tokens[first])} tokens, more than "
                             f"model.max_positions={limit}; set data.skip_invalid_size=true to drop such pairs")
        budget = max(self.cfg.data.max_tokens, self.cfg.data.valid_max_tokens or 0)
        return np.where(too_long, budget + 1, num_tokens)

    def _check_valid_split(self) -> None:
        """Refuse, at setup, a valid split that validation could not use.

        Raises:
            SeqbaError: the split has no pair (naming the source files it was prepared from).
            ConfigError: a pair that fits the model is longer than the validation token budget (it would be
                skipped, so the loss would be measured on part of the split or on nothing), naming the key, the
                pair's line in the source file and the budget needed.
        """
        data, valid = self.cfg.data, self.valid_data
        sources = read_manifest(data.prepared_dir).get("sources", {}).get("valid", {})
        files = [str(Path(data.prepared_dir) / sources[side]["path"]) if not Path(sources[side]["path"]).is_absolute()
                 else sources[side]["path"] for side in ("src", "tgt") if side in sources]
        where = f"{files[0]} and {files[1]}" if len(files) == 2 else f"{data.prepared_dir}/valid"
        if len(valid) == 0:
            raise SeqbaError(f"the valid split of {data.prepared_dir} is empty (prepared from {where}): validation "
                             "needs at least one sentence pair; give non-empty valid files")
        budget = data.valid_max_tokens or data.max_tokens
        sizes = valid.num_tokens
        usable = sizes <= self.cfg.model.max_positions  # longer pairs are skipped by design (_fit_positions)
        over = usable & (sizes > budget)
        if over.any() or not usable.any():
            key = "data.valid_max_tokens" if data.valid_max_tokens else "data.max_tokens"
            if not usable.any():
                raise ConfigError(f"every pair of the valid split ({where}) is longer than model.max_positions="
                                  f"{self.cfg.model.max_positions} tokens: validation would measure nothing")
            first = int(np.flatnonzero(over)[0])
            raise ConfigError(f"{key}={budget} is smaller than the valid pair at line {first + 1} of {where} "
                              f"({int(sizes[first])} tokens with eos): validation would skip it; set "
                              f"data.valid_max_tokens >= {int(sizes[usable].max())} (the longest valid pair)")

    def build_model(self) -> Transformer:
        return build_transformer(self.cfg.model, self.vocab_size)

    # -- data ---------------------------------------------------------------------------------------------
    def num_batches(self, epoch: int) -> int:
        return len(self.sampler)

    def epoch_iterator(self, epoch: int, start: int = 0) -> Iterator[dict[str, Any]]:
        return self.iterate_loader(self.train_data, self.sampler, collate, epoch, start)

    def select_rows(self, batch: dict[str, Any], rows: Tensor) -> dict[str, Any]:
        return select_rows(batch, rows)

    def sample_size(self, batch: dict[str, Any]) -> float:
        return float(batch["ntokens"])

    def step_logs(self, batch: dict[str, Any], expanded: dict[str, Any]) -> dict[str, float]:
        """Sentences of the M·B rows and the step's model FLOPs (:func:`seqba.flops.transformer_step_flops`, as
        executed: a fork's shared layers once per sample), logged as ``model_flops_per_s`` for MFU."""
        fork, model = self.fork, self.cfg.model
        copies = fork.repeats if fork is not None else 1  # a forked batch holds the B distinct samples
        flops = transformer_step_flops(
            expanded["src_lengths"].cpu().numpy(), expanded["target"].ne(PAD_ID).sum(1).cpu().numpy(),
            d_model=model.d_model, ffn_dim=model.ffn_dim, encoder_layers=model.encoder_layers,
            decoder_layers=model.decoder_layers, vocab_size=self.vocab_size, repeats=copies,
            fork_layer=fork.layer if fork is not None else 0, memory_shared=fork is None or fork.shares_rows)
        return {"sentences_count": expanded["nsentences"] * copies, "model_flops_count": flops}

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Teacher-forced logits (N, T, V) and their targets (N, T): N rows of ``batch``, or M times its B samples
        when the model makes the copies (``ba.fork_layer``, training only)."""
        if self.fork is not None and model.training:
            logits = model(batch["src_tokens"], batch["src_lengths"], batch["prev_output_tokens"], fork=self.fork)
            return logits, self.fork.copy(batch["target"])
        return model(batch["src_tokens"], batch["src_lengths"], batch["prev_output_tokens"]), batch["target"]

    def loss(self, model, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        logits, target = self.forward(model, batch)  # (N, T, V), (N, T)
        epsilon = self.cfg.criterion.label_smoothing
        consistency = self.consistency if model.training else None  # the chunk holds every copy of its sentences
        logs: dict[str, Any] = {}
        if consistency is None:  # fused: no (B, T, V) float32 log-probabilities
            loss, nll = label_smoothed_cross_entropy(logits, target, epsilon, ignore_index=PAD_ID)
        else:  # CE + alpha * term, fused from the logits where that is faster (seqba.losses.cross_entropy_with_term)
            loss, nll = cross_entropy_with_term(consistency, logits, target, epsilon, logs, ignore_index=PAD_ID,
                                                compiled=self.cfg.train.compile)
        logs["nll_sum"] = nll.detach()
        logs["loss_sum"] = loss.detach()
        return loss, logs

    def row_losses(self, model: nn.Module, batch: dict[str, Any], hidden: Any = None) -> tuple[Tensor, Tensor]:
        """Per sentence: label-smoothed cross-entropy summed over its target tokens; copies in ``ba.layout``."""
        logits, target = self.forward(model, batch)  # (N, T, V), (N, T)
        lprobs = F.log_softmax(logits, dim=-1, dtype=torch.float32)
        eps, ba = self.cfg.criterion.label_smoothing, self.cfg.ba
        losses = torch.vmap(lambda lp, t: label_smoothed_nll_loss(lp, t, eps, ignore_index=PAD_ID)[0])(
            lprobs, target)  # (N,)
        return losses, CopyLayout(ba.repeats, ba.layout).copy_of_rows(len(losses), losses.device)

    # -- evaluation ---------------------------------------------------------------------------------------
    def validate(self, model) -> dict[str, float]:
        """Label-smoothed loss, nll and perplexity on the valid split (sharded over ranks, then summed)."""
        acc = self.accelerator
        sampler = TokenBudgetBatchSampler(self._fit_positions(self.valid_data, "valid"),
                                          self.cfg.data.valid_max_tokens or
                                          self.cfg.data.max_tokens, shuffle=False, num_replicas=acc.num_processes,
                                          rank=acc.process_index, skip_invalid_size=True)
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        for batch in DataLoader(self.valid_data, batch_sampler=sampler, collate_fn=collate):
            batch = self.to_device(batch)
            loss, logs = self.loss(model, batch)
            totals += torch.stack([logs["loss_sum"].double(), logs["nll_sum"].double(),
                                   torch.tensor(float(batch["ntokens"]), dtype=torch.float64, device=self.device)])
        totals = acc.reduce(totals, "sum")
        loss, nll, ntokens = totals.tolist()
        nll = nll / max(ntokens, 1)
        return {"loss": loss / max(ntokens, 1), "nll": nll, "ppl": perplexity(nll)}

    def state_dict(self) -> dict[str, Any]:
        return {"num_skipped": self.sampler.num_skipped}


@dataclass
class TranslationEvalOptions(EvalOptions):
    """``python -m seqba.eval`` options of a translation checkpoint: beam search, decoding batches, raw files.

    ``output`` defaults to ``hyp.<src file name or split>.txt`` beside the checkpoint.

    Raises:
        UsageError: ``ref`` without ``src``.
    """

    beam: int = option(4, "beam size (1: greedy)", low=1)
    lenpen: float = option(1.0, "length penalty exponent (fairseq semantics)")
    max_len_a: float = option(DEFAULT_MAX_LEN_A, "max output length = a * src_len + b", low=0)
    max_len_b: int = option(DEFAULT_MAX_LEN_B, "see --max-len-a (fairseq's 0 / 200 lets an undertrained model "
                            "decode 200 tokens)", low=1)
    max_tokens: int | None = option(None, "source tokens per decoding batch", low=1)
    batch_size: int | None = option(None, "sentences per decoding batch", low=1)
    src: str | None = option(None, "raw source text file (one segment per line) instead of --split", file="read")
    ref: str | None = option(None, "raw reference text file for --src", file="read")
    output: str | None = option(None, "hypotheses file (default: next to the checkpoint, hyp.<split>.txt)",
                                file="write")
    bf16: bool = option(False, "decode under bf16 autocast (opt-in; faster on CPUs with bf16)")

    def __post_init__(self) -> None:
        if self.ref and not self.src:
            raise UsageError("--ref needs --src (the references of --split are read from the prepared corpus)")
        if not self.output:
            name = Path(self.src).name if self.src else self.split
            self.output = str(Path(self.checkpoint).parent / f"hyp.{name}.txt")


def evaluate(cfg, model_state: dict, args: TranslationEvalOptions) -> dict[str, Any]:
    """``python -m seqba.eval`` for translation: beam search + SentencePiece decoding + sacreBLEU.

    Reads ``args.split`` of the prepared corpus (source ids from the binary files, references from the raw text
    kept at preparation), or raw ``args.src`` (+ optional ``args.ref``) files. Writes the detokenized hypotheses
    in input order to ``args.output`` (default: beside the checkpoint file). Returns ``bleu`` (when references
    exist), its sacreBLEU ``signature``, ``sentences`` and decoding ``seconds``.

    Raises:
        FileNotFoundError / ValueError: for a missing prepared corpus or split, unreadable files, or ``--src``
            and ``--ref`` of different lengths (naming both files and counts).
    """
    import sacrebleu

    device = torch.device(args.device)
    prepared = Path(cfg.data.prepared_dir)
    sp = load_tokenizer(prepared)
    model = build_transformer(cfg.model, int(read_manifest(prepared)["vocab_size"]))
    model.load_state_dict(model_state)
    model.to(device).eval()
    refs: list[str] | None
    if args.src:
        src_lines = read_lines(args.src)
        sources = [torch.tensor(sp.encode(line, out_type=int) + [EOS_ID], dtype=torch.long) for line in src_lines]
        refs = read_lines(args.ref) if args.ref else None
        if refs is not None and len(refs) != len(src_lines):
            raise ValueError(f"{args.src} has {len(src_lines)} lines but {args.ref} has {len(refs)}")
        name = Path(args.src).name
    else:
        data = TranslationDataset(prepared, args.split)
        sources = [data[i]["source"] for i in range(len(data))]
        refs = read_raw_lines(prepared, args.split, "target")
        name = args.split
    start = time.perf_counter()
    tokens = translate(model, sources, beam=args.beam, lenpen=args.lenpen, max_len_a=args.max_len_a,
                       max_len_b=args.max_len_b, max_tokens=args.max_tokens, batch_size=args.batch_size,
                       device=device, progress=True, autocast_dtype=torch.bfloat16 if args.bf16 else None,
                       bos=BOS_ID, eos=EOS_ID, pad=PAD_ID)
    seconds = time.perf_counter() - start
    hyps = [sp.decode(t) for t in tokens]
    output = Path(args.output)
    output.write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    result: dict[str, Any] = {"sentences": len(hyps), "seconds": round(seconds, 2), "beam": args.beam,
                              "max_len_a": args.max_len_a, "max_len_b": args.max_len_b, "hypotheses": str(output)}
    if refs is not None:
        bleu = sacrebleu.metrics.BLEU()
        score = bleu.corpus_score(hyps, [refs])
        print(f"{score} (signature: {bleu.get_signature()})")
        result.update(bleu=round(score.score, 2), signature=str(bleu.get_signature()))
    return result


def fingerprint(cfg) -> str | None:
    """The ``TaskSpec.fingerprint`` of translation: :func:`~seqba.data.translation.corpus_fingerprint` of
    ``data.prepared_dir`` (a hash of its manifest and SentencePiece model; None where nothing is prepared)."""
    return corpus_fingerprint(cfg.data.prepared_dir)


class TranslationGradients(GradAdapter):
    """Per-sample gradients of the M copies of a sentence (``seqba.analyze grad-correlation``).

    ``torch.func.vmap(grad)`` over the copies, ``randomness="different"`` (every copy its own dropout masks),
    training mode; loss = label-smoothed CE summed over the target tokens. (torch 2.13 has no batching rule for CPU
    ``scaled_dot_product_attention``; vmap falls back to a loop there.) Samples are sentences of a prepared split.
    """

    def build(self) -> nn.Module:
        return build_transformer(self.cfg.model, int(read_manifest(self.cfg.data.prepared_dir)["vocab_size"]))

    def samples(self, split: str, n: int, rng: np.random.Generator) -> Iterator[tuple[None, dict]]:
        data = TranslationDataset(self.cfg.data.prepared_dir, split)
        for i in rng.choice(len(data), size=min(n, len(data)), replace=False):
            batch = collate([data[int(i)]])
            yield None, {k: v[0].to(self.device) for k, v in batch.items() if torch.is_tensor(v)}

    def copy_grads(self, s: dict, copies: int) -> dict[str, Tensor]:
        eps = self.cfg.criterion.label_smoothing

        def loss_fn(params, src, src_len, prev, target):  # one sentence: (S,), (), (T,), (T,)
            logits = functional_call(self.model, params, (src[None], src_len[None], prev[None]))  # (1, T, V)
            return label_smoothed_nll_loss(F.log_softmax(logits[0], -1, dtype=torch.float32), target, eps, PAD_ID)[0]

        self.model.train()  # dropout on: the copies differ by their masks
        rep = [s[k].expand(copies, *s[k].shape) for k in ("src_tokens", "src_lengths", "prev_output_tokens", "target")]
        return per_sample_grads(loss_fn, self.params, *rep, method="vmap")


_BASELINE = "<baseline>"  # no system (arm) name has brackets


def paired_bootstrap(baseline: list[str], systems: dict[str, list[str]], references: list[str],
                     n_samples: int = 1000) -> dict[str, float]:
    """p-values of each system's corpus BLEU against ``baseline`` by paired bootstrap resampling (detokenized
    sacreBLEU defaults).

    The test is sacreBLEU's own (``sacrebleu.significance.PairedTest`` with ``test_type="bs"``, the library behind
    ``sacrebleu REF -i BASE SYS --paired-bs``; Koehn 2004, "Statistical significance tests for machine translation
    evaluation"): ``n_samples`` resamples of the test sentences, seeded by ``SACREBLEU_SEED`` (default 12345), so
    the p-values are reproducible. The p-value is the probability, under resampling, that the system's BLEU
    advantage over the baseline (or disadvantage) arises by chance.

    Args:
        baseline, systems: hypotheses, one string per test sentence, in reference order.
        references: one reference per sentence.
        n_samples: bootstrap resamples (sacreBLEU's default is 1000).

    Returns:
        system name -> p-value; 1.0 for a system whose hypotheses are the baseline's (sacreBLEU's test would give
        1 / (n_samples + 1) there: every resampled difference is 0 and none exceeds the real one, 0).

    Raises:
        ValueError: hypotheses and references of different lengths.
    """
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    for name, hyps in [(_BASELINE, baseline), *systems.items()]:
        if len(hyps) != len(references):
            raise ValueError(f"{name}: {len(hyps)} hypotheses for {len(references)} references")
    out = {name: 1.0 for name, hyps in systems.items() if list(hyps) == list(baseline)}
    named = [(_BASELINE, baseline), *((name, hyps) for name, hyps in systems.items() if name not in out)]
    if len(named) > 1:
        _, scores = PairedTest(named, {"BLEU": BLEU()}, [references], test_type="bs", n_samples=n_samples)()
        out.update({name: result.p_value for name, result in zip(scores["System"][1:], scores["BLEU"][1:])})
    return {name: out[name] for name in systems}


def split_references(cfg, split: str) -> list[str]:
    """The raw target sentences of ``split`` of the recipe's prepared corpus (the references BLEU scores)."""
    return read_raw_lines(cfg.data.prepared_dir, split, "target")


def fork_arms(cfg) -> dict[str, int]:
    """Forked BA arms of a study: after the whole encoder, and below the decoder's last layer (issue 21)."""
    model = cfg.model
    return {"ba_fork_enc": model.encoder_layers, "ba_fork_top": model.encoder_layers + model.decoder_layers - 1}


def check_config(cfg, where) -> None:
    """``ba.fork_layer`` must leave a layer above the fork (its dropout masks tell the copies apart)."""
    layers = cfg.model.encoder_layers + cfg.model.decoder_layers
    if cfg.ba.fork_layer >= layers:
        raise ConfigError(f"{where(('ba', 'fork_layer'))}: {cfg.ba.fork_layer} leaves no layer to tell the copies "
                          f"apart (the model has {layers}: encoder_layers + decoder_layers); use at most {layers - 1}")


SPEC = TaskSpec(TranslationDataConfig, TransformerConfig, TranslationCriterionConfig, TranslationTask,
                evaluate=evaluate, eval_options=TranslationEvalOptions, fingerprint=fingerprint, check=check_config,
                batch_key="data.max_tokens", batch_unit="tokens", test_metrics=(Metric("bleu", True),),
                curve_metric="ppl", test_set_options=("src", "ref"), outputs_option="output",
                significance=SignificanceTest(
                    "bleu", "sacreBLEU paired bootstrap resampling (1000 resamples) of the arm's BLEU", paired_bootstrap, split_references),
                analysis=TranslationGradients, fork_arms=fork_arms)
