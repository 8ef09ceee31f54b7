"""``benchmarks/device_check.py --smoke``: every stage runs on the CPU at toy size and the JSON reports each one.

One subprocess of the whole script (about 1.5 minutes on 2 shared cores; its own budget is capped at 150 s and the
test gives it 240 s), writing into ``tmp_path``, never into ``benchmarks/results``.
"""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_check.py"
STAGES = ("cuda_tests", "train", "decode", "study")


def test_smoke_reports_every_stage(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--budget", "150", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "device_check.json").read_text())
    assert (tmp_path / "device_check.md").is_file()
    assert result["mode"].startswith("smoke") and result["seconds"] <= 150 + 30
    stages = result["stages"]
    assert set(STAGES) <= set(stages)
    for name in STAGES:  # figures, or an explicit reason (the study, last and optional, may run out of time)
        allowed = ("ok", "skipped", "timeout") if name == "study" else ("ok", "skipped")
        assert stages[name]["status"] in allowed, json.dumps(stages[name], indent=1)[-3000:]
        if stages[name]["status"] != "ok":
            assert stages[name]["reason"]
    assert stages["cuda_tests"]["status"] == "skipped"  # no GPU here: the CUDA tests skip
    train = stages["train"]
    assert train["peak"]["bf16"]["flops_per_s"] > 0
    for name in ("bf16_m1", "bf16_m4"):
        run = train["runs"][name]
        assert run["status"] == "ok", json.dumps(run, indent=1)[-3000:]
        assert run["tokens_per_s"] > 0 and run["peak_memory_mb"] > 0
        assert 0 < run["mfu_measured_peak"] and run["model_flops_per_s"] > 0
    assert train["runs"]["bf16_m4"]["tokens_per_step"] > train["runs"]["bf16_m1"]["tokens_per_step"]
    assert train["runs"]["fp16_m1"]["status"] == "skipped"  # fp16 needs CUDA
    decode = stages["decode"]
    assert decode["sentences"] == 8 and decode["sentences_per_s"] > 0 and decode["tokens_per_s"] > 0
    study = stages["study"]
    if study["status"] == "ok":
        assert {row["arm"] for row in study["rows"]} == {"fixed_steps", "ba_symkl"}


def test_smoke_refuses_the_committed_results():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(ROOT / "benchmarks" / "results")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "never writes over" in proc.stderr
