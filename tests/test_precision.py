"""Mixed precision and compilation (issue 9): bf16 autocast trains every task within a stated tolerance of fp32,
and a compiled model computes the eager model's losses."""
import json
import os
import shutil

import pytest

from seqba import train as train_cli

from runs import data_dir, recipe  # noqa: F401 (fixtures)
from test_lm_task import SMALL as LM_RECIPE, TINY as LM_TINY, ptb  # noqa: F401 (fixture)
from test_recipes import TINY as IMAGE_TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPDATES = 200
#: bf16 keeps 8 bits of mantissa: after 200 updates the mean training loss of the last 20 updates stays within
#: this fraction of fp32's (measured: well inside it for all three tasks).
BF16_TOLERANCE = 0.05


def tail_loss(run, last=20):
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r and r["step"] > UPDATES - last]
    assert len(losses) == last
    return sum(losses) / last


def compare_precisions(args, tmp_path):
    from accelerate.state import AcceleratorState

    out = {}
    for precision in ("no", "bf16"):
        AcceleratorState._reset_state(reset_partial_state=True)  # a new process would start afresh
        run = tmp_path / precision
        assert train_cli.main([*args, f"train.mixed_precision={precision}", f"output_dir={run}"]) == 0
        out[precision] = tail_loss(run)
    print(f"bf16 vs fp32 tail loss: {out}, relative difference {abs(out['bf16'] / out['no'] - 1):.4f}")
    assert out["bf16"] == pytest.approx(out["no"], rel=BF16_TOLERANCE), out


def test_bf16_translation(recipe, tmp_path):
    compare_precisions([str(recipe), f"train.max_updates={UPDATES}", "train.validate_interval_updates=0"], tmp_path)


def test_bf16_language_modeling(ptb, tmp_path):
    compare_precisions([str(LM_RECIPE), ptb, *LM_TINY, f"train.max_updates={UPDATES}"], tmp_path)


def test_bf16_images(shared_data, tmp_path):
    recipe = os.path.join(ROOT, "recipes", "resnet_mnist_m4.yaml")
    tiny = [o for o in IMAGE_TINY["image_classification"] if not o.startswith("train.max_updates")]
    compare_precisions([recipe, *tiny, f"train.max_updates={UPDATES}", "train.max_epochs=0", "train.log_interval=1"],
                       tmp_path)


def compare_compiled(args, tmp_path, rel=1e-4):
    """The logged training losses of ``train.compile=true`` equal eager's (no dropout: inductor draws its own
    random numbers), update by update."""
    from accelerate.state import AcceleratorState

    def losses(run):
        return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]

    for name, extra in (("eager", []), ("compiled", ["train.compile=true"])):
        AcceleratorState._reset_state(reset_partial_state=True)
        assert train_cli.main([*args, *extra, "train.log_interval=1", f"output_dir={tmp_path / name}"]) == 0
    eager, compiled = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert len(eager) == 4
    assert compiled == pytest.approx(eager, rel=rel)


NEEDS_CXX = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None and shutil.which("c++") is None,
                               reason="inductor compiles C++ kernels on CPU and no C++ compiler is on PATH")


@NEEDS_CXX
def test_compiled_translation_matches_eager(recipe, tmp_path):
    compare_compiled([str(recipe), "train.max_updates=4", "train.validate_interval_updates=0", "model.dropout=0"],
                     tmp_path)


@NEEDS_CXX
def test_compiled_language_modeling_matches_eager(ptb, tmp_path):
    from test_lm_task import NO_DROPOUT

    compare_compiled([str(LM_RECIPE), ptb, *LM_TINY, *NO_DROPOUT, "train.max_updates=4"], tmp_path)


@NEEDS_CXX
def test_compiled_images_match_eager(shared_data, tmp_path):
    recipe = os.path.join(ROOT, "recipes", "resnet_mnist_m4.yaml")
    tiny = [o for o in IMAGE_TINY["image_classification"] if not o.startswith("train.max_updates")]
    compare_compiled([recipe, *tiny, "model.ghost_batch_size=8", "train.max_updates=4", "train.max_epochs=0"], tmp_path)
