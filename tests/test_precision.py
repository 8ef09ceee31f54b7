"""train.mixed_precision=auto (seqba.precision): times fp32 and bf16 once per machine and model, caches the choice,
and trains in it; a multi-process launch without a cached choice is refused with one line."""
import json

import pytest

from seqba import config as config_lib
from seqba import precision

from runs import data_dir, recipe, run_module  # noqa: F401 (fixtures)


def test_auto_times_both_caches_and_trains_in_the_faster(recipe, tmp_path, monkeypatch):
    cache = tmp_path / "cache.json"
    monkeypatch.setenv("SEQBA_PRECISION_CACHE", str(cache))
    cfg = config_lib.load(recipe, ["train.mixed_precision=auto"])
    config = config_lib.to_dict(cfg)
    with pytest.raises(config_lib.ConfigError, match="run it once with one process"):
        precision.resolve_precision("auto", config, num_processes=2)
    choice, how = precision.resolve_precision("auto", config)
    entry = json.loads(cache.read_text())[precision.machine_key(config)]
    assert choice == entry["choice"] in ("no", "bf16") and "timed now" in how
    assert len(entry["rates"]["no"]) == len(entry["rates"]["bf16"]) == 2 and all(r > 0 for r in entry["rates"]["no"])
    assert entry["choice"] == ("bf16" if entry["bf16_over_fp32"] > 1 else "no")
    # the second time (any process count) reads the cache; another model shape is another key
    again, how_again = precision.resolve_precision("auto", config, num_processes=2)
    assert again == choice and "timed before" in how_again
    other = config_lib.to_dict(config_lib.load(recipe, ["train.mixed_precision=auto", "model.d_model=48"]))
    assert precision.machine_key(other) != precision.machine_key(config)
    assert precision.resolve_precision("bf16", config) == ("bf16", "as the recipe says")
    # a run with auto uses the cached choice (a subprocess: Accelerate's precision is fixed once per process)
    proc = run_module("seqba.train", recipe, "train.mixed_precision=auto", "train.max_updates=2",
                      "train.validate_interval_updates=0", f"output_dir={tmp_path / 'run'}",
                      env={"SEQBA_PRECISION_CACHE": str(cache)})
    assert f"mixed precision: {choice} (auto, timed before" in proc.stderr
