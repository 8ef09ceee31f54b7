"""Language-modeling task: every LM recipe end to end through the CLI on PTB (tiny model), bit-exact resume after a
SIGKILL, the NT-ASGD switch and its equivalence to torch ASGD, micro-batch gradients."""
import copy
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from seqba import config as config_lib
from seqba.ba import BatchAugmentation
from seqba import eval as eval_cli
from seqba import train as train_cli
from seqba.checkpoint import load_model_file
from seqba.tasks.language_modeling import LanguageModelingTask, should_average
from seqba.tasks.lm_significance import BLOCK_TOKENS, block_references

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").rglob("awd_lstm_ptb*.yaml"))
SMALL = ROOT / "recipes" / "awd_lstm_ptb_small_m10.yaml"
# A tiny AWD-LSTM: about a second per recipe on the PTB slice below (~4.7 s on full PTB), one CPU thread.
TINY = ["model.emb_size=8", "model.hidden_size=16", "model.num_layers=2", "data.batch_size=4", "data.bptt=20",
        "data.test_batch_size=10", "train.max_updates=3", "train.log_interval=1", "train.validate_interval_updates=0",
        "train.save_interval_updates=0", "train.progress_bar=false"]
NO_DROPOUT = ["model.dropout=0", "model.dropouth=0", "model.dropouti=0", "model.dropoute=0", "model.wdrop=0"]


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: fast on a shared 2-core machine, and the same arithmetic in the CLI subprocesses."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_SMALL_PTB: list[Path] = []


@pytest.fixture
def ptb(shared_data, tmp_path_factory):
    """``data.root=`` a slice of real PTB: 3000 train lines, and the first 300 valid/test lines in its vocabulary."""
    if not _SMALL_PTB:
        src, dst = shared_data / "ptb", tmp_path_factory.mktemp("ptb")
        train = (src / "ptb.train.txt").read_text().splitlines(keepends=True)[:3000]
        vocab = {w for line in train for w in line.split()}
        (dst / "ptb.train.txt").write_text("".join(train))
        for split in ("valid", "test"):
            lines = (src / f"ptb.{split}.txt").read_text().splitlines(keepends=True)[:300]
            (dst / f"ptb.{split}.txt").write_text("".join(x for x in lines if set(x.split()) <= vocab))
        _SMALL_PTB.append(dst)
    return f"data.root={_SMALL_PTB[0]}"


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def train_losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run) if "loss" in r}


def make_task(recipe: Path, overrides: list[str]) -> LanguageModelingTask:
    cfg = config_lib.load(recipe, overrides)
    torch.manual_seed(cfg.seed)
    return LanguageModelingTask(cfg, Accelerator(cpu=True))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_trains_and_evaluates(recipe, ptb, tmp_path, capsys):
    assert len(RECIPES) >= 5
    run = tmp_path / "run"
    extra = ["ba.sample_chunks=2"] if recipe.stem == "awd_lstm_ptb_small_m10" else []
    assert train_cli.main([str(recipe), ptb, f"output_dir={run}", *TINY, *extra]) == 0
    losses = train_losses(run)
    assert sorted(losses) == [1, 2, 3] and all(math.isfinite(v) for v in losses.values())
    capsys.readouterr()
    blocks = tmp_path / "blocks.txt"
    assert eval_cli.main(["--checkpoint", str(run / "checkpoint_best.pt"), "--split", "test", "--device", "cpu",
                          "--output", str(blocks)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert math.isfinite(result["ppl"]) and 1 < result["ppl"] < 10000
    assert result["bpw"] == pytest.approx(math.log2(result["ppl"]))
    cfg, _, _ = load_model_file(run / "checkpoint_best.pt")  # one summed NLL per block of the test stream
    tokens = [int(n) for n in block_references(cfg, "test")]
    nll = [float(line) for line in blocks.read_text().splitlines()]
    assert len(nll) == len(tokens) and all(n <= BLOCK_TOKENS for n in tokens)
    length = sum(tokens)  # the AWD-LSTM scores all but the first of each stream; the Transformers all but one
    bsz = cfg.data.test_batch_size if cfg.model.arch == "awd_lstm" else 1
    assert math.exp(sum(nll) / ((length // bsz - 1) * bsz)) == pytest.approx(result["ppl"], rel=1e-6)
    src = tmp_path / "src.txt"
    src.write_text("the cat\n")  # --src/--ref are translation options: refused, not silently ignored (issue 8)
    assert eval_cli.main(["--checkpoint", str(run / "checkpoint_best.pt"), "--src", str(src)]) == 2
    assert capsys.readouterr().err.startswith("error: --src/--ref apply to translation")


def check_resume_after_kill(args: list[str], tmp_path: Path) -> None:
    """``args`` (6 updates, a checkpoint at 3) killed after its checkpoint at update 3 and resumed give the losses
    and final validation of an uninterrupted run, bit for bit."""
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert train_cli.main([*args, f"output_dir={ref}"]) == 0

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "killrun.py"), "--after-save", "3", *args,
                           f"output_dir={killed}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert sorted(train_losses(killed)) == [1, 2, 3]

    assert train_cli.main([*args, f"output_dir={killed}", "train.resume=auto"]) == 0
    resumed, expected = train_losses(killed), train_losses(ref)
    assert {s: resumed[s] for s in (4, 5, 6)} == {s: expected[s] for s in (4, 5, 6)}
    assert read_metrics(killed)[-1]["valid_ppl"] == read_metrics(ref)[-1]["valid_ppl"]


def test_resume_after_kill_is_bit_exact(ptb, tmp_path):
    check_resume_after_kill([str(SMALL), ptb, *TINY, "train.max_updates=6", "train.save_interval_updates=3"], tmp_path)


def test_should_average_patience():
    assert not should_average([5.0, 4.0, 3.0], nonmono=2)
    assert should_average([5.0, 3.0, 4.0, 3.5], nonmono=2)  # best 3.0 is older than the last 2
    assert not should_average([5.0, 3.0, 4.0, 2.9], nonmono=2)  # the last improved
    assert not should_average([5.0, 6.0], nonmono=2)  # not enough history
    assert not should_average([5.0, 6.0, 7.0, 8.0], nonmono=0)  # disabled


def test_asgd_switch_in_a_run(ptb, tmp_path):
    """lr 0: validation never improves, so nonmono=1 switches at the 2nd evaluation; the mean starts at step 4."""
    run = tmp_path / "run"
    assert train_cli.main([str(SMALL), ptb, f"output_dir={run}", *TINY, "train.max_updates=4",
                           "train.validate_interval_updates=1", "criterion.nonmono=1", "optim.lr=0"]) == 0
    ckpt = next((run / "checkpoints").glob("step_*"))
    state = torch.load(ckpt / "trainer_state_0.pt", weights_only=True)["task"]
    assert int(state["averaged"]["n_averaged"]) == 1 and state["skip_steps"] == 0
    assert len(state["history"]) == 2 and len(state["hidden"]) == 2


def test_averaging_matches_torch_asgd(ptb):
    """After the switch, eval_model is the running mean of the SGD iterates: torch.optim.ASGD(t0=0, lambd=0)'s ax."""
    task = make_task(SMALL, [ptb, *TINY, *NO_DROPOUT, "criterion.nonmono=1"])
    model = task.build_model()
    twin = copy.deepcopy(model)
    sgd = torch.optim.SGD(model.parameters(), lr=0.5, weight_decay=1e-3)
    asgd = torch.optim.ASGD(twin.parameters(), lr=0.5, lambd=0.0, t0=0, weight_decay=1e-3)
    assert task.eval_model(model) is model
    task.after_validate({"loss": 5.0})
    task.after_validate({"loss": 5.0})  # not improved for 1 evaluation: switch
    assert task.eval_model(model) is model  # the average holds no iterate yet
    for step, batch in zip(range(5), task.epoch_iterator(0)):
        for net, opt in ((model, sgd), (twin, asgd)):
            hidden = net.init_hidden(batch.x.size(1))
            logits = net(batch.x, hidden)[0]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.y.flatten()).backward()
            opt.step()
        task.after_step(model)
        averaged = dict(task.eval_model(model).named_parameters())
        for name, p in twin.named_parameters():
            torch.testing.assert_close(averaged[name], asgd.state[p]["ax"], rtol=1e-5, atol=1e-6)
    assert int(task.averaged.n_averaged) == 4
    assert not torch.equal(averaged["encoder.weight"], model.encoder.weight)

    restored = make_task(SMALL, [ptb, *TINY, *NO_DROPOUT, "criterion.nonmono=1"])
    restored.build_model()
    buffer = io.BytesIO()
    torch.save(task.state_dict(), buffer)
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for name, p in restored.eval_model(model).named_parameters():
        assert torch.equal(p, averaged[name])


@pytest.mark.parametrize("chunks", [2, 4])
def test_sample_chunks_give_whole_batch_gradients(ptb, chunks):
    task = make_task(SMALL, [ptb, *TINY, *NO_DROPOUT, "ba.repeats=4", f"ba.sample_chunks={chunks}"])
    model = task.build_model()
    ba = BatchAugmentation(task.cfg.ba, task, "words")  # the trainer's: copies as columns, chunks of whole copies
    batch = ba.expand(next(iter(task.epoch_iterator(0))))
    task.hidden = [(torch.randn_like(h), torch.randn_like(c)) for h, c in task.hidden]  # mid-epoch state
    start = [(h.clone(), c.clone()) for h, c in task.hidden]
    size = task.sample_size(batch)

    def grads_and_hidden(parts):
        task.hidden = [(h.clone(), c.clone()) for h, c in start]
        model.zero_grad()
        total = 0.0
        for part in parts:
            loss, logs = task.loss(model, part)
            (loss / size).backward()
            total += float(logs["loss_sum"])
        return {n: p.grad.clone() for n, p in model.named_parameters()}, task.hidden, total

    whole, hidden_whole, loss_whole = grads_and_hidden([batch])
    split, hidden_split, loss_split = grads_and_hidden(ba.split(batch))
    assert loss_split == pytest.approx(loss_whole, rel=1e-5)
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=1e-7)
    for (h1, c1), (h2, c2) in zip(hidden_whole, hidden_split):
        torch.testing.assert_close(h2, h1)
        torch.testing.assert_close(c2, c1)


def test_sample_chunks_must_be_whole_copies(ptb):
    with pytest.raises(config_lib.ConfigError, match="must divide ba.repeats"):
        make_task(SMALL, [ptb, *TINY, "ba.sample_chunks=3"])


def test_resume_at_an_epoch_end_with_update_freq_is_bit_exact(ptb, tmp_path):
    """update_freq that does not divide the epoch's windows: the epoch ends with a short update and its checkpoint
    falls between updates, so a kill right after it resumes to the same losses (issue 8, defect 1)."""
    from seqba.data.lm import load_corpus

    batch_size, bptt = 100, 20
    words = len(load_corpus(ptb.split("=", 1)[1]).train)
    windows = -(-(words // batch_size - 1) // bptt)
    update_freq = next(k for k in (3, 4, 5, 7) if windows % k)
    per_epoch = -(-windows // update_freq)
    args = [str(SMALL), ptb, *TINY, f"data.batch_size={batch_size}", f"data.bptt={bptt}", "data.variable_bptt=false",
            "ba.repeats=2", f"train.update_freq={update_freq}", f"train.max_updates={per_epoch + 2}"]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert train_cli.main([*args, f"output_dir={ref}"]) == 0
    assert [r["step"] for r in read_metrics(ref) if "valid_loss" in r] == [per_epoch, per_epoch + 2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "killrun.py"), "--after-save", str(per_epoch), *args,
                           f"output_dir={killed}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert train_cli.main([*args, f"output_dir={killed}"]) == 0
    resumed, expected = train_losses(killed), train_losses(ref)
    assert resumed.keys() == expected.keys() == set(range(1, per_epoch + 3))
    assert {s: resumed[s] for s in (per_epoch + 1, per_epoch + 2)} == {s: expected[s]
                                                                       for s in (per_epoch + 1, per_epoch + 2)}


def test_max_train_tokens_trains_on_a_prefix_with_the_whole_vocabulary(ptb):
    """``data.max_train_tokens``: the streams are cut from the first N train tokens; the dictionary (and so valid
    and test) is that of the whole split, and too few tokens for the streams is a config error."""
    whole = make_task(SMALL, [ptb, *TINY])
    part = make_task(SMALL, [ptb, *TINY, "data.max_train_tokens=2000"])
    assert part.vocab_size == whole.vocab_size
    assert part.train_data.shape == (2000 // 4, 4)  # (L // B, B): the streams; BA makes the copies per window
    assert part.num_columns == 4 * 10  # B * M columns of hidden state, copies tiled
    expected = whole.corpus.train[:2000].view(4, 500).t()  # batchify of the prefix
    torch.testing.assert_close(part.train_data, expected)
    part.build_model()
    window = BatchAugmentation(part.cfg.ba, part, "words").expand(next(iter(part.epoch_iterator(0))))
    torch.testing.assert_close(window.x[:, 4:8], window.x[:, :4])  # copy 1 = the same streams
    torch.testing.assert_close(window.x[:, :4], expected[:window.x.size(0)])
    assert part.num_batches(0) < whole.num_batches(0)
    for tokens in (3, 7):  # 4 streams need 2 tokens each
        with pytest.raises(config_lib.ConfigError, match="cannot fill 4 streams .* needs at least 8"):
            make_task(SMALL, [ptb, *TINY, f"data.max_train_tokens={tokens}"])
    assert make_task(SMALL, [ptb, *TINY, "data.max_train_tokens=8"]).train_data.shape == (2, 4)
    with pytest.raises(config_lib.ConfigError, match="max_train_tokens"):
        config_lib.load(SMALL, [ptb, "data.max_train_tokens=0"])
