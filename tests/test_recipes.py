"""Every recipe under recipes/ (recursively) loads, and runs a few steps end to end with tiny overrides."""
from pathlib import Path

import pytest

from seqba import config as config_lib
from seqba import train as train_cli
from seqba.data.paths import data_root

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))

# Per task: overrides that shrink model, data and schedule so that a recipe runs in seconds on CPU.
TINY = {
    "translation": [
        "model.d_model=16", "model.ffn_dim=32", "model.num_heads=2", "model.encoder_layers=1",
        "model.decoder_layers=1", "data.max_tokens=256", "train.max_updates=3", "train.validate_interval_updates=2",
        "train.save_interval_updates=2", "train.log_interval=1", "train.progress_bar=false",
    ],
    "language_modeling": [
        "model.emb_size=8", "model.hidden_size=16", "model.num_layers=2", "data.batch_size=4", "data.bptt=20",
        "train.max_updates=3", "train.validate_interval_updates=0", "train.save_interval_updates=0", "train.log_interval=1",
        "train.progress_bar=false",
    ],
    "image_classification": [
        "train.max_updates=2", "data.batch_size=8", "model.depth=8", "model.width=4", "data.eval_batch_size=64",
        "train.num_workers=0", "train.progress_bar=false",
    ],
}
# Per recipe (file stem), where the task's overrides do not fit its model.arch.
_LM_WINDOWS = ["data.batch_size=4", "data.bptt=20", "data.eval_stride=20", "train.max_updates=3",
               "train.validate_interval_updates=0", "train.save_interval_updates=0", "train.log_interval=1",
               "train.progress_bar=false"]
_LM_TRANSFORMER = ["model.d_model=16", "model.num_layers=2", "model.num_heads=2", "model.ffn_dim=32", *_LM_WINDOWS]
TINY.update({"transformer_lm_ptb_m4": _LM_TRANSFORMER, "transformer_lm_ptb_m1": _LM_TRANSFORMER,
             "gpt2_hf_ptb_m4": _LM_WINDOWS})  # the hf model's size is its config.json's (2M parameters)


def tiny(path: Path, task: str) -> list[str]:
    """The tiny overrides of a recipe: its own entry of TINY, else its task's."""
    return list(TINY.get(path.stem, TINY[task]))


# Corpora that cannot be read here (Hugging Face hub) are swapped for the built-in synthetic corpus.
SYNTHETIC = ["data.prepare.preset=synthetic", "data.prepare.vocab_size=120", "data.prepare.synthetic_train=300",
             "data.prepare.synthetic_valid=20", "data.prepare.synthetic_test=20"]
SHARED = {"multi30k", "opennmt-wmt-ende", "wmt16-newstest", "ptb", "mnist"}


def test_recipes_exist():
    assert len(RECIPES) >= 6


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads(path):
    cfg = config_lib.load(path)
    assert cfg.task in TINY


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_runs_a_few_steps(path, tmp_path):
    cfg = config_lib.load(path)
    overrides = [*tiny(path, cfg.task), f"output_dir={tmp_path / 'run'}"]
    if cfg.task == "translation":
        overrides.append(f"data.prepared_dir={tmp_path / 'data'}")
        preset = cfg.data.prepare.preset
        if preset in SHARED:
            if data_root() is None:
                pytest.skip(f"{path.name} needs ../shared/data/{preset} (set SEQBA_DATA)")
            overrides += ["data.prepare.vocab_size=300", "data.prepare.max_train_lines=400"]
        elif preset != "synthetic":
            overrides += SYNTHETIC
        else:
            overrides += SYNTHETIC[1:]
    if cfg.task == "image_classification":
        if cfg.data.dataset == "cifar10":  # no CIFAR-10 here: a tiny folder of fake python batches
            from test_image_task import write_fake_cifar10

            overrides.append(f"data.root={write_fake_cifar10(tmp_path / 'cifar')}")
        elif data_root() is None:
            pytest.skip(f"{path.name} needs ../shared/data/mnist (set SEQBA_DATA)")
    if cfg.task == "language_modeling" and cfg.data.root is None and data_root() is None:
        pytest.skip(f"{path.name} needs ../shared/data/ptb (set SEQBA_DATA)")
    assert train_cli.main([str(path), *overrides]) == 0
    assert (tmp_path / "run" / "checkpoint_last.pt").is_file()
