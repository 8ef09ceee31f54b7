"""Gradient analysis (issue 11): Pearson ρ, per-sample gradients (vmap and loop) against single-sample backward
passes, ρ = 1 for copies that cannot differ, and both CLI commands end to end on tiny models."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from seqba import analyze
from seqba import train as train_cli
from seqba.gradstats import centred_unit, pearson, per_sample_grads
from seqba.models.awd_lstm import AWDLSTM
from seqba.models.resnet import cifar_resnet
from seqba.models.transformer import Transformer

from runs import ROOT, data_dir, recipe  # noqa: F401 (fixtures)
from test_image_task import TINY as IMAGE_TINY
from test_image_task import fake_cifar  # noqa: F401 (fixture)


def test_pearson_of_a_gradient_with_itself_is_one():
    torch.manual_seed(0)
    g = torch.randn(3, 7)
    assert pearson(g, g) == pytest.approx(1.0)
    assert pearson(g, 2.5 * g + 1.0) == pytest.approx(1.0)  # invariant to scale and shift
    assert pearson(g, -g) == pytest.approx(-1.0)
    a, b = torch.randn(50), torch.randn(50)
    assert pearson(a, b) == pytest.approx(float(torch.corrcoef(torch.stack([a, b]))[0, 1]), abs=1e-6)
    assert torch.isnan(torch.tensor(pearson(torch.ones(5), a[:5])))  # constant: undefined
    with pytest.raises(ValueError, match="entries"):
        pearson(a, a[:3])
    u = centred_unit(torch.stack([a, b]))
    assert torch.allclose(u @ u.T, torch.corrcoef(torch.stack([a, b])).double(), atol=1e-6)


def single_backward(model, params, loss_fn, *samples):
    """The obvious reference: one ordinary backward pass per sample."""
    out = []
    for i in range(len(samples[0])):
        model.zero_grad()
        loss_fn(dict(model.named_parameters()), *(s[i] for s in samples)).backward()
        out.append({k: p.grad.clone() for k, p in model.named_parameters()})
    return {k: torch.stack([o[k] for o in out]) for k in out[0]}


def check_methods(model, loss_fn, *samples, methods=("vmap", "loop")):
    params = dict(model.named_parameters())
    ref = single_backward(model, params, loss_fn, *samples)
    for method in methods:
        got = per_sample_grads(loss_fn, params, *samples, method=method)
        assert list(got) == list(ref)
        for k in ref:
            assert torch.allclose(got[k], ref[k], atol=1e-5, rtol=1e-4), (method, k)


def test_per_sample_grads_of_the_transformer_equal_single_sample_backward():
    torch.manual_seed(0)
    model = Transformer(30, d_model=16, ffn_dim=32, num_heads=2, encoder_layers=1, decoder_layers=1, dropout=0.0)
    model.train()
    src, prev, target = torch.randint(4, 30, (4, 6)), torch.randint(4, 30, (4, 5)), torch.randint(4, 30, (4, 5))
    lengths = torch.full((4,), 6)

    def loss_fn(params, s, n, p, t):
        logits = functional_call(model, params, (s[None], n[None], p[None]))
        return F.cross_entropy(logits[0], t, reduction="sum")

    check_methods(model, loss_fn, src, lengths, prev, target)


def test_per_sample_grads_of_the_resnet_in_eval_mode_equal_single_sample_backward():
    torch.manual_seed(0)
    model = cifar_resnet(10, 1, depth=8, width=4, ghost_batch_size=2).eval()
    images, labels = torch.randn(3, 1, 8, 8), torch.tensor([1, 4, 4])

    def loss_fn(params, x, y):
        return F.cross_entropy(functional_call(model, params, (x[None],)), y[None])

    check_methods(model, loss_fn, images, labels)


def test_per_sample_grads_of_the_awd_lstm_equal_single_sample_backward():
    torch.manual_seed(0)
    model = AWDLSTM(20, emb_size=6, hidden_size=8, num_layers=2, dropout=0, dropouth=0, dropouti=0, dropoute=0,
                    wdrop=0).train()
    hidden = model.init_hidden(1)
    x, y = torch.randint(20, (3, 5)), torch.randint(20, (3, 5))

    def loss_fn(params, a, b):
        logits = functional_call(model, params, (a[:, None], hidden))[0]
        return F.cross_entropy(logits[:, 0], b, reduction="sum")

    check_methods(model, loss_fn, x, y)  # vmap too: correct, though it loops internally (no LSTM batching rule)
    with pytest.raises(ValueError, match="method"):
        per_sample_grads(loss_fn, dict(model.named_parameters()), x, y, method="jacrev")


@pytest.fixture
def tiny_run(recipe, tmp_path):
    """A 2-update tiny translation run (M=2) and its folder."""
    def run(name, *overrides):
        out = tmp_path / name
        assert train_cli.main([str(recipe), "train.max_updates=2", "train.validate_interval_updates=0",
                               *overrides, f"output_dir={out}"]) == 0
        return out
    return run


def correlation(capsys, *args):
    assert analyze.main(["grad-correlation", *map(str, args)]) == 0
    out = capsys.readouterr().out
    assert "| relation | pairs | median ρ |" in out
    return out


def test_translation_copies_without_dropout_have_rho_one(tiny_run, tmp_path, capsys):
    run = tiny_run("nodrop", "model.dropout=0")
    correlation(capsys, "--checkpoint", run / "checkpoint_last.pt", "--samples", 4, "--copies", 3,
                "--out", tmp_path / "r.json")
    result = json.loads((tmp_path / "r.json").read_text())
    copies = result["relations"]["copies"]
    assert copies["count"] == 4 * 3 and copies["q25"] == pytest.approx(1.0, abs=1e-6)
    assert result["relations"]["different"]["count"] == 3 and result["relations"]["different"]["median"] < 0.999


def test_translation_with_dropout_by_layer_and_init(tiny_run, tmp_path, capsys):
    run = tiny_run("drop")  # dropout 0.2: the copies differ
    correlation(capsys, "--checkpoint", run, "--samples", 3, "--by-layer", "--split", "valid")
    trained = json.loads((run / "grad_correlation_valid.json").read_text())  # default: beside the checkpoint
    assert trained["step"] == 2 and not trained["init"]
    assert trained["relations"]["copies"]["median"] < 0.9999
    by_layer = trained["by_layer"]  # one entry per named parameter
    assert "encoder_layers.0.self_attn.qkv_proj.weight" in by_layer and "decoder_embed.weight" in by_layer
    assert all(v["copies"]["count"] == 3 for v in by_layer.values())  # M=2 (the recipe's): one pair per sentence
    correlation(capsys, "--checkpoint", run, "--samples", 3, "--init")
    init = json.loads((run / "grad_correlation_valid_init.json").read_text())
    assert init["init"] and init["step"] == 0 and init["relations"] != trained["relations"]


def test_images_without_augmentation_have_rho_one(fake_cifar, tmp_path, capsys):
    recipe = ROOT / "recipes" / "resnet44_cifar10_m40.yaml"
    common = ["--recipe", recipe, "--set", f"data.root={fake_cifar}", *[x for o in IMAGE_TINY for x in ("--set", o)],
              "--samples", 6, "--copies", 2, "--bn-batches", 2]
    plain = ["--set", "data.crop_padding=0", "--set", "data.flip=false", "--set", "data.cutout_size=0"]
    correlation(capsys, *common, *plain, "--out", tmp_path / "plain.json")
    result = json.loads((tmp_path / "plain.json").read_text())
    relations = result["relations"]
    assert result["init"] and relations["copies"]["q25"] == pytest.approx(1.0, abs=1e-6)
    assert relations["clean_vs_copy"]["count"] == 6 * 2 and relations["clean_vs_copy"]["q25"] == pytest.approx(1.0, abs=1e-6)
    assert {"same_class", "different_class"} & set(result["relations"])
    correlation(capsys, *common, "--set", "data.cutout_size=4", "--out", tmp_path / "aug.json")
    augmented = json.loads((tmp_path / "aug.json").read_text())["relations"]
    assert augmented["copies"]["median"] < 0.9999 and augmented["clean_vs_copy"]["median"] < 0.9999


def test_grad_norm_plots_one_line_per_run(tiny_run, tmp_path, capsys):
    runs = [tiny_run(f"m{m}", f"ba.repeats={m}", "train.log_interval=1") for m in (1, 2)]
    out = tmp_path / "fig" / "grad_norm.png"
    capsys.readouterr()  # the training runs' output
    assert analyze.main(["grad-norm", *map(str, runs), "--out", str(out), "--smooth", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)["runs"]
    assert set(summary) == {"M=1", "M=2"} and out.stat().st_size > 1000
    assert analyze.main(["grad-norm", str(runs[0]), "--out", str(out), "--key", "nope"]) == 2
    assert "no run has 'nope'" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert analyze.main(["grad-correlation", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert analyze.main(["grad-norm", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    with pytest.raises(SystemExit) as err:
        analyze.main(["grad-correlation", "--checkpoint", "x", "--samples", "0"])
    assert err.value.code == 2
    err_text = capsys.readouterr().err
    assert "checkpoint not found" in err_text and "no metrics.jsonl" in err_text and "must be >= 1" in err_text
