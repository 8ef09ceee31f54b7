"""Binarized translation corpora: the on-disk format, a memory-mapped dataset, and ``collate``.

A prepared directory (written by :func:`seqba.data.prepare.prepare_translation`) looks like::

    prepared/
      manifest.json            counts, options, input hashes, "dtype", "src_lang", "tgt_lang"
      spm.model, spm.vocab     one joint SentencePiece BPE model (pad=0, unk=1, bos=2, eos=3)
      train.en.bin  train.en.idx  train.de.bin  train.de.idx
      valid.en.bin  ...  valid.en.txt  valid.de.txt      raw (stripped) text, kept for sacreBLEU
      test.en.bin   ...  test.en.txt   test.de.txt
      users/<hash>.json        runs that read this corpus (``record_user``; not part of the corpus)

Each ``.bin`` is every sentence's piece ids concatenated, WITHOUT bos/eos (``uint16`` when the vocabulary
has fewer than 65,536 pieces, else ``int32``); each ``.idx`` holds ``N + 1`` int64 offsets into it, so
sentence ``i`` is ``bin[idx[i]:idx[i + 1]]``. This is the layout of fairseq's ``MMapIndexedDataset``
reduced to two plain numpy arrays::

    .bin  | 17 254 9 | 31 8 | 5 77 902 4 | ...      (N sentences, flat)
    .idx  0          3      5            9  ...    (N + 1 offsets, int64)

The dataset appends eos on read; ``collate`` builds the decoder input ``[bos, t1..tn]``.

A built corpus is identified by :func:`corpus_fingerprint` (a hash of ``manifest.json`` and ``spm.model``), which
checkpoints record. The runs that read a corpus are listed in ``users/`` (:func:`record_user`), so that a rebuild
with other options can refuse while one of them still holds checkpoints (``seqba.data.prepare``).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPLITS = ("train", "valid", "test")
MANIFEST = "manifest.json"
SPM_MODEL = "spm.model"
USERS = "users"


def token_dtype(vocab_size: int) -> np.dtype:
    """The ``.bin`` dtype for a vocabulary: ``uint16`` below 65,536 pieces, else ``int32``."""
    return np.dtype(np.uint16) if vocab_size < 65536 else np.dtype(np.int32)


def write_indexed(prefix: Path, sequences: Sequence[Sequence[int]], dtype: np.dtype) -> np.ndarray:
    """Write ``prefix.bin`` (flat ids, ``dtype``) and ``prefix.idx`` (``N + 1`` int64 offsets).

    Args:
        prefix: path without suffix, e.g. ``out/train.en``.
        sequences: N sequences of token ids, without bos/eos.
        dtype: ``token_dtype(vocab_size)``.

    Returns:
        int64 array (N,) of sequence lengths in tokens.
    """
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter(itertools.chain.from_iterable(sequences), dtype=dtype, count=int(offsets[-1]))
    flat.tofile(f"{prefix}.bin")
    offsets.tofile(f"{prefix}.idx")
    return lengths


class IndexedWriter:
    """Write ``prefix.bin``/``prefix.idx`` chunk by chunk (the layout of :func:`write_indexed`, same bytes).

    Usage::

        writer = IndexedWriter(out / "train.en", np.dtype(np.uint16))
        writer.append(flat_ids, lengths)     # flat: (sum(lengths),) dtype ids; lengths: int64 (n,)
        lengths = writer.close()             # int64 (N,), every appended sentence's length

    Only the lengths are kept in memory (8 bytes per sentence); the ids go straight to disk.
    """

    def __init__(self, prefix: Path, dtype: np.dtype) -> None:
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        self._bin = open(f"{prefix}.bin", "wb")
        self._lengths: list[np.ndarray] = []

    def append(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        """Add ``len(lengths)`` sentences whose ids are ``flat`` (concatenated); raises ``ValueError`` if the
        sizes disagree."""
        if int(lengths.sum()) != len(flat):
            raise ValueError(f"{len(flat)} ids but lengths sum to {int(lengths.sum())}")
        np.asarray(flat, dtype=self.dtype).tofile(self._bin)
        self._lengths.append(np.asarray(lengths, dtype=np.int64))

    def close(self) -> np.ndarray:
        """Write ``prefix.idx`` and return the int64 (N,) sentence lengths."""
        self._bin.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, dtype=np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        offsets.tofile(f"{self.prefix}.idx")
        return lengths


def corpus_fingerprint(prepared_dir: str | os.PathLike) -> str | None:
    """What identifies a built corpus: 16 hex digits of sha256 over ``manifest.json`` and ``spm.model``.

    The manifest holds the hash of the inputs and options the encoded files were built from (a deterministic
    build: same inputs and options give the same bytes) and their counts; the SentencePiece model is hashed
    itself. ``None`` when the folder has no manifest (nothing prepared there).
    """
    folder = Path(prepared_dir)
    if not (folder / MANIFEST).is_file():
        return None
    digest = hashlib.sha256((folder / MANIFEST).read_bytes())
    model = folder / SPM_MODEL
    digest.update(model.read_bytes() if model.is_file() else b"")
    return digest.hexdigest()[:16]


def record_user(prepared_dir: str | os.PathLike, run_dir: str | os.PathLike) -> Path | None:
    """Record that the run in ``run_dir`` reads the corpus in ``prepared_dir`` (``users/<hash>.json``).

    Idempotent and atomic (one file per run, written then renamed). Returns the record's path, or ``None`` when
    the prepared folder is not writable (a shared read-only corpus; a warning is logged).
    """
    run_dir = Path(run_dir).absolute()
    folder = Path(prepared_dir) / USERS
    path = folder / f"{hashlib.sha256(str(run_dir).encode()).hexdigest()[:16]}.json"
    try:
        folder.mkdir(exist_ok=True)
        tmp = folder / f".{path.name}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"run_dir": str(run_dir)}) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        logger.warning("cannot record run %s as a user of %s (%s)", run_dir, prepared_dir, err)
        return None
    return path


def recorded_users(prepared_dir: str | os.PathLike) -> list[Path]:
    """The run folders recorded by :func:`record_user` (whether or not they still exist), sorted."""
    runs = set()
    for record in (Path(prepared_dir) / USERS).glob("*.json"):
        try:
            runs.add(Path(json.loads(record.read_text(encoding="utf-8"))["run_dir"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a damaged record names no run
    return sorted(runs)


def _read_offsets(prefix: Path, dtype: np.dtype) -> np.ndarray:
    """Load ``prefix.idx`` and check that ``prefix.bin`` holds exactly the tokens it points to."""
    idx_path, bin_path = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
    if not idx_path.is_file() or not bin_path.is_file():
        raise FileNotFoundError(f"{idx_path if not idx_path.is_file() else bin_path} not found; re-run prepare")
    offsets = np.fromfile(idx_path, dtype=np.int64)
    size = bin_path.stat().st_size
    if len(offsets) == 0 or size != offsets[-1] * dtype.itemsize:
        raise ValueError(f"{bin_path}: {size} bytes do not match the last offset in {idx_path} "
                         f"({offsets[-1] if len(offsets) else 'empty index'} tokens of {dtype}); re-run prepare")
    return offsets


def _memmap(path: Path, dtype: np.dtype) -> np.ndarray:
    return np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.empty(0, dtype=dtype)


def read_manifest(prepared_dir: str | os.PathLike) -> dict[str, Any]:
    """Load ``manifest.json`` of a prepared directory; raises ``FileNotFoundError`` naming it."""
    path = Path(prepared_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run seqba.data.prepare.prepare_translation first")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_tokenizer(prepared_dir: str | os.PathLike):
    """The joint SentencePiece processor of a prepared directory (pad=0, unk=1, bos=2, eos=3).

    Use ``sp.encode(text, out_type=int)`` / ``sp.decode(ids)``; ids passed to ``decode`` must not contain
    pad/bos/eos (strip them first).
    """
    import sentencepiece as spm

    path = Path(prepared_dir) / SPM_MODEL
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run seqba.data.prepare.prepare_translation first")
    return spm.SentencePieceProcessor(model_file=str(path))


def read_raw_lines(prepared_dir: str | os.PathLike, split: str, side: str = "target") -> list[str]:
    """The raw (stripped, never filtered) text of a valid/test split, one string per sentence.

    Args:
        split: ``"valid"`` or ``"test"`` (train text is not kept: it was cleaned, see the manifest).
        side: ``"source"`` or ``"target"``; ``"target"`` gives the sacreBLEU references.

    Returns:
        ``len(TranslationDataset(prepared_dir, split))`` strings, in dataset order.
    """
    if side not in ("source", "target"):
        raise ValueError(f"side must be 'source' or 'target', got {side!r}")
    manifest = read_manifest(prepared_dir)
    lang = manifest["src_lang"] if side == "source" else manifest["tgt_lang"]
    path = Path(prepared_dir) / f"{split}.{lang}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: raw text is kept for valid/test splits only")
    with open(path, encoding="utf-8", newline="\n") as f:
        return f.read().split("\n")[:-1]


class TranslationDataset(torch.utils.data.Dataset):
    """One split of a prepared corpus, read through memory maps (fork/spawn-safe, opened lazily).

    ``dataset[i]`` is ``{"id": i, "source": LongTensor (S,), "target": LongTensor (T,)}``, both ending with
    eos (3) and without bos. Sizes, counted in tokens including eos:

    - ``src_sizes``, ``tgt_sizes``: int64 (N,)
    - ``num_tokens``: int64 (N,) = ``max(src_sizes, tgt_sizes)``, what a token-budget sampler needs.

    Raises ``FileNotFoundError`` when the directory or split is missing, ``ValueError`` when ``.bin`` and
    ``.idx`` disagree or the two sides have different sentence counts.
    """

    def __init__(self, prepared_dir: str | os.PathLike, split: str):
        self.prepared_dir = Path(prepared_dir)
        self.split = split
        self.manifest = read_manifest(prepared_dir)
        if split not in self.manifest["splits"]:
            raise FileNotFoundError(f"split {split!r} not in {self.prepared_dir / MANIFEST} "
                                    f"(has {sorted(self.manifest['splits'])})")
        self.src_lang, self.tgt_lang = self.manifest["src_lang"], self.manifest["tgt_lang"]
        self.dtype = np.dtype(self.manifest["dtype"])
        self.eos = EOS_ID
        self._src = self._tgt = None  # memory maps, opened on first access (also in each worker)
        self._src_offsets = _read_offsets(self._prefix(self.src_lang), self.dtype)
        self._tgt_offsets = _read_offsets(self._prefix(self.tgt_lang), self.dtype)
        src_offsets, tgt_offsets = self._src_offsets, self._tgt_offsets
        if len(src_offsets) != len(tgt_offsets):
            raise ValueError(f"{self.prepared_dir}: split {split!r} has {len(src_offsets) - 1} source but "
                             f"{len(tgt_offsets) - 1} target sentences; re-run prepare")
        self.src_sizes = np.diff(src_offsets) + 1
        self.tgt_sizes = np.diff(tgt_offsets) + 1
        self.num_tokens = np.maximum(self.src_sizes, self.tgt_sizes)

    def _prefix(self, lang: str) -> Path:
        return self.prepared_dir / f"{self.split}.{lang}"

    def _open(self) -> None:
        self._src = _memmap(Path(f"{self._prefix(self.src_lang)}.bin"), self.dtype)
        self._tgt = _memmap(Path(f"{self._prefix(self.tgt_lang)}.bin"), self.dtype)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_src"] = state["_tgt"] = None  # reopen the memory maps in the worker, never pickle them
        return state

    def __len__(self) -> int:
        return len(self.num_tokens)

    def _sequence(self, data: np.ndarray, offsets: np.ndarray, i: int) -> torch.Tensor:
        start, end = offsets[i], offsets[i + 1]
        out = np.empty(end - start + 1, dtype=np.int64)
        out[:-1] = data[start:end]
        out[-1] = self.eos
        return torch.from_numpy(out)

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = int(index)
        if not 0 <= i < len(self):
            raise IndexError(f"index {index} out of range for {self.split!r} of size {len(self)}")
        if self._src is None:
            self._open()
        return {"id": i, "source": self._sequence(self._src, self._src_offsets, i),
                "target": self._sequence(self._tgt, self._tgt_offsets, i)}


def collate(samples: Sequence[dict[str, Any]], pad_idx: int = PAD_ID, bos_idx: int = BOS_ID,
            eos_idx: int = EOS_ID) -> dict[str, Any]:
    """Merge samples into a right-padded batch, keeping their order (after fairseq's
    ``language_pair_dataset.collate``, without its re-sorting and left-padding).

    Order is never changed: the batch sampler decides it, and Batch Augmentation copies of one sentence
    (same ``id``) stay where it put them. Shapes: B sentences, S = longest source, T = longest target
    (both counting eos).

    Args:
        samples: dicts ``{"id": int, "source": LongTensor (S_i,), "target": LongTensor (T_i,)}``, each
            sequence ending with ``eos_idx`` (as ``TranslationDataset`` returns them).

    Returns:
        dict with
        - ``src_tokens``: int64 (B, S), source ids ending with eos, right-padded with ``pad_idx``
        - ``src_lengths``: int64 (B,), source lengths including eos
        - ``prev_output_tokens``: int64 (B, T), decoder input ``[bos, t1..tn]``, right-padded
        - ``target``: int64 (B, T), ``[t1..tn, eos]``, right-padded with ``pad_idx``
        - ``ntokens``: int, non-pad target tokens (eos included), the loss normaliser
        - ``nsentences``: int, B
        - ``sample_id``: int64 (B,), dataset index of each row (equal for BA copies of one sentence)

    Raises:
        ValueError: on an empty list, or when a target does not end with ``eos_idx``.
    """
    if len(samples) == 0:
        raise ValueError("collate needs at least one sample")
    pad_sequence = torch.nn.utils.rnn.pad_sequence
    sources = [s["source"] for s in samples]
    targets = [s["target"] for s in samples]
    src_tokens = pad_sequence(sources, batch_first=True, padding_value=pad_idx).long()  # (B, S)
    target = pad_sequence(targets, batch_first=True, padding_value=pad_idx).long()  # (B, T)
    src_lengths = torch.tensor([len(s) for s in sources], dtype=torch.long)
    tgt_lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
    batch = torch.arange(len(samples))
    if (tgt_lengths == 0).any() or (target[batch, tgt_lengths - 1] != eos_idx).any():
        raise ValueError(f"every target must end with eos={eos_idx}; got sample ids "
                         f"{[s['id'] for s in samples][:8]}")
    # [t1..tn, eos, pad..] -> [bos, t1..tn, pad..]: shift right, then pad where the eos moved to.
    prev_output_tokens = torch.empty_like(target)  # (B, T)
    prev_output_tokens[:, 0] = bos_idx
    prev_output_tokens[:, 1:] = target[:, :-1]
    prev_output_tokens.masked_fill_(torch.arange(target.size(1)) >= tgt_lengths[:, None], pad_idx)
    return {
        "src_tokens": src_tokens,
        "src_lengths": src_lengths,
        "prev_output_tokens": prev_output_tokens,
        "target": target,
        "ntokens": int(tgt_lengths.sum()),
        "nsentences": len(samples),
        "sample_id": torch.tensor([int(s["id"]) for s in samples], dtype=torch.long),
    }
