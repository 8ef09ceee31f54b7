"""The typed config: YAML + overrides -> dataclasses; unknown keys and wrong types are errors that say where."""
import pytest

from seqba import config as config_lib
from seqba.config import ConfigError


def write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = """task: translation
data:
  max_tokens: 512
model:
  d_model: 32
ba:
  repeats: 4
train:
  max_updates: 10
"""


def test_load_and_override(tmp_path):
    cfg = config_lib.load(write(tmp_path, BASE), ["ba.repeats=2", "optim.lr=1e-3", "data.prepare.vocab_size=300"])
    assert cfg.ba.repeats == 2 and cfg.optim.lr == 1e-3 and cfg.data.max_tokens == 512
    assert cfg.model.d_model == 32 and cfg.model.ffn_dim == 2048  # defaults from the dataclass
    assert cfg.data.prepare.vocab_size == 300
    assert config_lib.to_dict(cfg)["ba"]["repeats"] == 2


def test_unknown_key_names_file_line_and_valid_keys(tmp_path):
    path = write(tmp_path, BASE.replace("  repeats: 4", "  repeats: 4\n  repeat: 2"))
    with pytest.raises(ConfigError) as err:
        config_lib.load(path)
    msg = str(err.value)
    assert f"{path}:8: ba.repeat" in msg and "unknown key 'repeat'" in msg and "repeats" in msg and "group_size" in msg


def test_unknown_top_level_and_task(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'optimizer'.*valid keys"):
        config_lib.load(write(tmp_path, BASE + "optimizer: {}\n"))
    with pytest.raises(ConfigError, match="unknown task 'translate'.*translation"):
        config_lib.load(write(tmp_path, BASE.replace("task: translation", "task: translate")))


def test_wrong_type_and_override_errors(tmp_path):
    path = write(tmp_path, BASE)
    with pytest.raises(ConfigError, match="bad.yaml:3: data.max_tokens: expected int, got 'many'"):
        config_lib.load(write(tmp_path, BASE.replace("512", "many"), "bad.yaml"))
    with pytest.raises(ConfigError, match="command-line override ba.repeats: expected int"):
        config_lib.load(path, ["ba.repeats=four"])
    with pytest.raises(ConfigError, match="key=value"):
        config_lib.load(path, ["ba.repeats"])
    with pytest.raises(ConfigError, match="command-line override model.dmodel: unknown key"):
        config_lib.load(path, ["model.dmodel=3"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        config_lib.load(tmp_path / "nope.yaml")


def test_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="invalid YAML"):
        config_lib.load(write(tmp_path, "task: [translation\n"))


def test_duplicate_key_names_both_lines(tmp_path):
    path = write(tmp_path, BASE.replace("  repeats: 4", "  repeats: 4\n  repeats: 2"))
    with pytest.raises(ConfigError, match=r"recipe.yaml:8: ba.repeats given twice \(first on line 7\)"):
        config_lib.load(path)
    with pytest.raises(ConfigError, match="recipe.yaml:10: train given twice \\(first on line 8\\)"):
        config_lib.load(write(tmp_path, BASE + "train: {max_updates: 3}\n"))


def test_empty_recipe_and_folder(tmp_path):
    with pytest.raises(ConfigError, match="the recipe is empty"):
        config_lib.load(write(tmp_path, "# nothing yet\n"))
    with pytest.raises(FileNotFoundError, match="is a folder"):
        config_lib.load(tmp_path)


def test_empty_output_dir_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="command-line override output_dir: must name a folder"):
        config_lib.load(write(tmp_path, BASE), ["output_dir="])


def test_upgrade_renames_keys_of_older_checkpoints():
    tree = {"task": "translation", "train": {"validate_interval": 5, "save_interval": 7, "eval_batch_size": 3,
                                                "max_updates": 1}}
    cfg = config_lib.build(config_lib.upgrade(tree), "old.pt")
    assert cfg.train.validate_interval_updates == 5 and cfg.train.save_interval_updates == 7


def test_renamed_key_in_a_recipe_names_the_new_one(tmp_path):
    """ba.micro_batches is ba.sample_chunks now: a recipe or override with the old key is refused with one line
    naming the new key; a checkpoint's saved config is upgraded silently."""
    path = write(tmp_path, BASE.replace("  repeats: 4", "  repeats: 4\n  micro_batches: 2"))
    with pytest.raises(ConfigError, match=r":8: ba.micro_batches: renamed to ba.sample_chunks"):
        config_lib.load(path)
    with pytest.raises(ConfigError, match="ba.micro_batches: renamed to ba.sample_chunks"):
        config_lib.load(write(tmp_path, BASE), ["ba.micro_batches=2"])
    tree = {"task": "translation", "ba": {"repeats": 2, "micro_batches": 2}, "train": {"max_updates": 1}}
    assert config_lib.build(config_lib.upgrade(tree), "old.pt").ba.sample_chunks == 2
