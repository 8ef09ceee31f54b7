"""Training-time gradient statistics (issue 11): the per-copy statistics against a direct computation, and the
training trajectory with ``train.grad_stats_interval`` on equal, bit for bit, to the one with it off (translation,
language modelling on real PTB, images on a fake CIFAR folder), with the statistics in metrics.jsonl."""
import json

import pytest
import torch
from torch import nn

from seqba import config as config_lib
from seqba import train as train_cli
from seqba.errors import ConfigError
from seqba.gradstats import copy_grad_stats
from seqba.layout import CopyLayout

from runs import ROOT, data_dir, recipe  # noqa: F401 (fixtures)
from test_image_task import TINY as IMAGE_TINY
from test_image_task import fake_cifar  # noqa: F401 (fixture)
from test_lm_task import TINY as LM_TINY
from test_lm_task import one_thread, ptb  # noqa: F401 (fixtures)

KEYS = ("grad_norm_full", "grad_norm_copy_mean", "grad_cos_copies", "grad_var_copies")


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def trajectory(run):
    """Everything the run logged except the statistics and wall-clock fields."""
    out = []
    for r in records(run):
        kept = {k: v for k, v in r.items() if not k.startswith("grad_") and not k.endswith("_per_s")
                and k != "seconds"}
        if set(kept) - {"step", "epoch"}:
            out.append(kept)
    return out


def on_and_off(args, tmp_path, interval=1):
    assert train_cli.main([*args, f"output_dir={tmp_path / 'off'}"]) == 0
    assert train_cli.main([*args, f"train.grad_stats_interval={interval}", f"output_dir={tmp_path / 'on'}"]) == 0
    assert trajectory(tmp_path / "on") == trajectory(tmp_path / "off")  # bit-exact: == on floats
    off = torch.load(tmp_path / "off" / "checkpoint_last.pt", weights_only=True)
    on = torch.load(tmp_path / "on" / "checkpoint_last.pt", weights_only=True)
    for k, v in off["model"].items():
        assert torch.equal(v, on["model"][k]), k  # weights and buffers (BN running statistics) too
    stats = [r for r in records(tmp_path / "on") if "grad_norm_full" in r]
    assert stats and not any("grad_norm_full" in r for r in records(tmp_path / "off"))
    return stats


def test_translation_losses_identical_with_statistics_on(recipe, tmp_path):
    stats = on_and_off([str(recipe), "ba.repeats=3", "train.max_updates=4", "train.validate_interval_updates=2"],
                       tmp_path)
    assert [r["step"] for r in stats] == [1, 2, 3, 4]
    for r in stats:
        assert r["grad_norm_full"] > 0 and r["grad_norm_copy_mean"] >= r["grad_norm_full"] * (1 - 1e-9)
        assert -1 <= r["grad_cos_copies"] < 1 and r["grad_var_copies"] > 0  # dropout: the copies differ
    assert (tmp_path / "on" / "curves.png").is_file()


def test_lm_losses_identical_with_statistics_on(ptb, tmp_path):
    stats = on_and_off([str(ROOT / "recipes" / "awd_lstm_ptb_small_m10.yaml"), ptb, *LM_TINY, "ba.repeats=2",
                        "train.max_updates=4"], tmp_path, interval=2)
    assert [r["step"] for r in stats] == [2, 4]
    assert all(0 < r["grad_cos_copies"] < 1 for r in stats)


def test_image_losses_and_bn_statistics_identical_with_statistics_on(fake_cifar, tmp_path):
    stats = on_and_off([str(ROOT / "recipes" / "resnet44_cifar10_m40.yaml"), f"data.root={fake_cifar}",
                        *IMAGE_TINY, "ba.repeats=2", "model.ghost_batch_size=8", "train.validate_interval_updates=1"],
                       tmp_path)
    assert len(stats) == 2


def test_m1_logs_norms_and_no_pairwise_statistics(recipe, tmp_path):
    args = [str(recipe), "ba.repeats=1", "train.max_updates=1", "train.grad_stats_interval=1",
            f"output_dir={tmp_path / 'run'}"]
    assert train_cli.main(args) == 0
    (r,) = [r for r in records(tmp_path / "run") if "grad_norm_full" in r]
    assert r["grad_norm_full"] == pytest.approx(r["grad_norm_copy_mean"])
    assert r["grad_cos_copies"] is None and r["grad_var_copies"] is None  # NaN is written as null


def test_negative_interval_is_a_config_error(recipe):
    with pytest.raises(ConfigError, match="grad_stats_interval"):
        config_lib.load(recipe, ["train.grad_stats_interval=-1"])


@pytest.mark.parametrize("layout", ["adjacent", "tiled"])
def test_copy_statistics_match_a_direct_computation(layout):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 1))
    params = list(model.parameters())
    samples, copies = 6, 3
    x = torch.randn(samples * copies, 5)
    copy = CopyLayout(copies, layout).copy_of_rows(len(x))
    losses = model(x).squeeze(-1).pow(2)  # (N,)

    def flat(loss):
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)]).double()

    g = torch.stack([flat(losses[copy == c].sum() / samples) for c in range(copies)])  # (M, P)
    full = flat(losses.sum() / samples / copies)
    stats = copy_grad_stats(losses, copy, copies, params, normaliser=len(x) / copies)  # frees the graph
    assert torch.allclose(g.mean(0), full, atol=1e-6)  # the copies' mean is the update's gradient
    cos = [torch.cosine_similarity(g[a], g[b], dim=0) for a in range(copies) for b in range(a + 1, copies)]
    assert stats["grad_norm_full"] == pytest.approx(float(full.norm()), rel=1e-5)
    assert stats["grad_norm_copy_mean"] == pytest.approx(float(g.norm(dim=1).mean()), rel=1e-5)
    assert stats["grad_cos_copies"] == pytest.approx(float(torch.stack(cos).mean()), rel=1e-5)
    assert stats["grad_var_copies"] == pytest.approx(float(g.var(0, unbiased=True).sum()), rel=1e-5)
    assert all(p.grad is None for p in params)  # .grad untouched
