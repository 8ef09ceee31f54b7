"""Transformer language models in the language-modelling task (issue 22): ``model.arch: transformer`` and ``hf``
train and evaluate through the CLI on a generated plain-text corpus (``data.root`` with {train,valid,test}.txt),
resume exactly after a kill, make BA copies that differ by their masks only, share the native per-token loss, and
fork (``ba.fork_layer``) as BA does without dropout; the AWD-LSTM forks too."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from seqba import analyze as analyze_cli
from seqba import config as config_lib
from seqba import eval as eval_cli
from seqba import train as train_cli
from seqba.ba import BatchAugmentation
from seqba.data.lm import load_corpus
from seqba.tasks.language_modeling import lm_task
from seqba.tasks.lm_transformer import split_nll

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"transformer": ROOT / "recipes" / "transformer_lm_ptb_m4.yaml",
           "hf": ROOT / "recipes" / "gpt2_hf_ptb_m4.yaml", "awd_lstm": ROOT / "recipes" / "awd_lstm_ptb_small_m10.yaml"}
WINDOWS = ["data.batch_size=4", "data.bptt=12", "data.eval_stride=6", "data.eval_batch_size=16",
           "train.max_updates=4", "train.log_interval=1", "train.validate_interval_updates=0",
           "train.save_interval_updates=0", "train.progress_bar=false", "optim.warmup_updates=2"]
SIZES = {"transformer": ["model.d_model=16", "model.num_layers=2", "model.num_heads=2", "model.ffn_dim=32",
                         "model.max_positions=16"],
         "hf": [], "awd_lstm": ["model.emb_size=8", "model.hidden_size=16", "model.num_layers=2", "data.bptt=12",
                                "data.batch_size=4", "train.max_updates=4", "train.log_interval=1",
                                "train.validate_interval_updates=0", "train.save_interval_updates=0",
                                "train.progress_bar=false"]}
NO_DROPOUT = {"transformer": ["model.dropout=0"],
              "awd_lstm": ["model.dropout=0", "model.dropouth=0", "model.dropouti=0", "model.dropoute=0",
                           "model.wdrop=0"]}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A plain-text corpus (train/valid/test.txt, not PTB's names): sentences of a 30-word Markov chain."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    nxt = rng.integers(0, 30, size=(30, 3))  # each word is followed by one of 3 others

    def lines(n):
        out = []
        for _ in range(n):
            w = int(rng.integers(30))
            sentence = [words[w]]
            for _ in range(int(rng.integers(4, 10))):
                w = int(nxt[w, rng.integers(3)])
                sentence.append(words[w])
            out.append(" ".join(sentence) + "\n")
        return "".join(out)

    for split, n in (("train", 400), ("valid", 30), ("test", 30)):
        (root / f"{split}.txt").write_text(lines(n))
    return root


@pytest.fixture(scope="module")
def hf_config(corpus, tmp_path_factory) -> Path:
    """A tiny GPT-2 config whose vocabulary is the corpus dictionary's, with the native model's sizes."""
    pytest.importorskip("transformers")
    path = tmp_path_factory.mktemp("hf") / "config.json"
    vocab = len(load_corpus(corpus).dictionary)
    path.write_text(json.dumps(dict(model_type="gpt2", vocab_size=vocab, n_positions=16, n_embd=16, n_layer=2,
                                    n_head=2, n_inner=32, activation_function="gelu", resid_pdrop=0.1,
                                    embd_pdrop=0.1, attn_pdrop=0.0, layer_norm_epsilon=1e-5)))
    return path


def args_for(arch: str, corpus: Path, hf_config: Path | None = None) -> list[str]:
    extra = [f"model.hf_config={hf_config}"] if arch == "hf" else []
    windows = WINDOWS if arch != "awd_lstm" else []
    return [str(RECIPES[arch]), f"data.root={corpus}", *windows, *SIZES[arch], *extra]


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(run) if "loss" in r}


def task_for(arch: str, corpus: Path, hf_config: Path | None, overrides=()):
    cfg = config_lib.load(*(lambda a: (a[0], a[1:]))(args_for(arch, corpus, hf_config) + list(overrides)))
    torch.manual_seed(cfg.seed)
    task = lm_task(cfg, Accelerator(cpu=True))
    return task, task.build_model()


@pytest.mark.parametrize("arch", ["transformer", "hf"])
def test_trains_and_evaluates_through_the_cli(arch, corpus, hf_config, tmp_path, capsys):
    run = tmp_path / "run"
    extra = ["train.grad_stats_interval=2"] if arch == "transformer" else []
    assert train_cli.main([*args_for(arch, corpus, hf_config), f"output_dir={run}", *extra]) == 0
    train = [r for r in records(run) if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4] and all(math.isfinite(r["loss"]) for r in train)
    assert all(r["words_per_step"] == 4 * r["distinct_words_per_step"] == 4 * 4 * 12 for r in train)
    assert all(r["model_flops_per_step"] > 0 for r in train)  # both archs count their FLOPs
    if arch == "transformer":  # gradient statistics across the copies (row_losses)
        assert any(math.isfinite(r.get("grad_cos_copies", math.nan)) for r in records(run))
    capsys.readouterr()
    assert eval_cli.main(["--checkpoint", str(run / "checkpoint_best.pt"), "--split", "test", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 1 < result["ppl"] < 100 and result["bpw"] == pytest.approx(math.log2(result["ppl"]))
    assert (result["eval_context"], result["eval_stride"]) == (12, 6)
    if arch == "transformer":
        out = tmp_path / "grads.json"
        assert analyze_cli.main(["grad-correlation", "--checkpoint", str(run / "checkpoint_best.pt"), "--samples",
                                 "3", "--copies", "2", "--device", "cpu", "--out", str(out)]) == 0
        copies = json.loads(out.read_text())["relations"]["copies"]
        assert copies["count"] == 3 and copies["median"] < 0.9999  # dropout: copies differ


@pytest.mark.parametrize("arch", ["transformer", "hf"])
def test_resume_after_kill_is_exact(arch, corpus, hf_config, tmp_path):
    from test_lm_task import check_resume_after_kill

    check_resume_after_kill([*args_for(arch, corpus, hf_config), "train.max_updates=6",
                             "train.save_interval_updates=3"], tmp_path)


def test_copies_differ_by_their_masks_and_equal_m1_in_eval(corpus, hf_config):
    task, model = task_for("transformer", corpus, None)
    window = next(iter(task.epoch_iterator(0)))
    expanded = BatchAugmentation(task.cfg.ba, task, "words").expand(window)  # (T, 4 B): copies tiled
    assert expanded.x.shape == (12, 16) and torch.equal(expanded.x[:, 4:8], window.x)
    logits, targets = task.forward(model.train(), expanded)  # (4 B, T, V)
    assert torch.equal(targets[4:8], window.y.t())
    assert not torch.allclose(logits[:4], logits[4:8])  # own dropout masks
    logits, _ = task.forward(model.eval(), expanded)
    alone, _ = task.forward(model, window)  # the B streams, M = 1
    for copy in range(4):
        torch.testing.assert_close(logits[4 * copy:4 * copy + 4], alone)


def test_hf_loss_is_the_native_per_token_loss(corpus, hf_config):
    """The same weights in GPT-2's layout: equal window losses and sliding-window NLL (a hand computation of one)."""
    from test_hf_causal_lm import _gpt2_state_dict

    native_task, native = task_for("transformer", corpus, None)
    hf_task, hf = task_for("hf", corpus, hf_config)
    hf.model.load_state_dict(_gpt2_state_dict(native), strict=False)
    native.eval(), hf.eval()
    window = next(iter(native_task.epoch_iterator(0)))
    with torch.no_grad():
        loss_native, _ = native_task.loss(native, window)
        loss_hf, _ = hf_task.loss(hf, window)
        logits = native(window.x.t())  # (B, T, V): the definition, by hand
        by_hand = -torch.log_softmax(logits, -1).gather(-1, window.y.t()[..., None]).sum()
    torch.testing.assert_close(loss_hf, loss_native, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(loss_native, by_hand, rtol=1e-5, atol=1e-4)
    nll_native, n = split_nll(native, native_task.corpus.valid, native_task.cfg)
    nll_hf, n_hf = split_nll(hf, hf_task.corpus.valid, hf_task.cfg)
    assert n == n_hf == native_task.corpus.valid.numel() - 1 and nll_hf == pytest.approx(nll_native, rel=1e-5)


@pytest.mark.parametrize("arch, fork", [("transformer", 1), ("awd_lstm", 1), ("awd_lstm", 2)])
def test_fork_without_dropout_is_ba(arch, fork, corpus, tmp_path):
    """Dropout 0: copies made at layer k equal copies made at the input (losses and weights; SGD keeps float-level
    differences float-level); a forked step counts M·B rows and, for the Transformer, fewer model FLOPs."""
    sgd = ["optim.optimizer=sgd", "optim.lr=0.5", "optim.lr_scheduler=constant", "optim.clip_norm=0"]
    runs = {}
    for k in (0, fork):
        runs[k] = tmp_path / str(k)
        assert train_cli.main([*args_for(arch, corpus), *NO_DROPOUT[arch], *sgd, "ba.repeats=3",
                               f"ba.fork_layer={k}", f"output_dir={runs[k]}"]) == 0
    ba, forked = losses(runs[0]), losses(runs[fork])
    assert ba.keys() == forked.keys() and all(forked[s] == pytest.approx(ba[s], rel=1e-5) for s in ba)
    weights = [torch.load(runs[k] / "checkpoint_last.pt", weights_only=True)["model"] for k in (0, fork)]
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=1e-4, atol=1e-6)
    first = [next(r for r in records(runs[k]) if "loss" in r) for k in (0, fork)]
    assert first[1]["words_per_step"] == first[0]["words_per_step"] == 3 * first[1]["distinct_words_per_step"]
    if arch == "transformer":
        assert 0 < first[1]["model_flops_per_step"] < first[0]["model_flops_per_step"]


@pytest.mark.parametrize("arch, overrides, message", [
    ("transformer", ["ba.fork_layer=2"], "leaves no decoder block"),
    ("awd_lstm", ["ba.fork_layer=3"], "is not an LSTM layer"),
    ("awd_lstm", ["ba.fork_layer=1", "ba.sample_chunks=2"], "a forked AWD-LSTM window"),
    ("hf", ["ba.fork_layer=1"], "does not fork copies"),
    ("transformer", ["criterion.nonmono=5"], "AR/TAR and NT-ASGD are the AWD-LSTM's"),
    ("transformer", ["data.variable_bptt=true"], "set data.variable_bptt: false"),
    ("transformer", ["data.bptt=20"], "exceed model.max_positions=16"),
    ("transformer", ["model.emb_size=8"], "emb_size is not a field of model.arch transformer"),
    ("awd_lstm", ["data.eval_stride=4"], "no sliding window"),
])
def test_refusals(arch, overrides, message, corpus, hf_config):
    args = args_for(arch, corpus, hf_config) + overrides
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.load(args[0], args[1:])


def test_hf_without_transformers_is_one_line(corpus, hf_config, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real(name, *a))
    args = args_for("hf", corpus, hf_config)
    with pytest.raises(config_lib.ConfigError, match=r"pip install seqba\[hf\]"):
        config_lib.load(args[0], args[1:])


def test_sample_chunks_and_consistency_by_stream(corpus):
    """Chunks cut on stream boundaries with every copy: the whole window's loss and gradients, consistency on."""
    over = [*NO_DROPOUT["transformer"], "ba.sample_chunks=2", "ba.consistency=sym_kl", "ba.consistency_alpha=1.0"]
    task, model = task_for("transformer", corpus, None, over)
    ba = BatchAugmentation(task.cfg.ba, task, "words")
    batch = ba.expand(next(iter(task.epoch_iterator(0))))

    def grads(parts):
        model.zero_grad()
        total = sum(task.loss(model, part)[0] for part in parts)
        total.backward()
        return float(total.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}

    whole, g_whole = grads([batch])
    split, g_split = grads(ba.split(batch))
    assert split == pytest.approx(whole, rel=1e-5)
    for name in g_whole:
        torch.testing.assert_close(g_split[name], g_whole[name], rtol=1e-4, atol=1e-6)


def sym_kl_pair_loop(logits: torch.Tensor, repeats: int) -> torch.Tensor:
    """The slow, obvious term: for every sample (rows b, B + b, 2B + b, ...: copy-major), the mean over its copy
    pairs of ½(KL(p_i‖p_j) + KL(p_j‖p_i)), summed over positions and samples."""
    lprobs = logits.float().log_softmax(-1)  # (M·B, T, V)
    samples = lprobs.size(0) // repeats
    total = lprobs.new_zeros(())
    for b in range(samples):
        rows = [c * samples + b for c in range(repeats)]
        pairs = [(i, j) for i in rows for j in rows if i < j]
        for i, j in pairs:
            kl_ij = (lprobs[i].exp() * (lprobs[i] - lprobs[j])).sum()
            kl_ji = (lprobs[j].exp() * (lprobs[j] - lprobs[i])).sum()
            total = total + 0.5 * (kl_ij + kl_ji) / len(pairs)
    return total


@pytest.mark.parametrize("arch", ["transformer", "awd_lstm"])
def test_consistency_loss_is_the_ce_plus_alpha_times_the_pair_loop(arch, corpus):
    """With dropout on, the task's training loss with ``ba.consistency=sym_kl`` (the fused CE + term) equals its loss
    without the term, plus alpha × the pair-by-pair symmetric KL of the same logits; gradients too."""
    alpha = 2.0
    task, model = task_for(arch, corpus, None, ["ba.consistency=sym_kl", f"ba.consistency_alpha={alpha}"])
    batch = BatchAugmentation(task.cfg.ba, task, "words").expand(next(iter(task.epoch_iterator(0))))
    start, term, outputs = getattr(task, "hidden", None), task.consistency, []
    model.register_forward_hook(lambda module, args, out: outputs.append(out[0] if isinstance(out, tuple) else out))

    def loss_and_grads(consistency, extra=None):
        task.consistency = consistency
        if arch == "awd_lstm":
            task.hidden = start  # the loss moves the streams' state on
        torch.manual_seed(7)  # the same dropout masks in both runs
        model.zero_grad()
        loss, logs = task.loss(model.train(), batch)
        if extra is not None:
            loss = loss + extra(outputs[-1])
        loss.backward()
        return loss.item(), logs, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    repeats = task.cfg.ba.repeats
    rows = (lambda logits: logits.transpose(0, 1)) if arch == "awd_lstm" else (lambda logits: logits)  # (M·B, T, V)
    fused, logs, g_fused = loss_and_grads(term)
    pair_term = sym_kl_pair_loop(rows(outputs[-1]).detach(), repeats).item()
    ref, _, g_ref = loss_and_grads(None, lambda logits: alpha * sym_kl_pair_loop(rows(logits), repeats))
    assert pair_term > 0  # dropout on: the copies disagree
    assert logs["consistency_sum"].item() == pytest.approx(repeats * pair_term, rel=1e-4)
    assert fused == pytest.approx(ref, rel=1e-5)
    assert g_fused.keys() == g_ref.keys()
    for name in g_ref:
        torch.testing.assert_close(g_fused[name], g_ref[name], rtol=1e-4, atol=1e-6)
