"""Prepare a translation corpus once: read, clean, learn a joint SentencePiece BPE, binarize, write a manifest.

Pipeline (``prepare_translation``), streamed: no split is ever held in memory whole::

    source files (preset / explicit paths / HF wmt16 / synthetic), read in blocks of lines
      -> strip every line; optionally undo Moses XML escapes (&apos; -> ')
      -> TRAIN only: drop empty, > max_len words, word-length ratio > max_ratio (Moses clean-corpus-n.perl);
         kept pairs go to a scratch file in the build folder
      -> valid/test raw text kept as {split}.{lang}.txt (all lines, never filtered: BLEU needs them all)
      -> one joint SentencePiece BPE on train source + target (pad=0, unk=1, bos=2, eos=3), fed by an iterator;
         on a large corpus SentencePiece keeps a seeded sample of ``spm_input_sentence_size`` sentences
      -> every split encoded in blocks of lines, over ``workers`` processes, in order, each word looked up in a
         per-process cache (seqba.data.word_cache: the same ids), appended to {split}.{lang}.bin/.idx (see
         seqba.data.translation)
      -> manifest.json (counts, drops per filter, options, sha256 of inputs); the whole folder appears at once

Memory: the SentencePiece sample (about 0.5 kB per sentence in the trainer), a few blocks of lines per encoding
process, and 8 bytes per sentence of lengths. The output depends only on the inputs and the options that enter
the fingerprint: not on ``workers``, on the block sizes, or on ``num_threads`` (benchmarks/bench_prepare.py
measures time and peak memory; tests/test_prepare_streaming.py checks the bytes against the unstreamed reference).

``spm_input_sentence_size`` (None, the default) is resolved before anything is built: 0 (every sentence) when the
train files hold at most ``SPM_AUTO_SENTENCES`` sentences on both sides together (before cleaning), else
``SPM_AUTO_SENTENCES``; the manifest and the fingerprint record the resolved value, so a small corpus prepared
before this option existed stays up to date.

A folder in use is not rebuilt silently: runs that read it are recorded in it (``users/``, written by the
translation task), and a rebuild with other inputs or options is refused with one line while such a run's folder
still holds checkpoints (or its run lock is held), unless ``overwrite`` is set (``data.prepare.overwrite=true``).
Checkpoints record :func:`~seqba.data.translation.corpus_fingerprint`, so an overwritten corpus is then refused
at their resume and evaluation instead of being used silently.

Built in a temporary folder beside ``out_dir`` and renamed at the end, so a failed run leaves nothing. A
second run with the same inputs (by sha256) and options logs "up to date" and touches nothing.

An up-to-date rerun only hashes the inputs (the synthetic and wmt16 presets regenerate/re-export them first). One
preparation of a folder runs at a time (a lock beside it); build folders left by a killed one are removed.

Tiny run::

    python data_prep/prepare_translation.py --preset synthetic --out-dir runs/data/synthetic
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import itertools
import json
import logging
import multiprocessing
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Literal

import numpy as np

from seqba.data.paths import data_root as default_data_root
from seqba.errors import FieldError, SeqbaError
from seqba.runlock import RunLock
from seqba.data.translation import (BOS_ID, EOS_ID, MANIFEST, PAD_ID, SPLITS, SPM_MODEL, UNK_ID, IndexedWriter,
                                    recorded_users, record_user, token_dtype)
from seqba.data.word_cache import WordCachedEncoder

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
PRESETS = ("multi30k", "opennmt-wmt-ende", "wmt16-newstest", "wmt16", "synthetic")
# vocab_size used when the config leaves it None; explicit files need an explicit vocab_size.
PRESET_VOCAB_SIZE = {"multi30k": 8000, "opennmt-wmt-ende": 8000, "wmt16-newstest": 8000, "wmt16": 32000,
                     "synthetic": 1000}
_OPENNMT_SIDE = {"en": "src", "de": "tgt"}  # opennmt-wmt-ende is English -> German: src-*.txt / tgt-*.txt
# Moses deescape-special-chars.perl, in its order (&amp; last).
_MOSES_UNESCAPE = (("&bar;", "|"), ("&#124;", "|"), ("&lt;", "<"), ("&gt;", ">"), ("&bra;", "["), ("&ket;", "]"),
                   ("&quot;", '"'), ("&apos;", "'"), ("&#91;", "["), ("&#93;", "]"), ("&amp;", "&"))
_BOM = b"\xef\xbb\xbf"
# spm_input_sentence_size=None: every sentence up to this many (source + target), else a seeded sample of this many.
SPM_AUTO_SENTENCES = 2_000_000
BLOCK_BYTES = 1 << 20  # text read, cleaned and encoded per block (about 7k WMT sentences)
# Options that change how a corpus is built, never what is built: outside the fingerprint and the manifest.
_RUN_OPTIONS = ("overwrite", "workers")


class CorpusInUseError(SeqbaError):
    """A rebuild of a prepared folder that a run with checkpoints (or a live run) still reads; the message names
    the folder, the run and the option that forces it."""


@dataclass
class PrepareConfig:
    """Options of ``prepare_translation`` (flat, for a YAML recipe section). Paths are strings.

    A preset fills the six file paths; any explicit ``{split}_{side}`` path overrides the preset's file.
    Without a preset, ``train_src``/``train_tgt`` are required and valid/test are optional pairs.
    """

    preset: Literal["multi30k", "opennmt-wmt-ende", "wmt16-newstest", "wmt16", "synthetic"] | None = None
    data_root: str | None = None  # folder of the shared corpora; None: seqba.data.paths.data_root()
    train_src: str | None = None
    train_tgt: str | None = None
    valid_src: str | None = None
    valid_tgt: str | None = None
    test_src: str | None = None
    test_tgt: str | None = None
    src_lang: str = "en"
    tgt_lang: str = "de"
    vocab_size: int | None = None  # SentencePiece pieces incl. 4 specials; None: PRESET_VOCAB_SIZE[preset]
    character_coverage: float = 1.0  # SentencePiece; 1.0 suits en/de (0.9995 for large character sets)
    max_len: int = 250  # train pairs with more whitespace words on either side are dropped
    max_ratio: float = 3.0  # train pairs with word-count ratio above this are dropped (Moses default 9)
    max_train_lines: int | None = None  # use only the first N train lines (before cleaning)
    unescape_moses: bool | None = None  # None: only files a preset marks as Moses-escaped (opennmt-wmt-ende)
    seed: int = 0  # SentencePiece sampling and the synthetic corpus
    num_threads: int = 1  # SentencePiece training threads (the learned pieces do not depend on it)
    # SentencePiece learns from at most N sentences (a seeded sample when there are more); 0: every sentence;
    # None: every sentence up to SPM_AUTO_SENTENCES (2M, source + target), else a sample of that many
    spm_input_sentence_size: int | None = None
    workers: int = 0  # encoding processes; 0: one per core this process may use (the output does not depend on it)
    overwrite: bool = False  # rebuild even while a run with checkpoints reads the folder (their checkpoints break)
    synthetic_train: int = 50000  # sentence pairs generated by the synthetic preset
    synthetic_valid: int = 1000
    synthetic_test: int = 1000

    def __post_init__(self) -> None:
        """Raise :class:`~seqba.errors.FieldError` (a ``ValueError``) naming the first bad option.

        Neither a preset nor train files is valid here: a recipe then uses an already prepared corpus, and
        :func:`prepare_translation` refuses to run.
        """
        if self.preset is not None and self.preset not in PRESETS:
            raise FieldError("preset", f"unknown {self.preset!r}; expected one of {PRESETS}")
        if self.preset is None and bool(self.train_src) != bool(self.train_tgt):
            raise FieldError("train_src" if not self.train_src else "train_tgt",
                             "train_src and train_tgt must be given together")
        if self.preset is None and self.train_src and self.vocab_size is None:
            raise FieldError("vocab_size", "is required when no preset is given")
        for split in SPLITS:
            if bool(getattr(self, f"{split}_src")) != bool(getattr(self, f"{split}_tgt")) and self.preset is None:
                raise FieldError(f"{split}_src", f"{split}_src and {split}_tgt must be given together")
        if self.src_lang == self.tgt_lang:
            raise FieldError("tgt_lang", f"src_lang and tgt_lang are both {self.src_lang!r}")
        checks = {"vocab_size": self.vocab_size is None or self.vocab_size >= 8, "max_len": self.max_len >= 1,
                  "max_ratio": self.max_ratio >= 1.0, "character_coverage": 0.0 < self.character_coverage <= 1.0,
                  "max_train_lines": self.max_train_lines is None or self.max_train_lines >= 1,
                  "num_threads": self.num_threads >= 1, "workers": self.workers >= 0,
                  "spm_input_sentence_size": self.spm_input_sentence_size is None or self.spm_input_sentence_size >= 0,
                  "synthetic_train": self.synthetic_train >= 1, "synthetic_valid": self.synthetic_valid >= 1,
                  "synthetic_test": self.synthetic_test >= 1}
        for name, ok in checks.items():
            if not ok:
                raise FieldError(name, f"invalid value {getattr(self, name)!r}")


@dataclass
class _Input:
    path: Path
    moses_escaped: bool


def prepare_translation(out_dir: str | os.PathLike, config: PrepareConfig | None = None, user: str | os.PathLike |
                        None = None, **options) -> Path:
    """Prepare a corpus into ``out_dir`` (see the module docstring) and return its path.

    Args:
        out_dir: folder to create; an existing one must hold a previous ``manifest.json``.
        config: a ``PrepareConfig``; ``options`` override its fields (``prepare_translation(d, preset="multi30k")``).
        user: the run folder that will read the corpus: recorded in ``out_dir/users/`` once the corpus is ready,
            and not counted as a live user (its own run lock) when deciding whether a rebuild is allowed.

    Raises:
        ValueError: bad option, unequal line counts (naming both files and counts), invalid UTF-8 (file and
            line), vocab_size larger than the corpus allows.
        FileNotFoundError: a missing input file (named), or a missing data root.
        FileExistsError: ``out_dir`` exists, is not empty, and was not written by this function.
        CorpusInUseError: the inputs or options changed while a recorded run still uses ``out_dir`` (and
            ``overwrite`` is not set).
    """
    config = dataclasses.replace(config or PrepareConfig(), **options)  # checks the options (__post_init__)
    if config.preset is None and not config.train_src:
        raise ValueError("give a preset or train_src and train_tgt files to prepare a corpus")
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise FileExistsError(f"{out_dir} exists, is not empty and has no {MANIFEST}: refusing to overwrite it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time; whoever holds the lock may delete build folders left by a killed build.
    lock = RunLock(out_dir.parent / f".{out_dir.name}.lock", f"corpus {out_dir}").acquire(blocking=True)
    try:
        for stale in out_dir.parent.iterdir():  # build folders of a killed preparation
            if stale.name.startswith((f".{out_dir.name}.tmp-", f".{out_dir.name}.old-")):
                logger.warning("removing %s, left by an interrupted preparation", stale)
                shutil.rmtree(stale, ignore_errors=True)
        _prepare_locked(out_dir, config, Path(user).absolute() if user is not None else None)
        if user is not None:
            record_user(out_dir, user)
        return out_dir
    finally:
        lock.release()


def _prepare_locked(out_dir: Path, config: PrepareConfig, user: Path | None) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result should be an ordinary folder
    try:
        started = time.perf_counter()
        inputs = _resolve_inputs(config, tmp / "raw")
        sources, train_lines = {}, 0
        for split, sides in inputs.items():
            sources[split] = {}
            for side, inp in sides.items():
                digest, lines = _sha256_and_lines(inp.path)
                sources[split][side] = {"path": _display_path(inp.path, tmp), "sha256": digest,
                                        "moses_unescaped": inp.moses_escaped}
                if split == "train":
                    train_lines += min(lines, config.max_train_lines or lines)
        config = _resolve_spm_sample(config, train_lines)
        fingerprint = _fingerprint(config, sources)
        previous = _previous_fingerprint(out_dir)
        if previous == fingerprint and _complete(out_dir):
            logger.info("%s is up to date (fingerprint %s)", out_dir, fingerprint[:12])
            return out_dir
        if previous is not None and previous != fingerprint:
            _refuse_if_in_use(out_dir, config.overwrite, user)
            logger.info("%s: inputs or options changed; rebuilding", out_dir)
        manifest = {"format_version": FORMAT_VERSION, "fingerprint": fingerprint, **_build(config, inputs, tmp),
                    "sources": sources, "config": _recorded_options(config)}
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, ensure_ascii=False)
        _move_into_place(tmp, out_dir)
        logger.info("prepared %s in %.1f s", out_dir, time.perf_counter() - started)
        return out_dir
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _resolve_spm_sample(config: PrepareConfig, train_lines: int) -> PrepareConfig:
    """``spm_input_sentence_size=None`` -> 0 (all) for at most ``SPM_AUTO_SENTENCES`` train sentences (source
    and target lines together, before cleaning), else ``SPM_AUTO_SENTENCES``."""
    if config.spm_input_sentence_size is not None:
        return config
    size = 0 if train_lines <= SPM_AUTO_SENTENCES else SPM_AUTO_SENTENCES
    return dataclasses.replace(config, spm_input_sentence_size=size)


def _recorded_options(config: PrepareConfig) -> dict:
    """The options the manifest records: every field but those of ``_RUN_OPTIONS``."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in _RUN_OPTIONS}


def _refuse_if_in_use(out_dir: Path, overwrite: bool, user: Path | None) -> None:
    """Raise :class:`CorpusInUseError` if a recorded run still uses ``out_dir``: its folder holds checkpoints, or
    another process holds its run lock. ``overwrite`` logs a warning instead."""
    for run in recorded_users(out_dir):
        why = _run_uses_corpus(run, live_check=run != user)
        if why is None:
            continue
        if overwrite:
            logger.warning("rebuilding %s although run %s uses it (%s): overwrite is set; that run's checkpoints "
                           "will be refused by resume and seqba.eval", out_dir, run, why)
            continue
        raise CorpusInUseError(
            f"refusing to rebuild the prepared corpus {out_dir} with other inputs or options: run {run} uses it "
            f"({why}); set data.prepare.overwrite=true (--overwrite true) to rebuild it anyway, or choose another "
            f"data.prepared_dir")


def _run_uses_corpus(run: Path, live_check: bool = True) -> str | None:
    """Why the run folder ``run`` still needs its corpus (checkpoints, a live process), or None."""
    if not run.is_dir():
        return None
    held = [name for name in ("checkpoint_best.pt", "checkpoint_last.pt") if (run / name).exists()]
    if (run / "checkpoints").is_dir() and any((run / "checkpoints").iterdir()):
        held.append("checkpoints/")
    if held:
        return f"it holds {', '.join(held)}"
    lock = run / ".lock"
    if live_check and fcntl is not None and lock.is_file():
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # fails while the run holds its exclusive lock
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            return "it is running"
        finally:
            os.close(fd)
    return None


def _resolve_inputs(config: PrepareConfig, raw_dir: Path) -> dict[str, dict[str, _Input]]:
    """Map split -> {"src", "tgt"} -> input file; generates/downloads into ``raw_dir`` when needed."""
    langs = {"src": config.src_lang, "tgt": config.tgt_lang}
    inputs: dict[str, dict[str, _Input]] = {}
    if config.preset in ("synthetic", "wmt16"):
        if set(langs.values()) != {"en", "de"}:
            raise ValueError(f"preset {config.preset!r} has en and de only, got {langs}")
        raw_dir.mkdir(parents=True)
        if config.preset == "synthetic":
            from seqba.data.synthetic import write_synthetic_corpus
            write_synthetic_corpus(raw_dir, n_train=config.synthetic_train, n_valid=config.synthetic_valid,
                                   n_test=config.synthetic_test, seed=config.seed)
        else:
            _export_hf_wmt16(raw_dir)
        inputs = {split: {side: _Input(raw_dir / f"{split}.{lang}", False) for side, lang in langs.items()}
                  for split in SPLITS}
    elif config.preset is not None:
        root = Path(config.data_root) if config.data_root else default_data_root()
        if root is None or not root.is_dir():
            raise FileNotFoundError(f"data_root {config.data_root or '$SEQBA_DATA or ../shared/data'} not found")
        inputs = {split: {side: _local_preset_file(config.preset, root, split, lang) for side, lang in langs.items()}
                  for split in SPLITS}
    for split in SPLITS:  # explicit paths override the preset's
        for side in ("src", "tgt"):
            path = getattr(config, f"{split}_{side}")
            if path:
                inputs.setdefault(split, {})[side] = _Input(Path(path), False)
    for split, sides in inputs.items():
        for inp in sides.values():
            if config.unescape_moses is not None:
                inp.moses_escaped = config.unescape_moses
            if not inp.path.is_file():
                raise FileNotFoundError(f"{split} input file not found: {inp.path}")
    return inputs


def _local_preset_file(preset: str, root: Path, split: str, lang: str) -> _Input:
    """One file of a local preset (layouts in /work/shared/data/README.md)."""
    if preset == "multi30k":
        name = {"train": "train", "valid": "val", "test": "test_2016_flickr"}[split]
        return _Input(root / "multi30k" / f"{name}.{lang}", False)
    if lang not in _OPENNMT_SIDE:
        raise ValueError(f"preset {preset!r} has en and de only, got {lang!r}")
    if preset == "opennmt-wmt-ende" or split == "train":  # wmt16-newstest trains on opennmt-wmt-ende too
        name = {"train": "train", "valid": "val", "test": "test"}[split]
        return _Input(root / "opennmt-wmt-ende" / f"{_OPENNMT_SIDE[lang]}-{name}.txt", True)
    year = {"valid": 2015, "test": 2016}[split]  # WMT16 en-de dev and test sets
    return _Input(root / "wmt-newstest-deen" / f"newstest{year}.{lang}", False)


HF_HUB_HOST = "huggingface.co"


def _hub_reachable(host: str = HF_HUB_HOST, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hugging Face hub opens within ``timeout`` seconds."""
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _go_offline() -> None:
    """Offline mode for ``datasets`` and ``huggingface_hub`` in this process (both read it at import time)."""
    import datasets
    import huggingface_hub.constants

    os.environ["HF_DATASETS_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
    for module in (datasets.config, huggingface_hub.constants):
        for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
            if hasattr(module, name):
                setattr(module, name, True)


def _export_hf_wmt16(raw_dir: Path) -> None:
    """Download Hugging Face ``wmt16`` ``de-en`` and write ``{split}.{en,de}`` text files.

    Needs the hub or a ``datasets`` cache that holds it. When the hub does not answer within 3 s the call runs
    offline (``HF_DATASETS_OFFLINE=1``: the cache only) instead of retrying for half a minute.

    Raises:
        ConnectionError: neither the hub nor a cached copy is available; the message says how to run from local
            files instead.
    """
    import datasets

    offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
    if not offline and not _hub_reachable():
        logger.warning("the Hugging Face hub (%s) is unreachable: looking for wmt16 in the datasets cache only",
                       HF_HUB_HOST)
        _go_offline()
        offline = True
    try:
        dataset = datasets.load_dataset("wmt16", "de-en")
    except Exception as err:  # datasets raises ConnectionError, FileNotFoundError, ValueError... by version
        where = "is unreachable and the datasets cache has no copy" if offline else "failed"
        raise ConnectionError(
            f"loading wmt16 de-en from the Hugging Face hub {where} ({type(err).__name__}: {str(err)[:200]}). "
            "Run from local files instead: data.prepare.preset=null data.prepare.train_src=FILE "
            "data.prepare.train_tgt=FILE (and valid_/test_ pairs), or data.prepare.preset=wmt16-newstest with "
            "the shared corpora; or point HF_DATASETS_CACHE at a cache that holds wmt16 and set "
            "HF_DATASETS_OFFLINE=1") from None
    for split, hf_split in (("train", "train"), ("valid", "validation"), ("test", "test")):
        with open(raw_dir / f"{split}.en", "w", encoding="utf-8", newline="\n") as en, \
                open(raw_dir / f"{split}.de", "w", encoding="utf-8", newline="\n") as de:
            for batch in dataset[hf_split].iter(batch_size=10000):  # rows: {"translation": {"de": .., "en": ..}}
                for row in batch["translation"]:
                    en.write(" ".join(row["en"].splitlines()) + "\n")
                    de.write(" ".join(row["de"].splitlines()) + "\n")
        logger.info("exported HF wmt16 de-en %s: %d pairs", hf_split, len(dataset[hf_split]))


def _build(config: PrepareConfig, inputs: dict[str, dict[str, _Input]], tmp: Path) -> dict:
    """Read, clean, train SentencePiece, binarize into ``tmp``, streaming; return the manifest's counts part."""
    import sentencepiece as spm

    counts, texts = {}, {}  # texts: split -> (source text file, target text file) to encode
    started = time.perf_counter()
    for split, sides in inputs.items():
        if split == "train":
            texts[split] = (tmp / ".train.src.clean", tmp / ".train.tgt.clean")
            counts[split] = _clean_train(sides["src"], sides["tgt"], texts[split], config)
        else:
            texts[split] = (tmp / f"{split}.{config.src_lang}.txt", tmp / f"{split}.{config.tgt_lang}.txt")
            counts[split] = _copy_split(split, sides["src"], sides["tgt"], texts[split])
    logger.info("read and cleaned every split in %.1f s", time.perf_counter() - started)
    vocab_size = config.vocab_size or PRESET_VOCAB_SIZE[config.preset]
    spm_options = dict(model_type="bpe", vocab_size=vocab_size, character_coverage=config.character_coverage,
                       pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, num_threads=config.num_threads,
                       input_sentence_size=config.spm_input_sentence_size,
                       shuffle_input_sentence=config.spm_input_sentence_size > 0, normalization_rule_name="nmt_nfkc")
    logger.info("training SentencePiece BPE: %s", spm_options)
    sentences = _spm_sentences(texts["train"], 2 * counts["train"]["sentences"], config.spm_input_sentence_size,
                               config.seed)
    # A sample of more than a million sentences makes SentencePiece warn "Too many sentences are loaded! ...
    # Consider using --input_sentence_size": it is one already, so warnings are muted for it.
    quiet = {"minloglevel": 2} if len(sentences) < 2 * counts["train"]["sentences"] else {}
    started = time.perf_counter()
    model = train_sentencepiece(sentences, seed=config.seed, **spm_options, **quiet)
    logger.info("trained SentencePiece in %.1f s", time.perf_counter() - started)
    (tmp / SPM_MODEL).write_bytes(model)
    processor = spm.SentencePieceProcessor(model_proto=model)
    with open(tmp / "spm.vocab", "w", encoding="utf-8") as f:
        f.writelines(f"{processor.id_to_piece(i)}\t{processor.get_score(i)}\n" for i in range(len(processor)))
    dtype = token_dtype(len(processor))
    workers = _encoding_workers(config, sum(path.stat().st_size for pair in texts.values() for path in pair))
    started = time.perf_counter()
    files = [(split, side, lang, path) for split, paths in texts.items()
             for side, lang, path in (("src", config.src_lang, paths[0]), ("tgt", config.tgt_lang, paths[1]))]
    # One stream of blocks over every file, so that the processes stay busy from one file to the next.
    blocks = ((i, block) for i, (*_, path) in enumerate(files) for block in _line_blocks(path))
    writers = [IndexedWriter(tmp / f"{split}.{lang}", dtype) for split, _, lang, _ in files]
    unk = [0] * len(files)
    with _Encoder(model, dtype, workers) as encoder:
        for i, (flat, lengths, block_unk) in encoder.map(blocks):
            writers[i].append(flat, lengths)
            unk[i] += block_unk
    for (split, side, _, _), writer, n_unk in zip(files, writers, unk):
        counts[split][f"{side}_tokens"] = int(writer.close().sum())
        counts[split][f"{side}_unk"] = n_unk
    for split in texts:
        logger.info("encoded %s: %s", split, counts[split])
    logger.info("encoded every split in %.1f s with %d process(es)", time.perf_counter() - started, workers)
    for path in texts["train"]:
        path.unlink()
    return {"src_lang": config.src_lang, "tgt_lang": config.tgt_lang, "vocab_size": len(processor),
            "dtype": dtype.name, "special_ids": {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID},
            "sentencepiece": {"version": spm.__version__, "seed": config.seed, **spm_options}, "splits": counts}


def _clean_train(src: _Input, tgt: _Input, out: tuple[Path, Path], config: PrepareConfig) -> dict:
    """Stream the train pair through :func:`clean_corpus`'s filters into the two ``out`` text files; return the
    counts ``clean_corpus`` gives. Raises ``ValueError`` when no pair survives."""
    limit = config.max_train_lines
    lines = used = 0
    dropped = {"empty": 0, "too_long": 0, "ratio": 0}
    with open(out[0], "w", encoding="utf-8", newline="\n") as fs, open(out[1], "w", encoding="utf-8",
                                                                       newline="\n") as ft:
        for src_lines, tgt_lines in _paired_blocks("train", src, tgt):
            lines += len(src_lines)
            take = len(src_lines) if limit is None else max(0, min(len(src_lines), limit - used))
            used += take
            kept_src, kept_tgt = _filter_pairs(src_lines[:take], tgt_lines[:take], config.max_len,
                                               config.max_ratio, dropped)
            fs.writelines(f"{line}\n" for line in kept_src)
            ft.writelines(f"{line}\n" for line in kept_tgt)
    counts = {"lines": lines, "lines_used": used, "sentences": used - sum(dropped.values()), "dropped": dropped}
    if not counts["sentences"]:
        raise ValueError(f"train: no pair of {src.path} and {tgt.path} survives cleaning ({counts})")
    logger.info("train: kept %d of %d pairs (dropped %s)", counts["sentences"], counts["lines_used"],
                counts["dropped"])
    return counts


def _copy_split(split: str, src: _Input, tgt: _Input, out: tuple[Path, Path]) -> dict:
    """Write a valid/test pair's stripped lines, all of them, to the two ``out`` files; return its counts."""
    lines, empty = 0, {"src": 0, "tgt": 0}
    with open(out[0], "w", encoding="utf-8", newline="\n") as fs, open(out[1], "w", encoding="utf-8",
                                                                       newline="\n") as ft:
        for src_lines, tgt_lines in _paired_blocks(split, src, tgt):
            lines += len(src_lines)
            empty["src"] += src_lines.count("")
            empty["tgt"] += tgt_lines.count("")
            fs.writelines(f"{line}\n" for line in src_lines)
            ft.writelines(f"{line}\n" for line in tgt_lines)
    return {"lines": lines, "sentences": lines, "empty": empty}


def _paired_blocks(split: str, src: _Input, tgt: _Input) -> Iterator[tuple[list[str], list[str]]]:
    """Aligned blocks of (source lines, target lines) of equal length, as :func:`read_lines` gives them.

    Raises:
        ValueError: the files have different line counts (both named with their counts), or invalid UTF-8.
    """
    src_blocks = _line_blocks(src.path, src.moses_escaped, process=True)
    tgt_blocks = _line_blocks(tgt.path, tgt.moses_escaped, process=True)
    src_buf: list[str] = []
    tgt_buf: list[str] = []
    n_src = n_tgt = 0
    while True:
        if not src_buf:
            src_buf = next(src_blocks, [])
            n_src += len(src_buf)
        if not tgt_buf:
            tgt_buf = next(tgt_blocks, [])
            n_tgt += len(tgt_buf)
        if not src_buf or not tgt_buf:
            break
        n = min(len(src_buf), len(tgt_buf))
        yield src_buf[:n], tgt_buf[:n]
        src_buf, tgt_buf = src_buf[n:], tgt_buf[n:]
    n_src += sum(map(len, src_blocks))
    n_tgt += sum(map(len, tgt_blocks))
    if n_src != n_tgt:
        raise ValueError(f"{split}: {src.path} has {n_src} lines but {tgt.path} has {n_tgt} lines")


def _line_blocks(path: str | os.PathLike, moses_escaped: bool = False, process: bool = False,
                 block_bytes: int | None = None) -> Iterator[list[str]]:
    """The lines of a UTF-8 file in blocks of about ``block_bytes`` (default ``BLOCK_BYTES``), split on "\\n" only.

    ``process``: strip each line and drop a leading byte-order mark (and undo Moses escapes when
    ``moses_escaped``), as :func:`read_lines` does; otherwise lines are given as written (scratch files).

    Raises:
        ValueError: invalid UTF-8, naming the file, the line and the byte offset.
    """
    block_bytes = block_bytes or BLOCK_BYTES
    with open(path, "rb") as f:
        pending = f.read(3)
        if process and pending == _BOM:
            pending = b""
        offset = line_no = 0  # bytes (after a dropped BOM) and lines before `pending`
        while True:
            block = f.read(block_bytes)
            data = pending + block
            if block:
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    pending = data
                    continue
                complete, pending = data[:cut], data[cut:]
            elif data:
                complete, pending = data, b""
            else:
                return
            try:
                text = complete.decode("utf-8")
            except UnicodeDecodeError as e:
                line = line_no + complete.count(b"\n", 0, e.start) + 1
                raise ValueError(f"{path}:{line}: invalid UTF-8 ({e.reason} at byte {offset + e.start})") from None
            lines = text.split("\n")
            if text.endswith("\n"):
                lines.pop()
            offset += len(complete)
            line_no += len(lines)
            if process:
                lines = [line.strip() for line in lines]
                if moses_escaped:
                    lines = [_unescape(line) if "&" in line else line for line in lines]
            yield lines


def iter_lines(path: str | os.PathLike) -> Iterator[str]:
    """Every line of a UTF-8 text file written by this module (split on "\\n" only), one at a time."""
    for block in _line_blocks(path):
        yield from block


def _unescape(line: str) -> str:
    for escaped, char in _MOSES_UNESCAPE:
        line = line.replace(escaped, char)
    return line


def _filter_pairs(src: list[str], tgt: list[str], max_len: int, max_ratio: float,
                  dropped: dict[str, int]) -> tuple[list[str], list[str]]:
    """Moses ``clean-corpus-n.perl`` filters on one block of pairs; counts each drop in ``dropped``."""
    kept_src, kept_tgt = [], []
    for s, t in zip(src, tgt):
        ns, nt = len(s.split()), len(t.split())
        if ns == 0 or nt == 0:
            dropped["empty"] += 1
        elif ns > max_len or nt > max_len:
            dropped["too_long"] += 1
        elif ns > max_ratio * nt or nt > max_ratio * ns:
            dropped["ratio"] += 1
        else:
            kept_src.append(s)
            kept_tgt.append(t)
    return kept_src, kept_tgt


def clean_corpus(src: list[str], tgt: list[str], max_len: int, max_ratio: float,
                 max_lines: int | None = None) -> tuple[list[str], list[str], dict]:
    """Filter stripped train pairs as Moses ``clean-corpus-n.perl`` does (min 1 word, max ``max_len`` words,
    ``-ratio max_ratio``), counting words by whitespace.

    Returns:
        kept source lines, kept target lines, and counts ``{"lines", "lines_used", "sentences",
        "dropped": {"empty", "too_long", "ratio"}}``; each dropped pair is counted under the first filter
        (in that order) that rejects it.
    """
    used = len(src) if max_lines is None else min(max_lines, len(src))
    dropped = {"empty": 0, "too_long": 0, "ratio": 0}
    kept_src, kept_tgt = _filter_pairs(src[:used], tgt[:used], max_len, max_ratio, dropped)
    return kept_src, kept_tgt, {"lines": len(src), "lines_used": used, "sentences": len(kept_src),
                                "dropped": dropped}


class _Counted:
    """An iterable of known length (for messages), over an iterator consumed once."""

    def __init__(self, items: Iterable, length: int) -> None:
        self.items, self.length = items, length

    def __iter__(self) -> Iterator:
        return iter(self.items)

    def __len__(self) -> int:
        return self.length


def _spm_sentences(paths: tuple[Path, Path], total: int, size: int, seed: int) -> _Counted:
    """The train sentences SentencePiece learns from, streamed: every line of the source then the target file, or,
    when ``0 < size < total``, a uniform sample of ``size`` of them drawn with ``numpy.random.default_rng(seed)``,
    in corpus order.

    SentencePiece's own sampling (``input_sentence_size`` below the number of sentences it is given) is not
    reproducible from run to run; here it is only ever given at most ``input_sentence_size`` sentences, which it
    keeps, in order.
    """
    lines = itertools.chain(*(iter_lines(path) for path in paths))  # source, then target
    if size == 0 or total <= size:
        return _Counted(lines, total)
    keep = np.zeros(total, dtype=bool)
    keep[np.random.default_rng(seed).choice(total, size=size, replace=False)] = True
    logger.info("SentencePiece learns from a seeded sample of %d of the %d train sentences", size, total)
    return _Counted(itertools.compress(lines, keep), size)


def train_sentencepiece(sentences: Iterable[str], seed: int = 0, **options) -> bytes:
    """Train SentencePiece on ``sentences`` (a list, or any iterable: it is read once, streamed) and return the
    serialized model (bytes).

    Deterministic: the random generator is seeded (it also draws the ``input_sentence_size`` sample) and no file
    path enters the model. ``options`` are SentencePiece trainer options (``vocab_size``, ``model_type``, ...).
    Raises ``ValueError`` when ``vocab_size`` exceeds what the corpus allows, giving the allowed maximum.
    """
    import sentencepiece as spm

    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    options.setdefault("minloglevel", 1)
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=model, **options)
    except RuntimeError as e:
        limit = re.search(r"<= (\d+)", str(e))
        if "Vocabulary size" in str(e) and limit:
            size = f"{len(sentences)} sentences" if hasattr(sentences, "__len__") else "the sentences given"
            raise ValueError(f"vocab_size={options.get('vocab_size')} is too large for this training corpus "
                             f"({size}): SentencePiece allows at most {limit.group(1)}; lower vocab_size") from e
        raise
    return model.getvalue()


def read_lines(path: str | os.PathLike, moses_escaped: bool = False) -> list[str]:
    """Stripped lines of a UTF-8 file, split on "\\n" only; ``ValueError`` naming file and line if invalid.

    A UTF-8 byte-order mark at the start (Windows editors write one) is dropped.
    """
    return [line for block in _line_blocks(path, moses_escaped, process=True) for line in block]


# -- parallel encoding ------------------------------------------------------------------------------------------
_WORKER_STATE: dict = {}  # in an encoding process: {"encoder", "dtype"}


def _encoding_workers(config: PrepareConfig, text_bytes: int) -> int:
    """Processes to encode with: ``workers`` (0: the usable cores), and 1 when all text fits in one block."""
    if text_bytes <= BLOCK_BYTES:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return config.workers or cores


def _init_worker(model: bytes, dtype: str) -> None:
    import sentencepiece as spm

    encoder = WordCachedEncoder(spm.SentencePieceProcessor(model_proto=model))
    _WORKER_STATE.update(encoder=encoder, dtype=np.dtype(dtype))


def _encode_block(lines: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """Encode one block of lines: (flat ids in the corpus dtype, int64 lengths, unknown-piece count)."""
    ids, lengths = _WORKER_STATE["encoder"].encode(lines)  # one process each: processes are the parallelism
    flat = np.array(ids, dtype=_WORKER_STATE["dtype"])
    return flat, np.array(lengths, dtype=np.int64), int(np.count_nonzero(flat == UNK_ID))


class _Encoder:
    """Encode blocks of lines in order, in this process or over a pool of ``workers`` processes.

    ``map`` keeps at most ``2 * workers`` blocks in flight (bounded memory) and yields results in input order,
    so the output never depends on the number of processes. Processes are forked where the platform allows
    (they inherit nothing they use but the model, passed explicitly), spawned elsewhere.
    """

    def __init__(self, model: bytes, dtype: np.dtype, workers: int) -> None:
        self.model, self.dtype, self.workers = model, np.dtype(dtype).name, workers
        self.pool = None

    def __enter__(self) -> "_Encoder":
        if self.workers > 1:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self.pool = multiprocessing.get_context(method).Pool(self.workers, _init_worker,
                                                                  (self.model, self.dtype))
        else:
            _init_worker(self.model, self.dtype)
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.terminate() if exc[0] is not None else self.pool.close()
            self.pool.join()
        _WORKER_STATE.clear()

    def map(self, blocks: Iterable[tuple[int, list[str]]]) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray,
                                                                                       int]]]:
        """``(key, _encode_block(lines))`` for every ``(key, lines)`` of ``blocks``, in order."""
        if self.pool is None:
            for key, lines in blocks:
                yield key, _encode_block(lines)
            return
        in_flight: collections.deque = collections.deque()
        for key, lines in blocks:
            in_flight.append((key, self.pool.apply_async(_encode_block, (lines,))))
            if len(in_flight) >= 2 * self.workers:
                key, result = in_flight.popleft()
                yield key, result.get()
        while in_flight:
            key, result = in_flight.popleft()
            yield key, result.get()


def _display_path(path: Path, tmp: Path) -> str:
    """Generated inputs (under the build folder) are named relative to ``out_dir``: "raw/train.en"."""
    return str(path.relative_to(tmp)) if path.is_relative_to(tmp) else str(path)


def _sha256_and_lines(path: Path) -> tuple[str, int]:
    """sha256 of a file's bytes, and its number of lines as :func:`read_lines` counts them (one pass)."""
    digest = hashlib.sha256()
    newlines = size = 0
    head = last = b""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            newlines += block.count(b"\n")
            head = head or block[:3]
            size += len(block)
            last = block[-1:]
    text_bytes = size - (3 if head == _BOM else 0)
    return digest.hexdigest(), newlines + (text_bytes > 0 and last != b"\n")


def _fingerprint(config: PrepareConfig, sources: dict) -> str:
    """Hash of everything the output depends on: input contents, options, format and SentencePiece versions."""
    import sentencepiece as spm

    options = {k: v for k, v in _recorded_options(config).items()
               if k != "data_root" and not k.endswith(("_src", "_tgt"))}  # paths matter only through contents
    contents = {split: {side: (v["sha256"], v["moses_unescaped"]) for side, v in sides.items()}
                for split, sides in sources.items()}
    blob = json.dumps([FORMAT_VERSION, spm.__version__, options, contents], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _previous_fingerprint(out_dir: Path) -> str | None:
    """The fingerprint in ``out_dir``'s manifest, or None (no folder, no or unreadable manifest)."""
    try:
        with open(out_dir / MANIFEST, encoding="utf-8") as f:
            return json.load(f).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def _complete(out_dir: Path) -> bool:
    """Whether every file the manifest implies is there (a damaged folder with the same fingerprint is rebuilt)."""
    try:
        with open(out_dir / MANIFEST, encoding="utf-8") as f:
            manifest = json.load(f)
        expected = [SPM_MODEL] + [f"{split}.{manifest[lang]}.{ext}" for split in manifest["splits"]
                                  for lang in ("src_lang", "tgt_lang") for ext in ("bin", "idx")]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return all((out_dir / name).is_file() for name in expected)


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename ``tmp`` to ``out_dir``, replacing a previous build (moved aside, then deleted)."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / "previous")
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
