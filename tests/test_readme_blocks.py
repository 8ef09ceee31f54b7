"""Every code block of README.md, as a reader pastes it.

* Every ```python block runs exactly as written (imports included) in a fresh namespace. The time-major block is
  meant to be pasted into pytorch/examples' ``word_language_model/main.py``: it runs in a namespace holding that
  script's ``batchify`` / ``get_batch`` / ``args.bptt`` and a module ``model`` holding its ``RNNModel`` (minimal
  faithful copies below), and is then checked to give every copy column its own dropout mask.
* Every ```bash block parses (``bash -n``); every ``python -m seqba.X [sub]`` named anywhere in the README answers
  ``--help`` and knows every ``--option`` the README's commands give it; every recipe the README names exists and
  every ``key=value`` override in a bash block loads with its recipe (``seqba.config.load``); every
  ``benchmarks/*.py`` named exists. No training runs.
"""
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
WORD_LM = "from model import RNNModel"


def blocks(language: str) -> list[str]:
    """The README's ```language blocks, dedented, in order."""
    return [textwrap.dedent(b) for b in re.findall(rf"```{language}\n(.*?)```", README, re.S)]


# --- pytorch/examples word_language_model, minimal faithful copies -------------------------------------------------
# From https://github.com/pytorch/examples/blob/main/word_language_model/model.py (RNNModel, BSD-3-Clause) and
# main.py (batchify, get_batch); only the RNN_TANH/RNN_RELU branch, comments and the CUDA transfer are left out.
class RNNModel(nn.Module):
    """Container module with an encoder, a recurrent module, and a decoder (time-major: input (T, B))."""

    def __init__(self, rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.5, tie_weights=False):
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = getattr(nn, rnn_type)(ninp, nhid, nlayers, dropout=dropout)  # 'LSTM' or 'GRU'
        self.decoder = nn.Linear(nhid, ntoken)
        if tie_weights:
            self.decoder.weight = self.encoder.weight
        self.init_weights()
        self.rnn_type, self.nhid, self.nlayers = rnn_type, nhid, nlayers

    def init_weights(self):
        initrange = 0.1
        nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -initrange, initrange)

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output)
        decoded = decoded.view(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        if self.rnn_type == 'LSTM':
            return (weight.new_zeros(self.nlayers, bsz, self.nhid), weight.new_zeros(self.nlayers, bsz, self.nhid))
        return weight.new_zeros(self.nlayers, bsz, self.nhid)


def batchify(data, bsz):
    nbatch = data.size(0) // bsz
    data = data.narrow(0, 0, nbatch * bsz)
    data = data.view(bsz, -1).t().contiguous()
    return data


args = types.SimpleNamespace(bptt=35)  # main.py's default --bptt


def get_batch(source, i):
    seq_len = min(args.bptt, len(source) - 1 - i)
    data = source[i:i + seq_len]
    target = source[i + 1:i + 1 + seq_len].view(-1)
    return data, target


def word_language_model_namespace(monkeypatch) -> dict:
    """main.py's globals as the block sees them, with ``import model`` resolving to model.py's RNNModel."""
    module = types.ModuleType("model")
    module.RNNModel = RNNModel
    monkeypatch.setitem(sys.modules, "model", module)
    return {"__name__": "__main__", "batchify": batchify, "get_batch": get_batch, "args": args}


# --- python blocks ---------------------------------------------------------------------------------------------------
def run_block(block: str, monkeypatch, tmp_path) -> dict:
    monkeypatch.chdir(tmp_path)  # blocks that write (runs/gpt2_ba) write here
    namespace = word_language_model_namespace(monkeypatch) if WORD_LM in block else {"__name__": "__main__"}
    torch.manual_seed(0)
    exec(compile(block, "README.md", "exec"), namespace)
    return namespace


def test_readme_has_the_python_blocks():
    assert len(blocks("python")) >= 5
    assert sum(WORD_LM in b for b in blocks("python")) == 1


# a block containing one of these strings gets its result checked below (tests/test_readme_integrations.py)
RESULT_CHECKS = ("TokenBudgetBatchSampler(num_tokens", "FixedSizeBatchSampler", "prepare_data_loader", "BATrainer",
                 WORD_LM)


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_block_runs_as_pasted(index, monkeypatch, tmp_path):
    block = blocks("python")[index]
    if "transformers" in block:
        pytest.importorskip("transformers")
    if "accelerate" in block:
        pytest.importorskip("accelerate")
    ns = run_block(block, monkeypatch, tmp_path)
    if "TokenBudgetBatchSampler(num_tokens" in block:  # BA in your own training loop
        assert ns["batch"].shape[0] % 4 == 0 and torch.equal(ns["batch"][0], ns["batch"][1])  # adjacent copies
        assert max(len(b) * max(ns["num_tokens"][i] for i in b) for b in ns["batches"]) <= 4096
    if "FixedSizeBatchSampler" in block:  # timm / DeiT-style
        assert ns["images"].shape == (32, 1, 2, 2) and len(ns["loader"]) == 12 and len(ns["deit"]) == 3
    if "prepare_data_loader" in block:
        assert [b.tolist() for b in ns["loader"]] == [[0, 1], [2], [3]]
    if "BATrainer" in block:
        assert ns["trainer"].state.global_step == 2 and ns["metrics"]["eval_loss"] > 0


def test_word_language_model_block_gives_each_copy_its_own_dropout(monkeypatch, tmp_path):
    (block,) = [b for b in blocks("python") if WORD_LM in b]
    ns = run_block(block, monkeypatch, tmp_path)
    model, train_data, b, m = ns["model"], ns["train_data"], ns["batch_size"], ns["M"]
    assert ns["dropout"] > 0 and model.drop.p == ns["dropout"] and model.rnn.dropout == ns["dropout"]
    assert train_data.shape[1] == b * m and ns["hidden"][0].shape == (ns["nlayers"], b * m, ns["nhid"])
    # the per-batch route gives the window of the column route, in the same (tiled) column order
    assert torch.equal(ns["data"], train_data[:args.bptt]) and torch.equal(ns["targets"],
                                                                            train_data[1:args.bptt + 1].reshape(-1))
    window = train_data[:args.bptt]

    def copies(train: bool) -> torch.Tensor:
        model.train(train)
        torch.manual_seed(1)
        out, _ = model(window, model.init_hidden(b * m))
        return out.view(args.bptt, m, b, -1)  # column c * B + s is copy c of stream s

    train_out, eval_out = copies(True), copies(False)
    assert torch.allclose(eval_out[:, 0], eval_out[:, 1]), "without dropout the copies are identical"
    for c in range(1, m):
        assert not torch.allclose(train_out[:, 0], train_out[:, c]), "each copy must get its own dropout mask"


# --- bash blocks and commands ----------------------------------------------------------------------------------------
def seqba_commands() -> dict[tuple[str, ...], set[str]]:
    """{(module, subcommand?): options the README gives it}, from every ``python -m seqba.X`` in the README."""
    commands: dict[tuple[str, ...], set[str]] = {}
    for text in [README.replace("\\\n", " ")]:
        for match in re.finditer(r"python -m (seqba(?:\.\w+)*)((?:[ \t]+[^\s`|&;)]+)*)", text):
            words = match.group(2).split()
            key = (match.group(1),) + ((words[0],) if match.group(1) == "seqba.analyze" and words
                                       and not words[0].startswith("-") else ())
            options = {w.split("=")[0] for w in words if re.fullmatch(r"--[a-z][a-z0-9-]*(=.*)?", w)}
            commands.setdefault(key, set()).update(options)
    return commands


def test_every_seqba_command_answers_help_and_knows_its_options():
    commands = seqba_commands()
    assert {("seqba.train",), ("seqba.eval",), ("seqba.compare",), ("seqba.analyze", "grad-correlation")} <= set(
        commands)
    for key, options in sorted(commands.items()):
        if key[0] == "seqba":
            continue
        proc = subprocess.run([sys.executable, "-m", *key[:1], *key[1:], "--help"], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, f"python -m {' '.join(key)} --help: {proc.stderr[-2000:]}"
        unknown = sorted(o for o in options if o not in proc.stdout)
        assert not unknown, f"python -m {' '.join(key)} has no option {unknown}"


def test_bash_blocks_parse():
    assert len(blocks("bash")) >= 5
    for block in blocks("bash"):
        proc = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True)
        assert proc.returncode == 0, f"{proc.stderr}\n{block}"


def recipe_names() -> set[str]:
    """Every recipe the README names: ``recipes/X.yaml`` and the recipe table's ``X.yaml`` / ``_suffix.yaml``."""
    names = set(re.findall(r"recipes/([\w.-]+\.yaml)", README))
    for line in README.splitlines():
        if not line.startswith("| `"):
            continue
        previous = None
        for name in re.findall(r"`([\w*]*\.yaml)`", line.split("|")[1]):
            if name.startswith("_") and previous:  # `awd_lstm_ptb_baseline.yaml` / `_fixed_samples.yaml`
                name = previous.rsplit("_", 1)[0] + name
            names.add(name)
            previous = name
    return names


def test_every_recipe_named_exists():
    names = recipe_names()
    assert "transformer_wmt16_fixed_samples.yaml" in names and "awd_lstm_ptb_small_m1.yaml" in names
    for name in names:
        assert list((ROOT / "recipes").glob(name)), f"README names recipes/{name}, which does not exist"


def test_every_override_in_a_bash_block_loads_with_its_recipe():
    from seqba.config import load

    checked = 0
    for block in blocks("bash"):
        for command in re.split(r"&&|;|\n(?!\s)", block.replace("\\\n", " ")):
            recipe = re.search(r"(recipes/[\w.-]+\.yaml)", command)
            if not recipe or "python -m seqba." not in command:
                continue
            overrides = [w.replace("$M", "2") for w in command.split()
                         if re.fullmatch(r"[a-z_]+(\.[a-z_]+)+=\S+", w)]
            load(ROOT / recipe.group(1), overrides)
            checked += 1
    assert checked >= 4


def test_every_benchmark_named_exists():
    named = set(re.findall(r"benchmarks/([\w]+\.py)", README)) | set(re.findall(r"`(bench_\w+\.py)`", README))
    assert "bench_batching.py" in named
    for name in named:
        assert (ROOT / "benchmarks" / name).is_file(), f"README names benchmarks/{name}, which does not exist"


# --- headline ratios -------------------------------------------------------------------------------------------------
def ratios_module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import ratios
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return ratios


def test_summary_is_the_median_of_rounds_with_the_range_never_the_best():
    ratios = ratios_module()
    summary = ratios.summarize(ratios.per_round_ratios([2580, 3240, 3380], [1000, 1000, 1000]))
    assert (summary["median"], summary["min"], summary["max"]) == (3.24, 2.58, 3.38)
    assert ratios.fmt(summary) == "3.24 (2.58–3.38)" and ratios.fmt(ratios.summarize([1.5, 1.5])) == "1.50"
    with pytest.raises(ValueError, match="not the same rounds"):
        ratios.per_round_ratios([1.0, 2.0], [1.0])


def test_readme_quotes_every_headline_ratio_as_median_and_range_of_rounds():
    ratios = ratios_module()
    text = re.sub(r"\s+", " ", README.replace("**", ""))
    missing = {label: ratios.fmt(derive()) for label, derive in ratios.HEADLINES.items()
               if ratios.fmt(derive()) not in text}
    assert not missing, f"README does not quote these as `python benchmarks/ratios.py` derives them: {missing}"
    for stale in ("3.38** (", "1.90 (", "1.96× the tokens/s"):  # best rounds and ratios of medians, quoted before
        assert stale not in README
