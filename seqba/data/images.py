"""Image corpora (MNIST, CIFAR-10) as uint8 tensors, a map-style dataset and its collate.

Images stay uint8 (N, C, H, W) on the host: a batch of B distinct images is collated, moved to the device
once, expanded to M*B rows by the core's ``repeat_batch`` and augmented there by
``seqba.data.transforms.Augment`` (the BA paper's "no extra I/O").

Sources:
    * MNIST: the shared data holds only the 10,000 official test digits (``mnist/t10k-*-idx?-ubyte.gz``);
      ``load_mnist`` splits them into our own train/test, seeded and stratified by class.
    * CIFAR-10: the official python batches (``data_batch_1..5``, ``test_batch``) from a local folder with
      ``load_cifar10``, or the Hugging Face hub / a local clone of it with ``load_cifar10_hf``.

Shape notation: N = images, B = batch, C = channels, H = height, W = width.
"""
from __future__ import annotations

import gzip
import pickle
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions (N, rows, cols)
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension (N,)
MNIST_TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCHES = ("test_batch",)


def read_idx(path: str | Path, magic: int | None = None) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), gzip-compressed or raw (detected from the bytes).

    Args:
        path: the file.
        magic: the expected magic number; ``None`` accepts 2051 (images) or 2049 (labels).

    Returns:
        uint8 array: (N, rows, cols) for magic 2051, (N,) for magic 2049.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unexpected magic (message names the file, the magic found and the one expected), a truncated
            or corrupt gzip stream, or a payload whose size does not match the header (each naming the file).
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as err:  # truncated: EOFError; corrupt: BadGzipFile / zlib.error
            raise ValueError(f"read_idx: {path} is not a complete gzip file ({type(err).__name__}: "
                             f"{str(err) or 'truncated'}); download it again") from None
    expected = (magic,) if magic is not None else (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC)
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found not in expected:
        want = " or ".join(str(m) for m in expected)
        raise ValueError(f"read_idx: {path} has magic {found}, expected {want} (IDX unsigned-byte images/labels)")
    ndim = found & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"read_idx: {path} is truncated: {len(raw)} bytes, header alone needs {header}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    payload = len(raw) - header
    if payload != int(np.prod(dims)):
        raise ValueError(f"read_idx: {path} declares shape {dims} ({int(np.prod(dims))} bytes) but holds {payload}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find_file(folder: Path, name: str, where: str) -> Path:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{where}: neither {name}.gz nor {name} found in {folder}")


def _check_split(split: str, where: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"{where}: split must be 'train' or 'test', got {split!r}")


def mnist_split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(len(labels))`` into (train, test) index arrays, stratified by class.

    For each class c (ascending), its indices are shuffled with one ``np.random.default_rng(seed)`` and the
    first ``round(test_fraction * count_c)`` go to test. Both outputs are sorted int64 arrays; together they
    cover every index exactly once. Same labels, fraction and seed give the same split on every machine.

    Raises:
        ValueError: ``test_fraction`` outside (0, 1).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"mnist_split_indices: test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        test.append(members[: int(round(test_fraction * len(members)))])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[np.concatenate(test)] = True
    return np.flatnonzero(~is_test).astype(np.int64), np.flatnonzero(is_test).astype(np.int64)


def load_mnist(
    root: str | Path, split: str, *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Our train/test split of the 10,000 MNIST test digits (the only MNIST files in the shared data).

    Args:
        root: the folder holding ``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]``, or
            its parent with an ``mnist/`` subfolder (e.g. ``seqba.data.paths.data_root()``).
        split: ``"train"`` or ``"test"``.
        test_fraction: share of each class put in test (default 0.2: 8,000 train / 2,000 test).
        seed: split seed; see ``mnist_split_indices``.

    Returns:
        ``(images, labels)``: uint8 (N, 1, 28, 28) and int64 (N,), in the original file order.

    Raises:
        ValueError: bad ``split``/``test_fraction``, bad IDX files, or image/label counts that differ.
        FileNotFoundError: files absent.
    """
    _check_split(split, "load_mnist")
    root = Path(root)
    folder = root / "mnist" if (root / "mnist").is_dir() else root
    images = read_idx(_find_file(folder, MNIST_TEST_FILES[0], "load_mnist"), IDX_IMAGES_MAGIC)
    labels = read_idx(_find_file(folder, MNIST_TEST_FILES[1], "load_mnist"), IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise ValueError(f"load_mnist: {folder} has {len(images)} images but {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError(f"load_mnist: {folder} holds no images (empty IDX files)")
    train_idx, test_idx = mnist_split_indices(labels, test_fraction, seed)
    idx = train_idx if split == "train" else test_idx
    return torch.from_numpy(images[idx][:, None]), torch.from_numpy(labels[idx].astype(np.int64))


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that resolves only what numpy arrays in plain containers need.

    ``pickle.load`` can run arbitrary code; CIFAR batches are pickles, so anything outside this list
    (``os.system``, ``builtins.eval``, ...) raises ``pickle.UnpicklingError`` instead.
    """

    _reconstruct = np.zeros(1).__reduce__()[0]
    _scalar = np.float64(0).__reduce__()[0]
    _frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # protocol-5 pickles of arrays
    ALLOWED: dict[tuple[str, str], Any] = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.multiarray", "scalar"): _scalar,
        ("numpy._core.multiarray", "scalar"): _scalar,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): __import__("_codecs").encode,  # how protocol-2 pickles store bytes
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"CIFAR batch refers to {module}.{name}, which is not allowed "
                "(only numpy arrays and plain containers)"
            ) from None


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> uint8 (n, 3, 32, 32) and int64 (n,)."""
    with path.open("rb") as f:
        batch = _ArrayUnpickler(f, encoding="bytes").load()
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"load_cifar10: {path} is not a CIFAR-10 batch (keys {keys}, need b'data' and b'labels')")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(
            f"load_cifar10: {path} holds data {data.shape} and {len(labels)} labels; expected (n, 3072) and n"
        )
    return data.reshape(-1, 3, 32, 32), labels  # rows are 1024 R, 1024 G, 1024 B, each row-major


def load_cifar10(root: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from the official python batches (www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz).

    Args:
        root: the folder holding ``data_batch_1..5`` and ``test_batch``, or its parent containing
            ``cifar-10-batches-py/``.
        split: ``"train"`` (the 5 data batches in order, 50,000 images) or ``"test"`` (10,000).

    Returns:
        ``(images, labels)``: uint8 (N, 3, 32, 32) and int64 (N,).

    Security: batches are read with a restricted unpickler that only builds numpy arrays and plain
    containers, so a tampered file raises ``pickle.UnpicklingError`` rather than running code.

    Raises:
        ValueError: bad ``split`` or a malformed batch. FileNotFoundError: a batch file is absent.
        pickle.UnpicklingError: the file refers to anything but numpy arrays.
    """
    _check_split(split, "load_cifar10")
    root = Path(root)
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    names = CIFAR10_TRAIN_BATCHES if split == "train" else CIFAR10_TEST_BATCHES
    parts = []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"load_cifar10: {name} not found in {folder}")
        parts.append(_read_cifar_batch(path))
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(images), torch.from_numpy(labels)


def hf_images_to_tensors(
    dataset: Any, image_key: str = "img", label_key: str = "label"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a Hugging Face image dataset (PIL images + int labels) to uint8 (N, C, H, W), int64 (N,).

    Grayscale images become (N, 1, H, W), colour ones (N, 3, H, W) in RGB. All images must share one size.

    Raises:
        KeyError: a column is missing. ValueError: images of different sizes or modes.
    """
    for key in (image_key, label_key):
        if key not in dataset.column_names:
            raise KeyError(f"hf_images_to_tensors: column {key!r} not in {dataset.column_names}")
    arrays = [np.asarray(img if img.mode in ("L", "RGB") else img.convert("RGB")) for img in dataset[image_key]]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"hf_images_to_tensors: images have different shapes {sorted(shapes)}")
    images = np.stack(arrays) if arrays else np.zeros((0, 1, 1), dtype=np.uint8)
    images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)  # (N, C, H, W)
    labels = np.asarray(list(dataset[label_key]), dtype=np.int64)
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)), torch.from_numpy(labels)


def load_cifar10_hf(
    split: str, *, path: str = "cifar10", cache_dir: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 through ``datasets.load_dataset(path, split=split)`` (columns ``img``, ``label``).

    Args:
        split: ``"train"`` or ``"test"``.
        path: hub name (``"cifar10"``, needs network) or a local clone of the hub repository (parquet files).
        cache_dir: passed to ``load_dataset``.

    Returns:
        ``(images, labels)``: uint8 (N, 3, 32, 32) and int64 (N,).

    Raises:
        ValueError: bad ``split``; whatever ``load_dataset`` raises (e.g. no network).
    """
    _check_split(split, "load_cifar10_hf")
    import datasets  # heavy import, only when this loader is used

    return hf_images_to_tensors(datasets.load_dataset(path, split=split, cache_dir=cache_dir))


class ImageTensorDataset(Dataset):
    """Map-style dataset over in-memory images.

    Args:
        images: uint8 (N, C, H, W) tensor (or numpy array).
        labels: (N,) integer class ids.

    Item ``i``: ``{"image": uint8 (C, H, W), "label": int, "sample_id": i}``; ``sample_id`` is the row in
    ``images``, which lets the core check that the M copies of a sample are the same image.

    Raises:
        ValueError: wrong dtype/rank or different lengths. IndexError: index out of range.
    """

    def __init__(self, images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray | Sequence[int]) -> None:
        images = torch.as_tensor(images)
        labels = torch.as_tensor(labels)
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"ImageTensorDataset: images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if labels.dim() != 1 or labels.is_floating_point() or len(labels) != len(images):
            raise ValueError(
                f"ImageTensorDataset: labels must be ({len(images)},) integers, "
                f"got {labels.dtype} {tuple(labels.shape)}"
            )
        self.images = images
        self.labels = labels.to(torch.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        idx = int(idx)
        if not 0 <= idx < len(self.images):
            raise IndexError(f"ImageTensorDataset: index {idx} out of range [0, {len(self.images)})")
        return {"image": self.images[idx], "label": int(self.labels[idx]), "sample_id": idx}


def collate_images(samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack dataset items into a batch, keeping their order.

    Returns:
        ``{"image": uint8 (B, C, H, W), "label": int64 (B,), "sample_id": int64 (B,)}``.

    Raises:
        ValueError: empty ``samples`` or images of different shapes.
    """
    if not samples:
        raise ValueError("collate_images: got an empty list of samples")
    shapes = {tuple(s["image"].shape) for s in samples}
    if len(shapes) > 1:
        raise ValueError(f"collate_images: images have different shapes {sorted(shapes)}")
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "label": torch.tensor([int(s["label"]) for s in samples], dtype=torch.int64),
        "sample_id": torch.tensor([int(s["sample_id"]) for s in samples], dtype=torch.int64),
    }
