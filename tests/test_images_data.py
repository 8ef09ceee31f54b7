"""IDX and CIFAR readers, the MNIST split on the real digits, the dataset and its collate."""
import gzip
import os
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from seqba.data.images import (
    ImageTensorDataset,
    collate_images,
    hf_images_to_tensors,
    load_cifar10,
    load_mnist,
    read_idx,
)


def write_idx(path, array, magic, compress):
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_roundtrip(tmp_path, compress):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "img", images, 2051, compress)
    write_idx(tmp_path / "lab", np.array([3, 7]), 2049, compress)
    assert np.array_equal(read_idx(tmp_path / "img"), images)
    assert np.array_equal(read_idx(tmp_path / "lab", magic=2049), [3, 7])


def test_read_idx_errors_name_file_and_magic(tmp_path):
    write_idx(tmp_path / "lab", np.array([1, 2]), 2049, True)
    with pytest.raises(ValueError, match=r"lab has magic 2049, expected 2051"):
        read_idx(tmp_path / "lab", magic=2051)
    (tmp_path / "junk").write_bytes(b"\x00\x00\x08\x09rest")
    with pytest.raises(ValueError, match=r"junk has magic 2057, expected 2051 or 2049"):
        read_idx(tmp_path / "junk")
    (tmp_path / "short").write_bytes((2049).to_bytes(4, "big") + (5).to_bytes(4, "big") + b"\x01")
    with pytest.raises(ValueError, match="declares shape"):
        read_idx(tmp_path / "short")


def test_mnist_split_on_real_digits(shared_data):
    train_x, train_y = load_mnist(shared_data, "train")
    test_x, test_y = load_mnist(shared_data, "test")
    assert train_x.dtype == torch.uint8 and train_x.shape == (8000, 1, 28, 28)
    assert test_x.shape == (2000, 1, 28, 28) and test_y.dtype == torch.int64
    # disjoint and covering: the two splits are a permutation of the 10,000 file rows
    rows = {r.tobytes() for r in read_idx(shared_data / "mnist" / "t10k-images-idx3-ubyte.gz")}
    assert len(rows) == 10000  # every digit is unique, so images identify rows
    seen = [x.numpy().tobytes() for x in torch.cat([train_x, test_x])]
    assert len(set(seen)) == 10000 and set(seen) == rows
    # class-balanced: each class's test share is 20% (rounded)
    train_counts = torch.bincount(train_y, minlength=10)
    test_counts = torch.bincount(test_y, minlength=10)
    total = train_counts + test_counts
    assert torch.all((test_counts.double() - 0.2 * total.double()).abs() <= 0.5)
    # deterministic, and a different seed gives a different split
    again_x, again_y = load_mnist(shared_data / "mnist", "test")
    assert torch.equal(again_x, test_x) and torch.equal(again_y, test_y)
    other_x, _ = load_mnist(shared_data, "test", seed=1)
    assert not torch.equal(other_x, test_x)


def test_load_mnist_errors(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, "valid")
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_mnist(tmp_path, "train")


def write_cifar_batch(path, data, labels, protocol=2):
    batch = {b"batch_label": b"fake", b"labels": list(labels), b"data": data, b"filenames": [b"x.png"] * 2}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=protocol)


def test_load_cifar10_from_fake_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (2, 3072), dtype=np.uint8) for _ in range(6)]
    for i, data in enumerate(batches[:5]):
        write_cifar_batch(folder / f"data_batch_{i + 1}", data, [i, 9 - i], protocol=(2, 4, 5)[i % 3])
    write_cifar_batch(folder / "test_batch", batches[5], [4, 2])
    images, labels = load_cifar10(tmp_path, "train")
    assert images.dtype == torch.uint8 and images.shape == (10, 3, 32, 32)
    assert labels.tolist() == [0, 9, 1, 8, 2, 7, 3, 6, 4, 5]
    # channel-major rows: first 1024 values are red, row-major
    assert images[0, 0, 0, 5] == batches[0][0, 5] and images[0, 1, 2, 3] == batches[0][0, 1024 + 2 * 32 + 3]
    test_images, test_labels = load_cifar10(folder, "test")
    assert test_images.shape == (2, 3, 32, 32) and test_labels.tolist() == [4, 2]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_load_cifar10_refuses_code(tmp_path):
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": []}, f)
    with pytest.raises(pickle.UnpicklingError, match="system"):
        load_cifar10(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        load_cifar10(tmp_path, "train")


def test_hf_conversion_on_local_dataset():
    datasets = pytest.importorskip("datasets")
    pil = pytest.importorskip("PIL.Image")
    arrays = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")})
    ds = datasets.Dataset.from_dict({"img": [pil.fromarray(a) for a in arrays], "label": [1, 0, 2]}, features)
    images, labels = hf_images_to_tensors(ds)
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8 and labels.tolist() == [1, 0, 2]
    assert torch.equal(images[1], torch.from_numpy(arrays[1]).permute(2, 0, 1))


def test_dataset_and_collate_keep_order():
    images = torch.arange(5 * 1 * 2 * 2, dtype=torch.uint8).reshape(5, 1, 2, 2)
    ds = ImageTensorDataset(images, torch.tensor([3, 1, 4, 1, 5]))
    item = ds[2]
    assert item["label"] == 4 and item["sample_id"] == 2 and torch.equal(item["image"], images[2])
    batch = next(iter(DataLoader(ds, batch_size=3, sampler=[4, 0, 2], collate_fn=collate_images)))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (3, 1, 2, 2)
    assert batch["label"].tolist() == [5, 3, 4] and batch["label"].dtype == torch.int64
    assert batch["sample_id"].tolist() == [4, 0, 2] and torch.equal(batch["image"], images[[4, 0, 2]])
    with pytest.raises(ValueError, match="uint8"):
        ImageTensorDataset(images.float(), torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\(5,\)"):
        ImageTensorDataset(images, torch.zeros(4, dtype=torch.int64))
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(ValueError, match="empty"):
        collate_images([])
