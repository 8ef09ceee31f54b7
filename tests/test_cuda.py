"""On a CUDA GPU: the kernels, the fork and a short training run agree with the CPU (marker ``cuda``).

Skipped without a GPU. ``benchmarks/device_check.py`` runs them first (``pytest -m cuda tests``) on a lent machine.
"""
import json

import pytest
import torch

from seqba import train as train_cli
from seqba.losses import consistency_loss, label_smoothed_cross_entropy
from seqba.models.fork import Fork
from seqba.models.transformer import Transformer

from runs import data_dir, recipe  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _model(dropout: float = 0.0) -> Transformer:
    torch.manual_seed(0)
    return Transformer(101, d_model=32, ffn_dim=64, num_heads=4, encoder_layers=2, decoder_layers=2,
                       dropout=dropout)


def _batch(b: int = 4, s: int = 7, t: int = 6):
    g = torch.Generator().manual_seed(1)
    src, prev = torch.randint(4, 101, (b, s), generator=g), torch.randint(4, 101, (b, t), generator=g)
    src[0, -2:] = 0
    return src, prev


def _grads(model, logits):
    return torch.autograd.grad(logits.float().log_softmax(-1)[..., 5].sum(), list(model.parameters()))


@pytest.mark.parametrize("fork", [None, Fork(2, 3, "adjacent"), Fork(3, 2, "tiled")])
def test_transformer_cuda_equals_cpu(fork):
    cpu = _model()
    gpu = _model().cuda()
    src, prev = _batch()
    logits_cpu = cpu(src, None, prev, fork=fork)
    logits_gpu = gpu(src.cuda(), None, prev.cuda(), fork=fork)
    torch.testing.assert_close(logits_gpu.cpu(), logits_cpu, rtol=1e-4, atol=1e-4)
    for a, b in zip(_grads(gpu, logits_gpu), _grads(cpu, logits_cpu)):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-3, atol=1e-4)


def test_transformer_bf16_autocast_is_close():
    model = _model().cuda()
    src, prev = (x.cuda() for x in _batch())
    full = model(src, None, prev)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        half = model(src, None, prev)
    assert torch.isfinite(half).all()
    torch.testing.assert_close(half.float(), full, rtol=0.05, atol=0.05)


def test_losses_cuda_equal_cpu():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(24, 50, generator=g)
    target = torch.randint(0, 50, (24,), generator=g)
    target[:3] = 0
    for device_logits, device_target in ((logits, target), (logits.cuda(), target.cuda())):
        loss, nll = label_smoothed_cross_entropy(device_logits, device_target, 0.1)
        if device_logits.is_cuda:
            torch.testing.assert_close((loss.cpu(), nll.cpu()), expected, rtol=1e-5, atol=1e-5)
        else:
            expected = (loss, nll)
    lprobs = logits.log_softmax(-1)
    for kind in ("sym_kl", "js"):
        cpu = consistency_loss(lprobs, 4, kind=kind)
        gpu = consistency_loss(lprobs.cuda(), 4, kind=kind)
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("precision", ["no", "bf16", "fp16"])
def test_training_run_on_cuda(recipe, tmp_path, precision):  # noqa: F811 (fixture)
    """A short run of the tiny translation recipe on the GPU, fp16 with Accelerate's loss scaler: finite losses,
    checkpoints written."""
    assert train_cli.main([str(recipe), "train.max_updates=6", f"train.mixed_precision={precision}",
                           "train.validate_interval_updates=3"]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 6 and all(v == v and abs(v) < 1e4 for v in losses)
    assert (tmp_path / "run" / "checkpoint_last.pt").is_file()
