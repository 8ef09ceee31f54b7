"""Image classification task: both per-copy augmentation paths, micro-batch splits, values checked against hand
computations (the loss over the M·B rows, each copy's crop/flip, ghost batch norm statistics, validation accuracy),
and the image recipes end to end (MNIST on the shared digits, CIFAR-10 on a tiny fake folder of python batches)
through seqba.train and seqba.eval."""
import copy
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqba import config as config_lib
from seqba.ba import BatchAugmentation
from seqba.checkpoint import load_model_file
from seqba import eval as eval_cli
from seqba import train as train_cli
from seqba.data.transforms import CIFAR10_MEAN, CIFAR10_STD
from seqba.models.ghost_bn import GhostBatchNorm2d
from seqba.tasks.image_classification import (ImageClassificationTask, ImageDataConfig, load_split, mcnemar_exact,
                                              split_labels)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
CIFAR_RECIPES = sorted(RECIPES.glob("resnet44_cifar10_*.yaml"))
MNIST_RECIPES = sorted(RECIPES.glob("resnet_mnist_*.yaml"))
# What makes any image recipe run in a second or two on a CPU (CIFAR ones also need data.root=<fake folder>).
TINY = ["train.max_updates=2", "data.batch_size=8", "model.depth=8", "model.width=4", "data.eval_batch_size=64",
        "train.num_workers=0", "train.progress_bar=false"]


def write_fake_cifar10(folder: Path, per_batch: int = 8, test: int = 16, seed: int = 0) -> Path:
    """A CIFAR-10 python-batches folder (data_batch_1..5, test_batch) of random images, as the official pickles."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test)]
    for name, n in names:
        batch = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, n).tolist(),
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        with (folder / name).open("wb") as f:
            pickle.dump(batch, f)
    return folder


@pytest.fixture
def fake_cifar(tmp_path):
    return write_fake_cifar10(tmp_path / "cifar-10-batches-py")


class FakeAccelerator:
    """What the task uses of accelerate.Accelerator, for one CPU process."""

    device = torch.device("cpu")
    num_processes = 1
    process_index = 0
    is_main_process = True

    def reduce(self, tensor, op):
        return tensor

    def unwrap_model(self, model):
        return model


def make_task(root, *overrides):
    cfg = config_lib.load(RECIPES / "resnet44_cifar10_m40.yaml", [f"data.root={root}", *TINY, *overrides])
    return ImageClassificationTask(cfg, FakeAccelerator())


def ba_of(task):
    """The trainer's BA step component for ``task`` (expand, split, counters)."""
    return BatchAugmentation(task.cfg.ba, task, "images")


def test_fake_cifar_folder_loads(fake_cifar):
    images, labels = load_split(ImageDataConfig(dataset="cifar10", root=str(fake_cifar)), "train")
    assert images.shape == (40, 3, 32, 32) and images.dtype == torch.uint8 and labels.shape == (40,)
    images, _ = load_split(ImageDataConfig(dataset="cifar10", root=str(fake_cifar.parent)), "test")
    assert images.shape == (16, 3, 32, 32)


@pytest.mark.parametrize("expand_on_device,augment_on_device", [(True, True), (False, False), (False, True)])
def test_every_index_m_times_and_copies_differ(fake_cifar, expand_on_device, augment_on_device):
    m, b = 3, 8
    torch.manual_seed(0)
    task = make_task(fake_cifar, f"ba.repeats={m}", f"ba.expand_on_device={str(expand_on_device).lower()}",
                     f"data.augment_on_device={str(augment_on_device).lower()}")
    seen = []
    for batch in task.epoch_iterator(0):
        rows = batch["label"].shape[0]
        assert rows == (b if expand_on_device else m * b)
        expanded = ba_of(task).expand(batch)
        ids, images = expanded["sample_id"], expanded["image"]
        assert images.shape == (m * b, 3, 32, 32) and images.dtype == torch.float32
        assert torch.equal(torch.bincount(ids, minlength=40)[ids.unique()], torch.full((b,), m))
        by_copy = ids.view(m, b)  # layout "tiled": copy c is rows [c*B, (c+1)*B)
        assert (by_copy == by_copy[0]).all()
        views = images.view(m, b, -1)
        for i in range(m):
            for j in range(i + 1, m):
                assert (views[i] != views[j]).any(-1).all(), "two copies of an image got the same augmentation"
        counts = {**ba_of(task).counts(task.sample_size(expanded)), **task.step_logs(batch, expanded)}
        assert counts == {"images_count": m * b, "distinct_images_count": b}
        seen.append(by_copy[0])
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(40))  # each image once per epoch
    resumed = [batch["sample_id"][:b] for batch in task.epoch_iterator(0, start=2)]
    assert all(torch.equal(x, y) for x, y in zip(resumed, seen[2:])) and len(resumed) == len(seen) - 2


def test_repeating_augmented_loader_output_is_refused(fake_cifar):
    with pytest.raises(config_lib.ConfigError, match="identical copies"):
        make_task(fake_cifar, "ba.repeats=2", "data.augment_on_device=false")


def test_sample_chunks_aligned_with_ghost_batches_match_whole_batch(fake_cifar):
    task = make_task(fake_cifar, "ba.repeats=4", "model.ghost_batch_size=8")
    torch.manual_seed(0)
    expanded = ba_of(task).expand(next(iter(task.epoch_iterator(0))))  # 32 rows, ghost batches of 8
    model = task.build_model()
    grads, totals = [], []
    for chunks in (1, 2, 4):  # chunks of 32, 16, 8 rows: whole ghost batches
        net = copy.deepcopy(model)
        parts = ba_of(task).split(expanded, chunks)
        assert sum(p["label"].shape[0] for p in parts) == 32
        loss_sum = 0.0
        for part in parts:
            loss, logs = task.loss(net, part)
            (loss / task.sample_size(expanded)).backward()
            loss_sum += float(logs["loss_sum"])
        totals.append(loss_sum)
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    for total, grad in zip(totals[1:], grads[1:]):
        assert math.isclose(total, totals[0], rel_tol=1e-5)
        torch.testing.assert_close(grad, grads[0], rtol=1e-4, atol=1e-6)


def test_mixup_and_label_smoothing(fake_cifar):
    task = make_task(fake_cifar, "ba.repeats=2", "data.mixup_alpha=0.4", "criterion.label_smoothing=0.1")
    expanded = ba_of(task).expand(next(iter(task.epoch_iterator(0))))
    soft = expanded["soft_target"]
    assert soft.shape == (16, 10)
    torch.testing.assert_close(soft.sum(1), torch.ones(16))
    loss, logs = task.loss(task.build_model(), expanded)
    assert torch.isfinite(loss) and 0 <= float(logs["correct_sum"]) <= 16


def first_expanded(task, seed=0):
    """The first training batch of epoch 0, expanded to M·B augmented rows."""
    torch.manual_seed(seed)
    return ba_of(task).expand(next(iter(task.epoch_iterator(0))))


def normalized(images: torch.Tensor) -> torch.Tensor:
    """CIFAR-10 uint8 (N, C, H, W) -> float64 scaled to [0, 1] and normalized per channel, written out by hand."""
    mean, std = torch.tensor(CIFAR10_MEAN, dtype=torch.float64), torch.tensor(CIFAR10_STD, dtype=torch.float64)
    return (images.double() / 255.0 - mean[:, None, None]) / std[:, None, None]


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_loss_is_the_cross_entropy_of_the_rows(fake_cifar, eps):
    """The loss of an expanded batch is the (label-smoothed) cross-entropy summed over its M·B rows, computed here
    from the model's logits; every row keeps the label of its own image; correct_sum is the top-1 hit count."""
    m, b = 3, 8
    task = make_task(fake_cifar, f"ba.repeats={m}", f"criterion.label_smoothing={eps}")
    expanded = first_expanded(task)
    _, labels = load_split(task.cfg.data, "train")
    assert torch.equal(expanded["label"], labels[expanded["sample_id"]])
    assert task.sample_size(expanded) == m * b
    model = task.build_model()  # training mode: BN on the batch's statistics, the same for both forwards
    loss, logs = task.loss(model, expanded)
    with torch.no_grad():
        logp = torch.log_softmax(model(expanded["image"]).double(), dim=-1)  # (M·B, K)
    nll = -logp.gather(1, expanded["label"][:, None]).squeeze(1)  # (M·B,)
    hand = ((1 - eps) * nll - eps * logp.mean(-1)).sum()
    assert float(loss.detach()) == pytest.approx(float(hand), rel=1e-5)
    assert float(logs["loss_sum"]) == float(loss.detach())
    assert int(logs["correct_sum"]) == int((logp.argmax(-1) == expanded["label"]).sum())


def test_each_copy_is_its_own_crop_and_flip_of_its_image(fake_cifar):
    """Per-copy augmentation: every row is one of the 81 x 2 zero-padded crops / flips of its own image
    (normalized), and the M copies of an image are different ones; evaluation rows are only normalized."""
    m, b, pad = 3, 8, 4
    task = make_task(fake_cifar, f"ba.repeats={m}", "data.cutout_size=0")
    expanded = first_expanded(task)
    images, _ = load_split(task.cfg.data, "train")
    padded = torch.nn.functional.pad(images[expanded["sample_id"]], (pad, pad, pad, pad))  # uint8 zeros outside
    side = images.shape[-1]
    chosen = []
    for row, image in enumerate(expanded["image"].double()):
        views = torch.stack([padded[row, :, y:y + side, x:x + side] for y in range(2 * pad + 1)
                             for x in range(2 * pad + 1)])  # (81, C, H, W)
        candidates = normalized(torch.cat([views, views.flip(-1)]))  # (162, C, H, W)
        match = torch.isclose(candidates, image, atol=1e-5).flatten(1).all(1).nonzero().flatten().tolist()
        assert match, f"row {row} is no crop/flip of image {int(expanded['sample_id'][row])}"
        chosen.append(match[0])
    by_copy = torch.tensor(chosen).view(m, b)  # layout tiled: copy c is rows [c·B, (c+1)·B)
    assert all(len(set(by_copy[:, j].tolist())) > 1 for j in range(b)), "copies of an image share their view"
    valid = task.valid_images[:5]
    torch.testing.assert_close(task.augment_images(valid, train=False).double(), normalized(valid), rtol=0, atol=1e-5)


def test_ghost_batch_norm_normalizes_each_copy_with_its_own_statistics(fake_cifar):
    """M=4 copies of B=8 images, ghost batches of 8, layout tiled: each ghost batch is one augmented copy of the
    batch, normalized with its own mean and biased variance; the running statistics move by one momentum step
    towards the mean of the ghost means and of the ghost unbiased variances."""
    m, b, ghost = 4, 8, 8
    task = make_task(fake_cifar, f"ba.repeats={m}", f"model.ghost_batch_size={ghost}")
    expanded = first_expanded(task)
    ids = expanded["sample_id"].view(m, b)
    assert all(sorted(row.tolist()) == sorted(ids[0].tolist()) for row in ids)  # each ghost batch: B distinct
    model = task.build_model()
    bn = next(module for module in model.modules() if isinstance(module, GhostBatchNorm2d))  # the stem's BN
    assert bn.ghost_batch_size == ghost
    seen = {}
    bn.register_forward_hook(lambda module, args, out: seen.update(x=args[0].detach(), out=out.detach()))
    task.loss(model, expanded)
    x = seen["x"].double().view(m, ghost, *seen["x"].shape[1:])  # (G, n, C, H, W)
    mean = x.mean(dim=(1, 3, 4), keepdim=True)  # (G, 1, C, 1, 1)
    var = x.var(dim=(1, 3, 4), unbiased=False, keepdim=True)
    weight, bias = bn.weight.double()[:, None, None], bn.bias.double()[:, None, None]
    hand = (x - mean) / torch.sqrt(var + bn.eps) * weight + bias
    torch.testing.assert_close(seen["out"].double(), hand.view_as(seen["out"]), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(mean[0], mean[1]), "two copies with the same statistics: no per-copy augmentation?"
    count = x[0].numel() / x.shape[2]  # values per channel in a ghost batch
    means, unbiased = mean.flatten(1).mean(0), (var * count / (count - 1)).flatten(1).mean(0)  # (C,)
    momentum = bn.momentum  # from the initial running mean 0 and variance 1
    torch.testing.assert_close(bn.running_mean.double(), momentum * means, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(bn.running_var.double(), 1 - momentum + momentum * unbiased, rtol=1e-4, atol=1e-6)
    assert int(bn.num_batches_tracked) == 1


def test_validation_counts_hits_on_the_unaugmented_split(fake_cifar):
    """validate() reports the top-1 accuracy and mean cross-entropy of the test split computed from the model's
    logits on the normalized (unaugmented) images, in batches of 5 that do not divide the 16 images. The labels are
    set from those logits so that exactly 10 of 16 are hits."""
    task = make_task(fake_cifar, "data.eval_batch_size=5")
    model = task.build_model().eval()
    with torch.no_grad():
        logits = model(normalized(task.valid_images).float()).double()  # (16, K)
    predicted = logits.argmax(-1)
    assert len(predicted) == 16
    task.valid_labels = torch.where(torch.arange(16) < 10, predicted, (predicted + 1) % 10)
    with torch.no_grad():
        metrics = task.validate(model)
    assert metrics["accuracy"] == 10 / 16
    assert metrics["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, task.valid_labels)),
                                            rel=1e-5)


def run_recipe_and_eval(recipe, tmp_path, capsys, *overrides):
    out = tmp_path / recipe.stem
    assert train_cli.main([str(recipe), *TINY, f"output_dir={out}", *overrides]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["final_valid"]
    assert 0.0 <= metrics["accuracy"] <= 1.0 and math.isfinite(metrics["loss"])
    assert eval_cli.main(["--checkpoint", str(out / "checkpoint_best.pt"), "--device", "cpu"]) == 0
    plain = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    predictions = tmp_path / "predictions.txt"
    assert eval_cli.main(["--checkpoint", str(out), "--device", "cpu", "--tta", "2", "--output", str(predictions)]) == 0
    tta = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= plain["accuracy"] <= 1.0 and 0.0 <= tta["tta_accuracy"] <= 1.0 and tta["tta"] == 2
    assert plain["accuracy"] == tta["accuracy"]  # the plain score does not depend on --tta
    cfg, _, _ = load_model_file(out / "checkpoint_best.pt")
    labels = split_labels(cfg, "test")  # one predicted class per line, scored as the reported accuracy
    lines = predictions.read_text().splitlines()
    assert len(lines) == len(labels) == plain["images"] and set(lines) <= {str(c) for c in range(10)}
    assert sum(p == r for p, r in zip(lines, labels)) / len(labels) == plain["accuracy"]
    return plain


@pytest.mark.parametrize("recipe", MNIST_RECIPES, ids=lambda p: p.stem)
def test_mnist_recipe_end_to_end(recipe, shared_data, tmp_path, capsys):
    plain = run_recipe_and_eval(recipe, tmp_path, capsys)
    assert plain["images"] == 2000  # the held-out 20% of the 10,000 digits


@pytest.mark.parametrize("recipe", CIFAR_RECIPES, ids=lambda p: p.stem)
def test_cifar_recipe_on_fake_folder(recipe, fake_cifar, tmp_path, capsys):
    plain = run_recipe_and_eval(recipe, tmp_path, capsys, f"data.root={fake_cifar}")
    assert plain["images"] == 16


def test_recipes_found():
    assert len(CIFAR_RECIPES) == 3 and len(MNIST_RECIPES) == 3  # m1, m4, m4_js


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)), max_size=60))
def test_mcnemar_exact_matches_the_binomial_enumeration(triples):
    """Against the slow two-sided exact binomial test: the probability of every split of the discordant images at
    most as likely as the observed one (scipy's binomtest "minlike" definition)."""
    base, system, refs = ([str(t[i]) for t in triples] for i in range(3))
    b = sum(x == r != y for x, y, r in zip(base, system, refs))
    c = sum(y == r != x for x, y, r in zip(base, system, refs))
    n = b + c
    pmf = [math.comb(n, i) / 2 ** n for i in range(n + 1)]
    expected = min(1.0, sum(q for q in pmf if q <= pmf[b] * (1 + 1e-9)))
    assert mcnemar_exact(base, {"s": system}, refs)["s"] == pytest.approx(expected, rel=1e-9)


def test_mcnemar_exact_values_and_errors():
    refs = list("0123456789" * 3)
    right, wrong = refs[:], ["x"] * len(refs)
    assert mcnemar_exact(right, {"same": right, "all wrong": wrong}, refs) == {"same": 1.0,
                                                                               "all wrong": 2 / 2 ** 30}
    system = right[:20] + wrong[:10]  # 10 discordant images, all in the baseline's favour, and 3 the other way
    base = wrong[:3] + right[3:]
    # two-sided binomial test of 3 of 13 at 1/2 (scipy.stats.binomtest(3, 13).pvalue): 2 * P(X <= 3)
    assert mcnemar_exact(base, {"s": system}, refs)["s"] == pytest.approx(2 * (1 + 13 + 78 + 286) / 2 ** 13)
    with pytest.raises(ValueError, match="s: 2 predictions for 30 images"):
        mcnemar_exact(right, {"s": right[:2]}, refs)
