"""Word-level language-model data (PTB, Mikolov split) in the Batch Augmentation column layout.

Reads Mikolov-format text (one sentence per line, space-tokenized, ``<eos>`` appended per line) as
salesforce/awd-lstm-lm ``data.py`` does, cuts the token stream into columns (``batchify``, as ``utils.py``) and
adds the M BA copies as extra columns (``repeat_streams``). :class:`BPTTIterator` walks the rows in windows of
the reference's variable BPTT length (``main.py``), deterministically from ``seed + epoch`` and resumably.

Shape legend: L = tokens (or rows), B = streams, M = ``repeats``, N = B * M columns, T = window length.

Streams become columns, copies become more columns
--------------------------------------------------
A corpus of L = 24 tokens ``a b c ... x``; ``batchify(data, 4)`` cuts it into B = 4 contiguous streams, one
per column (a trailing remainder of L % B tokens is dropped)::

    stream:  s0 s1 s2 s3
    row 0     a  g  m  s        each column is read top to bottom;
    row 1     b  h  n  t        a model's hidden state for column j
    row 2     c  i  o  u        carries over from one window to the next
    row 3     d  j  p  v
    row 4     e  k  q  w
    row 5     f  l  r  x        -> (L // B, B) = (6, 4)

``repeat_streams(batched, repeats=2)`` appends M - 1 more copies of all B columns, copy-major ("tiled")::

             copy 0      |   copy 1
    column:  0  1  2  3  |  4  5  6  7      column c * B + b = copy c of stream b
    row 0    a  g  m  s  |  a  g  m  s
    row 1    b  h  n  t  |  b  h  n  t
    ...                  |
    row 5    f  l  r  x  |  f  l  r  x      -> (L // B, B * M) = (6, 8)

so copy c is the contiguous column slice ``[c * B, (c + 1) * B)``. The copies see the same tokens; they differ
only through the model's dropout masks (see :mod:`seqba.models.awd_lstm`). :class:`BPTTIterator` then yields
``x = rows [i, i + T)`` and ``y = rows [i + 1, i + 1 + T)`` (the next token in the same column)::

    i = 0, T = 2:   x = [[a g m s | a g m s],   y = [[b h n t | b h n t],
                         [b h n t | b h n t]]        [c i o u | c i o u]]

Tiny run::

    corpus = load_corpus(data_root() / "ptb")                     # 10000 words, 929589 train tokens
    train = repeat_streams(batchify(corpus.train, 20), repeats=10)  # (46479, 200)
    for x, y, seq_len, lr_scale in BPTTIterator(train, bptt=70, seed=1):
        ...
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple

import numpy as np
import torch
from torch import Tensor

from seqba.repeat import repeat_streams  # noqa: F401  (public as seqba.repeat_streams; re-exported here)
from seqba.samplers import check_count

EOS = "<eos>"
SPLITS = ("train", "valid", "test")


class Dictionary:
    """Word <-> id map; ids follow first occurrence (``Dictionary`` of awd-lstm-lm ``data.py``)."""

    def __init__(self) -> None:
        self.word2idx: dict[str, int] = {}
        self.idx2word: list[str] = []

    def add_word(self, word: str) -> int:
        """Return the id of ``word``, adding it at the end when new."""
        if word not in self.word2idx:
            self.word2idx[word] = len(self.idx2word)
            self.idx2word.append(word)
        return self.word2idx[word]

    @classmethod
    def from_lines(cls, lines: Iterable[str], add_eos: bool = True) -> "Dictionary":
        """Build from whitespace-tokenized lines (the train split), adding ``<eos>`` after each line."""
        d = cls()
        for line in lines:
            for word in line.split():
                d.add_word(word)
            if add_eos:
                d.add_word(EOS)
        return d

    def __len__(self) -> int:
        return len(self.idx2word)

    def __contains__(self, word: str) -> bool:
        return word in self.word2idx


@dataclass
class Corpus:
    """Tokenized splits, each a 1-D int64 tensor of ids in ``dictionary`` (``<eos>`` after every line)."""

    train: Tensor
    valid: Tensor
    test: Tensor
    dictionary: Dictionary


def tokenize_lines(lines: Iterable[str], dictionary: Dictionary, add_eos: bool = True,
                   source: str = "<lines>") -> Tensor:
    """Map whitespace-tokenized lines to one (L,) int64 tensor of ids, ``<eos>`` appended per line.

    Raises:
        ValueError: a word missing from ``dictionary``, naming ``source``, the 1-based line and the word.
    """
    w2i = dictionary.word2idx
    ids: list[int] = []
    for lineno, line in enumerate(lines, start=1):
        words = line.split()
        if add_eos:
            words.append(EOS)
        try:
            ids.extend([w2i[w] for w in words])
        except KeyError as err:
            raise ValueError(
                f"{source}:{lineno}: word {err.args[0]!r} is not in the dictionary "
                f"({len(dictionary)} words, built from the train split)"
            ) from None
    return torch.tensor(ids, dtype=torch.long)


def tokenize_file(path: str | Path, dictionary: Dictionary, add_eos: bool = True) -> Tensor:
    """Tokenize a Mikolov-format file (UTF-8, one sentence per line) into (L,) int64 ids.

    Raises:
        FileNotFoundError: ``path`` is missing.
        ValueError: an out-of-vocabulary word, or bytes that are not UTF-8, naming the file and line.
    """
    path = Path(path)
    with _utf8_errors(path), path.open(encoding="utf-8") as f:
        return tokenize_lines(f, dictionary, add_eos, source=str(path))


@contextmanager
def _utf8_errors(path: Path) -> Iterator[None]:
    """Turn a ``UnicodeDecodeError`` while reading ``path`` into a ``ValueError`` naming the file, the line and
    the byte offset (the decoder's own message names neither the file nor the line)."""
    try:
        yield
    except UnicodeDecodeError as err:
        data = path.read_bytes()
        offset = data.find(err.object) + err.start if err.object in data else None
        line = data.count(b"\n", 0, offset) + 1 if offset is not None else None
        where = f"{path}:{line}" if line is not None else str(path)
        at = f" at byte {offset}" if offset is not None else ""
        raise ValueError(f"{where}: not UTF-8 text (byte {err.object[err.start:err.start + 1]!r}{at}); "
                         "PTB files are UTF-8, one sentence per line") from None


def corpus_from_lines(train: Iterable[str], valid: Iterable[str], test: Iterable[str],
                      add_eos: bool = True) -> Corpus:
    """Build the dictionary from ``train`` and tokenize the three splits (lines in memory)."""
    train = list(train)
    dictionary = Dictionary.from_lines(train, add_eos)
    return Corpus(
        train=tokenize_lines(train, dictionary, add_eos, source="train"),
        valid=tokenize_lines(valid, dictionary, add_eos, source="valid"),
        test=tokenize_lines(test, dictionary, add_eos, source="test"),
        dictionary=dictionary,
    )


def split_path(root: str | Path, split: str) -> Path:
    """The file of ``split`` in the PTB folder ``root``: ``ptb.<split>.txt``, else ``<split>.txt``.

    Raises:
        FileNotFoundError: neither exists (naming both and the folder).
    """
    root = Path(root)
    for name in (f"ptb.{split}.txt", f"{split}.txt"):  # Mikolov names, then awd-lstm-lm's data/penn names
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"no ptb.{split}.txt or {split}.txt in {root}")


def load_corpus(root: str | Path) -> Corpus:
    """Read ``ptb.{train,valid,test}.txt`` (or ``{train,valid,test}.txt``) from the folder ``root``.

    The dictionary is built from train; valid/test words must be in it. On PTB (e.g.
    ``data_root() / "ptb"``): 10000 words incl. ``<eos>``; 929589 / 73760 / 82430 tokens.

    Raises:
        FileNotFoundError: a split file is missing.
        ValueError: an out-of-vocabulary word in valid or test (file and line named).
    """
    root = Path(root)
    paths = {split: split_path(root, split) for split in SPLITS}
    with _utf8_errors(paths["train"]), paths["train"].open(encoding="utf-8") as f:
        dictionary = Dictionary.from_lines(f)
    return Corpus(dictionary=dictionary, **{s: tokenize_file(p, dictionary) for s, p in paths.items()})


def load_corpus_hf(name: str = "ptb_text_only", **load_kwargs: Any) -> Corpus:
    """Load PTB through ``datasets.load_dataset(name)`` (splits train/validation/test, field ``sentence``).

    Needs the Hugging Face hub or its cache; use :func:`load_corpus` for local files. Produces the same
    corpus as :func:`load_corpus` on the Mikolov files.
    """
    import datasets  # deferred: heavy import, only needed here

    ds = datasets.load_dataset(name, **load_kwargs)
    return corpus_from_lines(ds["train"]["sentence"], ds["validation"]["sentence"], ds["test"]["sentence"])


def batchify(data: Tensor, bsz: int) -> Tensor:
    """Cut a (L,) token stream into ``bsz`` contiguous streams: (L // bsz, bsz), column b = stream b.

    Drops the last L % bsz tokens (``batchify`` in awd-lstm-lm ``utils.py``); see the module diagram.

    Raises:
        ValueError: ``data`` not 1-D, ``bsz < 1`` or fewer than ``bsz`` tokens.
    """
    if data.dim() != 1:
        raise ValueError(f"batchify: data must be 1-D (L,), got shape {tuple(data.shape)}")
    if bsz < 1 or data.numel() < bsz:
        raise ValueError(f"batchify: bsz={bsz!r} must be in [1, L={data.numel()}]")
    rows = data.numel() // bsz
    return data[: rows * bsz].view(bsz, rows).t().contiguous()  # (L // bsz, bsz)


class BPTTBatch(NamedTuple):
    """One BPTT window: ``x`` and ``y`` (T, N) int64 (y = next token of x in the same column), ``seq_len`` = T,
    and ``lr_scale`` = drawn length / bptt, by which the reference multiplies the learning rate for this step."""

    x: Tensor
    y: Tensor
    seq_len: int
    lr_scale: float


class BPTTIterator:
    """Consecutive BPTT windows over the rows of ``source`` (L, N), with awd-lstm-lm's variable length.

    Variable mode (training), per window, from ``main.py`` of salesforce/awd-lstm-lm::

        base    = bptt if rng.random() < 0.95 else bptt / 2
        seq_len = min(max(5, int(rng.normal(base, 5))), max_seq_len)

    with ``max_seq_len = bptt + 20`` by default (the reference has the cap commented out, as ``bptt + 10``; it
    only guards against rare very long windows). Fixed mode (``variable=False``, evaluation) uses ``bptt``.
    Windows start at row 0 and tile rows ``[0, L - 1)``: every row except the last is an input exactly once,
    the final window is cut to the rows left (T = min(seq_len, L - 1 - i)) while ``lr_scale`` keeps the drawn
    length, as the reference. (The reference's training loop stops one row earlier, at ``i < L - 2``.)

    Determinism and resumption: the lengths of an epoch are pre-drawn from ``np.random.default_rng(seed +
    epoch)``, so ``len()`` is exact and the same seed and epoch give the same windows on every rank.
    ``state_dict()`` records the epoch and the windows already yielded; an iterator given it by
    ``load_state_dict`` continues with exactly the next window. ``set_epoch(e)`` with ``e`` different from the
    current epoch restarts at its first window; with the same epoch it keeps the position (so calling
    ``set_epoch`` at the top of each epoch after ``load_state_dict`` resumes mid-epoch). A pass that runs to the
    end resets the position to 0 of the same epoch. The model's hidden state is not part of this state.

    Args:
        source: (L, N) int64, from :func:`batchify` / :func:`repeat_streams`; L >= 2.
        bptt: target window length (``--bptt``, 70 for PTB).
        variable: draw lengths as above (True) or use ``bptt`` for every window (False).
        seed: base seed; epoch e draws from ``seed + e``.
        max_seq_len: cap on drawn lengths; default ``bptt + 20``.

    Raises:
        ValueError: bad shapes or lengths (``__init__``), or a state dict for another configuration.
    """

    def __init__(self, source: Tensor, bptt: int = 70, *, variable: bool = True, seed: int = 0,
                 max_seq_len: int | None = None) -> None:
        if source.dim() != 2 or source.size(0) < 2:
            raise ValueError(f"BPTTIterator: source must be (L, N) with L >= 2, got shape {tuple(source.shape)}")
        if bptt < 1:
            raise ValueError(f"BPTTIterator: bptt must be >= 1, got {bptt!r}")
        max_seq_len = bptt + 20 if max_seq_len is None else max_seq_len
        if max_seq_len < 1:
            raise ValueError(f"BPTTIterator: max_seq_len must be >= 1, got {max_seq_len!r}")
        self.source = source
        self.bptt = bptt
        self.variable = variable
        self.seed = check_count("seed", seed)
        self.max_seq_len = max_seq_len
        self.epoch = 0
        self._offset = 0
        self._plan = self._draw_plan(0)

    def _draw_plan(self, epoch: int) -> list[tuple[int, int]]:
        """(start row, drawn length) of every window of ``epoch``."""
        last = self.source.size(0) - 1  # rows [0, last) are inputs
        if not self.variable:
            return [(i, self.bptt) for i in range(0, last, self.bptt)]
        rng = np.random.default_rng(self.seed + epoch)
        plan, i = [], 0
        while i < last:
            base = self.bptt if rng.random() < 0.95 else self.bptt / 2.0
            seq_len = min(max(5, int(rng.normal(base, 5))), self.max_seq_len)
            plan.append((i, seq_len))
            i += seq_len
        return plan

    def set_epoch(self, epoch: int) -> None:
        """Select ``epoch``'s lengths; a new epoch starts at its first window, the current one keeps its place.

        Raises:
            ValueError: ``epoch`` is not a non-negative int (naming it).
        """
        epoch = check_count("epoch", epoch)
        if epoch != self.epoch:
            self.epoch = epoch
            self._offset = 0
            self._plan = self._draw_plan(epoch)

    @property
    def seq_lens(self) -> list[int]:
        """Drawn length of every window of the current epoch (the last may be cut when yielded)."""
        return [n for _, n in self._plan]

    @property
    def iterations_in_epoch(self) -> int:
        """Windows of the current epoch already yielded."""
        return self._offset

    def __len__(self) -> int:
        return len(self._plan)

    def __iter__(self) -> Iterator[BPTTBatch]:
        last = self.source.size(0) - 1
        for k in range(self._offset, len(self._plan)):
            i, drawn = self._plan[k]
            t = min(drawn, last - i)
            self._offset = k + 1  # counted before yielding: a state_dict taken in the loop body resumes after it
            yield BPTTBatch(self.source[i : i + t], self.source[i + 1 : i + 1 + t], t, drawn / self.bptt)
        self._offset = 0

    def _config(self) -> dict[str, Any]:
        return {"bptt": self.bptt, "variable": self.variable, "seed": self.seed,
                "max_seq_len": self.max_seq_len, "rows": self.source.size(0)}

    def state_dict(self) -> dict[str, Any]:
        """Epoch, windows already yielded, and the configuration they depend on."""
        return {"epoch": self.epoch, "iterations_in_epoch": self._offset, **self._config()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position from :meth:`state_dict`.

        Raises:
            ValueError: a missing ``epoch`` / ``iterations_in_epoch`` (named), a negative or fractional one, or a
                state from an iterator with another bptt, mode, seed, cap or source length.
        """
        missing = [key for key in ("epoch", "iterations_in_epoch") if key not in state]
        if missing:
            raise ValueError(f"BPTTIterator.load_state_dict: state is missing {', '.join(map(repr, missing))} "
                             f"(got keys {sorted(state)})")
        check_count("epoch", state["epoch"])
        check_count("iterations_in_epoch", state["iterations_in_epoch"])
        diff = {k: (v, state.get(k)) for k, v in self._config().items() if state.get(k) != v}
        if diff:
            raise ValueError(f"BPTTIterator.load_state_dict: configuration differs (this, state): {diff}")
        self.epoch = int(state["epoch"])
        self._plan = self._draw_plan(self.epoch)
        offset = int(state["iterations_in_epoch"])
        if not 0 <= offset <= len(self._plan):
            raise ValueError(f"BPTTIterator.load_state_dict: iterations_in_epoch={offset} outside [0, {len(self)}]")
        self._offset = offset
