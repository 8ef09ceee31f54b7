"""``key=value`` overrides mean what they say (paths with `` #``, ``:``, quotes, spaces), section values merge,
compare's own overrides read back exactly, and bad values at the edges of what torch takes (seed, learning rates,
YAML alias bombs, ``$SEQBA_DATA``) are one ``ConfigError`` naming the key, line or variable."""
import csv
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from runs import ROOT
from seqba import config as config_lib
from seqba import train as train_cli
from seqba.compare import cli
from seqba.compare.arms import Arm
from seqba.compare.study import make_study, plan_runs
from seqba.config import ConfigError, format_override, override_value
from seqba.data.paths import data_root
from seqba.distributed import worker_seed
from seqba.optim import build_optimizer, lr_multiplier
from test_image_task import write_fake_cifar10
from test_recipes import TINY

RECIPE = """task: image_classification
data:
  dataset: cifar10
  batch_size: 8
model:
  depth: 8
  width: 4
optim:
  optimizer: sgd
  lr: 0.1
  lr_scheduler: step
ba:
  repeats: 2
  layout: tiled
train:
  max_updates: 4
"""

#: Folder names a user may give: each must reach the run exactly.
AWKWARD = ["st #8", "a: b", "it's", 'say "hi"', "two  spaces", "#lead", "x:y", "no", "4", "[1]", "{a: 1}",
           "- dash", "&anchor", "*alias", "!tag", "--- doc", "%YAML", "trail ", " lead", "back\\slash", "ü nicode"]


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    return path


# -- values mean what they say --------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, value", [
    ("/tmp/st #8/x", "/tmp/st #8/x"),  # was "/tmp/st": the rest read as a YAML comment
    ("4 #x", "4 #x"), ("#8", "#8"),
    ("/tmp/a: b", "/tmp/a: b"), ("a:b", "a:b"), ("1:30", "1:30"),  # was {"/tmp/a": "b"}, 90
    ("/tmp/it's", "/tmp/it's"), ('/tmp/"q"', '/tmp/"q"'), ("/tmp/a  b", "/tmp/a  b"), (" x ", " x "),
    ("- a", "- a"), ("&a [1, *a]", "&a [1, *a]"), ("*a", "*a"), ("!!str x", "!!str x"), ("--- x", "--- x"),
    ("[1, 2", "[1, 2"), ("2024-01-01", "2024-01-01"), ("", ""),
    ("4", 4), ("-1.5", -1.5), ("1e-4", "1e-4"), ("true", True), ("no", False), ("null", None), ("~", None),
    ("[4, 8]", [4, 8]), ("{repeats: 2, layout: tiled}", {"repeats": 2, "layout": "tiled"}),
    ('"no"', "no"), ("'4'", "4"), ("'it''s'", "it's"), ('"a #b"', "a #b"),
])
def test_override_value(raw, value):
    assert override_value(raw) == value and type(override_value(raw)) is type(value)


@pytest.mark.parametrize("value", [*AWKWARD, "", "  ", "null", "true", "1e-4", "a\nb", "tab\tx", 4, -1.5, True,
                                   None, [1, "a b", "#c"], {"repeats": 2, "layout": "tiled"}])
def test_format_override_reads_back(value):
    text = format_override("k", value)
    path, back = config_lib.parse_override(text)
    assert path == ("k",) and back == value and type(back) is type(value), text


def test_format_override_refuses_what_cannot_read_back():
    with pytest.raises(ValueError, match="date"):
        format_override("k", __import__("datetime").date(2024, 1, 1))


@pytest.mark.parametrize("name", AWKWARD)
def test_output_dir_override_is_the_path(recipe, tmp_path, name):
    folder = str(tmp_path / name / "run")
    assert config_lib.load(recipe, [f"output_dir={folder}"]).output_dir == folder


def test_a_comment_in_a_number_is_an_error_not_dropped(recipe):
    with pytest.raises(ConfigError, match=r"command-line override ba.repeats: expected int, got '2 #x'"):
        config_lib.load(recipe, ["ba.repeats=2 #x"])


# -- section values merge --------------------------------------------------------------------------------------

def test_section_override_merges(recipe):
    cfg = config_lib.load(recipe, ["ba={repeats: 4}", "train={max_updates: 7}"])
    assert (cfg.ba.repeats, cfg.ba.layout, cfg.train.max_updates) == (4, "tiled", 7)  # layout was reset to adjacent
    cfg = config_lib.load(recipe, ["optim={lr: 0.5}", "data={batch_size: 4}"])
    assert (cfg.optim.lr, cfg.optim.lr_scheduler, cfg.data.batch_size, cfg.data.dataset) == (0.5, "step", 4, "cifar10")


def test_section_override_errors_name_the_override_key_not_the_section(recipe):
    with pytest.raises(ConfigError, match=r"^command-line override ba\.layot: unknown key 'layot'"):
        config_lib.load(recipe, ["ba={repeats: 2, layot: tiled}"])
    with pytest.raises(ConfigError, match=r"recipe\.yaml:14: ba\.layout"):  # a recipe key keeps its line
        config_lib.load(_write(recipe, "layout: tiled", "layout: diag"), ["ba={repeats: 2}"])


def _write(recipe, old, new):
    recipe.write_text(recipe.read_text().replace(old, new))
    return recipe


@pytest.mark.parametrize("argv, message", [
    (["train={resume: none}"], "error: override 'train={resume: none}': compare sets seed"),
    (["--arms", "ba,x", "--arm", "x:train={resume: none, max_updates: 3}"],
     "error: --arm x: override 'train={resume: none, max_updates: 3}': compare sets seed"),
    (["--arms", "ba,x", "--arm", "x:train=null"], "error: --arm x: override 'train=null': compare sets seed"),
])
def test_compare_refuses_reserved_keys_inside_sections(recipe, tmp_path, capsys, argv, message):
    assert cli.main([str(recipe), "--out", str(tmp_path / "study"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


# -- compare's own overrides read back -------------------------------------------------------------------------

def test_compare_runs_get_their_own_folders_whatever_the_out_path(recipe, tmp_path):
    for name in AWKWARD:
        study = make_study(tmp_path / name, recipe, [], [Arm("ba"), Arm("fixed_steps", ["ba.repeats=1"])], [1, 2], [])
        for run in plan_runs(study, ["ba", "fixed_steps"]):
            cfg = config_lib.load(run.train_args[0], run.train_args[1:])
            assert (cfg.output_dir, cfg.seed, cfg.train.resume) == (run.run_dir, run.seed, "auto"), name


def test_compare_out_with_hash_trains_each_arm_in_its_folder(tmp_path):
    """The reproduction of issue 19 item 5 (``--out '/tmp/st #8'``): both arms trained into one stray ``/tmp/st``
    folder and the second "resumed" the first's finished run (the table showed 0 updates)."""
    out = tmp_path / "st #8: 'q'"
    argv = [str(ROOT / "recipes" / "resnet44_cifar10_m40.yaml"), "--arms", "fixed_steps,ba", "--seeds", "1",
            "--out", str(out), *TINY["image_classification"], "train.max_updates=3",
            f"data.root={write_fake_cifar10(tmp_path / 'cifar')}"]
    assert cli.main(argv) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["arm"], r["updates"]) for r in rows] == [("fixed_steps", "3"), ("ba", "3")]
    for arm in ("fixed_steps", "ba"):
        assert (out / "runs" / arm / "seed_1" / "checkpoint_last.pt").is_file()
    assert not (tmp_path / "st").exists()


# -- ranges torch takes ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, key", [
    (["optim.lr=1e308"], "optim.lr"),
    (["optim.lr=1e38", "optim.optimizer=adam"], "optim.lr"),  # lr / (1 - beta1) in Adam's first step
    (["optim.lr_gamma=1e300", "optim.lr_steps=[4]"], "optim.lr_gamma"),
    (["optim.lr_gamma=1e30", "optim.lr_steps=[4, 8]"], "optim.lr_gamma"),  # gamma ** 2 overflows Python floats
    (["optim.lr_scheduler=inverse_sqrt", "optim.warmup_init_lr=1e300"], "optim.warmup_init_lr"),
    (["optim.eps=1e300"], "optim.eps"), (["optim.weight_decay=1e300"], "optim.weight_decay"),
    (["seed=99999999999999999999"], "seed"), (["seed=-1"], "seed"),
])
def test_out_of_range_is_a_config_error_naming_the_key(recipe, overrides, key):
    with pytest.raises(ConfigError, match=rf"^command-line override {key}: "):
        config_lib.load(recipe, overrides)


@pytest.mark.parametrize("overrides", [
    ["optim.optimizer=adam", "optim.lr_scheduler=constant", f"optim.lr={3.4e38 * 0.1 * 0.99}"],
    ["optim.optimizer=sgd", "optim.lr=1.0", "optim.lr_gamma=1e19", "optim.lr_steps=[1, 2]"],
    ["optim.optimizer=adam", "optim.lr=1e-3", "optim.warmup_updates=4", f"optim.warmup_init_lr={3.4e37 * 0.99}"],
])
def test_the_largest_accepted_schedule_steps_without_overflow(recipe, overrides):
    """At the bound, every scheduled step runs (the weights may become inf: NonFiniteError's job, not a crash)."""
    cfg = config_lib.load(recipe, overrides).optim
    param = torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer(cfg, [{"params": [param]}])
    for step in range(4):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_multiplier(cfg, step)
        param.grad = torch.ones(3)
        opt.step()  # raised "value cannot be converted to type float without overflow" beyond the bound


def test_the_largest_seed_seeds_torch_and_numpy(recipe):
    seed = config_lib.load(recipe, [f"seed={2**63 - 1}"]).seed
    torch.manual_seed(seed + 1000)  # + epoch, as the samplers do
    torch.Generator().manual_seed(worker_seed(seed, 7) + 1000)
    np.random.default_rng([seed, 1000])


# -- bounded loading ----------------------------------------------------------------------------------------------

BOMB = """\
a: &a {x0: lol, x1: lol, x2: lol, x3: lol, x4: lol, x5: lol, x6: lol, x7: lol, x8: lol}
b: &b {b0: *a, b1: *a, b2: *a, b3: *a, b4: *a, b5: *a, b6: *a, b7: *a, b8: *a}
c: &c {c0: *b, c1: *b, c2: *b, c3: *b, c4: *b, c5: *b, c6: *b, c7: *b, c8: *b}
d: &d {d0: *c, d1: *c, d2: *c, d3: *c, d4: *c, d5: *c, d6: *c, d7: *c, d8: *c}
e: &e {e0: *d, e1: *d, e2: *d, e3: *d, e4: *d, e5: *d, e6: *d, e7: *d, e8: *d}
f: &f {f0: *e, f1: *e, f2: *e, f3: *e, f4: *e, f5: *e, f6: *e, f7: *e, f8: *e}
g: &g {g0: *f, g1: *f, g2: *f, g3: *f, g4: *f, g5: *f, g6: *f, g7: *f, g8: *f}
h: &h {h0: *g, h1: *g, h2: *g, h3: *g, h4: *g, h5: *g, h6: *g, h7: *g, h8: *g}
i: &i {i0: *h, i1: *h, i2: *h, i3: *h, i4: *h, i5: *h, i6: *h, i7: *h, i8: *h}
"""  # nested mappings: 9 ** 8 key paths once expanded


def test_yaml_alias_bomb_is_refused_at_its_line(tmp_path):
    """Ran 120 s+ and 3.5 GB in ``_line_index``; a subprocess with a timeout, so a regression fails, not hangs."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    code = f"from seqba import config; config.load({str(bomb)!r}, ['optim.betas=[&x 0.9, *x]'])"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert f"ConfigError: {bomb}:2: YAML alias *a is not allowed in a recipe" in proc.stderr, proc.stderr[-2000:]


def test_recipe_alias_inside_a_section_is_refused(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.replace("ba:\n", "base: &base {repeats: 2}\nba:\n  <<: *base\n"))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:14: YAML alias \*base"):
        config_lib.load(path)


# -- $SEQBA_DATA -----------------------------------------------------------------------------------------------------

def test_seqba_data_naming_no_folder_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQBA_DATA", str(tmp_path / "nonexistent"))
    with pytest.raises(ConfigError, match=r"^SEQBA_DATA=.*nonexistent: no such folder"):
        data_root()
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("SEQBA_DATA", str(tmp_path / "file"))
    with pytest.raises(ConfigError, match="a file, not a folder"):
        data_root()
    monkeypatch.setenv("SEQBA_DATA", str(tmp_path))
    assert data_root() == tmp_path


def test_seqba_data_error_is_one_line_from_train(recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEQBA_DATA", str(tmp_path / "nonexistent"))
    assert train_cli.main([str(recipe), f"output_dir={tmp_path / 'run'}", "train.progress_bar=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: SEQBA_DATA=") and "nonexistent" in err[0], err


def test_recipe_lines_still_named(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.replace("  lr: 0.1", "  lr: 1e39"))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:10: optim.lr: must be at most"):
        config_lib.load(path)
