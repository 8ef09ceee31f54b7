"""seqba.flops against PyTorch's own FLOP counter (torch.utils.flop_counter) on tiny Transformer, AWD-LSTM and ResNet
steps; the measured per-image count leaves training untouched; tiny image and AWD-LSTM runs log model FLOPs."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from seqba.flops import (awd_lstm_step_flops, causal_lm_step_flops, decoder_lm_step_flops, matmul_peak,
                         per_example_training_flops, transformer_step_flops)
from seqba.models.fork import Fork
from seqba.models.transformer import Transformer
from seqba.models.transformer_lm import TransformerLM

E, D, V, DM, F = 2, 2, 37, 16, 32


def _counted(repeats: int, fork_layer: int, layout: str = "adjacent", b: int = 3, s: int = 5, t: int = 4) -> float:
    torch.manual_seed(0)
    model = Transformer(V, d_model=DM, ffn_dim=F, num_heads=2, encoder_layers=E, decoder_layers=D, dropout=0.1)
    src, prev = torch.randint(4, V, (b, s)), torch.randint(4, V, (b, t))  # no padding: every token is real
    # the math backend runs attention as two batched matmuls, which the counter sees (the CPU flash kernel it
    # does not count)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        if fork_layer:
            logits = model(src, None, prev, fork=Fork(fork_layer, repeats, layout))
        else:
            rows = lambda x: x.repeat_interleave(repeats, 0)  # noqa: E731  BA at the input
            logits = model(rows(src), None, rows(prev))
        logits.sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("repeats,fork_layer,layout", [(1, 0, "adjacent"), (3, 0, "adjacent"), (3, 1, "adjacent"),
                                                       (3, 2, "adjacent"), (3, 3, "adjacent"), (3, 2, "tiled"),
                                                       (2, 3, "tiled")])
def test_step_flops_match_torch_counter(repeats, fork_layer, layout):
    ours = transformer_step_flops([5] * 3, [4] * 3, d_model=DM, ffn_dim=F, encoder_layers=E, decoder_layers=D,
                                  vocab_size=V, repeats=repeats, fork_layer=fork_layer,
                                  memory_shared=layout == "adjacent")
    assert ours == pytest.approx(_counted(repeats, fork_layer, layout), rel=1e-9)


def test_step_flops_refuses_bad_arguments():
    kwargs = dict(d_model=DM, ffn_dim=F, encoder_layers=E, decoder_layers=D, vocab_size=V)
    with pytest.raises(ValueError):
        transformer_step_flops([1, 2], [1], **kwargs)
    with pytest.raises(ValueError):
        transformer_step_flops([1], [1], fork_layer=E + D, **kwargs)
    with pytest.raises(ValueError):
        transformer_step_flops([1], [1], repeats=0, **kwargs)


def test_matmul_peak_reports_the_best_shape():
    peak = matmul_peak([(8, 8, 8), (64, 64, 64)], threads=1, repeat=1, min_seconds=0.01)
    assert peak["flops_per_s"] == max(peak["per_shape"].values()) > 0 and peak["threads"] == 1
    assert peak["shape"] in ((8, 8, 8), (64, 64, 64))
    with pytest.raises(ValueError):
        matmul_peak([])


# -- decoder-only LM ----------------------------------------------------------------------------------------------
LM_LAYERS = 3


def _lm_counted(repeats: int, fork_layer: int, layout: str, rows: int = 2, t: int = 6) -> float:
    torch.manual_seed(0)
    model = TransformerLM(V, d_model=DM, ffn_dim=F, num_heads=2, num_layers=LM_LAYERS, max_positions=t, dropout=0.1,
                          attention_dropout=0.1)
    tokens = torch.randint(0, V, (rows, t))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        if fork_layer:
            logits = model(tokens, Fork(fork_layer, repeats, layout))
        else:
            logits = model(tokens.repeat_interleave(repeats, 0))
        logits.sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("repeats,fork_layer,layout", [(1, 0, "adjacent"), (3, 0, "adjacent"), (3, 1, "adjacent"),
                                                       (3, 2, "tiled"), (2, 1, "tiled")])
def test_decoder_lm_step_flops_match_torch_counter(repeats, fork_layer, layout):
    ours = decoder_lm_step_flops(6, 2, d_model=DM, ffn_dim=F, num_layers=LM_LAYERS, vocab_size=V, repeats=repeats,
                                 fork_layer=fork_layer)
    assert ours == pytest.approx(_lm_counted(repeats, fork_layer, layout), rel=1e-9)


def test_hf_causal_lm_flops_equal_the_native_count_and_the_torch_counter():
    """A tiny GPT-2 (HF, Conv1D projections, tied head): the module-based count equals decoder_lm_step_flops of the
    same sizes and FlopCounterMode of a real forward + backward (eager attention: its matmuls are visible)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=V, n_positions=8, n_embd=DM, n_layer=LM_LAYERS, n_head=2, n_inner=F,
                                     attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    ours = causal_lm_step_flops(model, 6, 2, repeats=3)
    assert ours == decoder_lm_step_flops(6, 2, d_model=DM, ffn_dim=F, num_layers=LM_LAYERS, vocab_size=V, repeats=3)
    tokens = torch.randint(0, V, (6, 6))  # 2 windows x 3 copies
    with FlopCounterMode(display=False) as counter:
        model(tokens).logits.sum().backward()
    assert ours == pytest.approx(counter.get_total_flops(), rel=1e-9)
    with pytest.raises(ValueError):
        causal_lm_step_flops(model, 6, 2, repeats=0)


def test_decoder_lm_step_flops_refuses_bad_arguments():
    kwargs = dict(d_model=DM, ffn_dim=F, num_layers=LM_LAYERS, vocab_size=V)
    for bad in (dict(fork_layer=LM_LAYERS), dict(fork_layer=-1), dict(repeats=0)):
        with pytest.raises(ValueError):
            decoder_lm_step_flops(6, 2, **kwargs, **bad)
    with pytest.raises(ValueError):
        decoder_lm_step_flops(-1, 2, **kwargs)


# -- AWD-LSTM -------------------------------------------------------------------------------------------------------
# The CPU LSTM kernel (oneDNN's mkldnn_rnn_layer) is one opaque op that FlopCounterMode does not count; with oneDNN
# off, aten::lstm runs as per-time-step addmm/mm calls, which it does. The initial state requires grad so that the
# counter also sees the first step's hidden-to-hidden input gradient, which the convention counts (in training the
# carried state is detached and that one (N, 4h) x (4h, h) product is skipped: 2·4h²·N per layer and window).
AWD_V, AWD_E, AWD_H, AWD_L = 37, 8, 16, 3


def _awd_counted(repeats: int, fork_layer: int, streams: int = 2, t: int = 5, per_copy_masks: bool = False) -> float:
    from seqba.models.awd_lstm import AWDLSTM

    torch.manual_seed(0)
    model = AWDLSTM(AWD_V, emb_size=AWD_E, hidden_size=AWD_H, num_layers=AWD_L, per_copy_masks=per_copy_masks)
    tokens = torch.randint(0, AWD_V, (t, streams))  # (T, B)
    fork = Fork(fork_layer, repeats, "tiled") if fork_layer else None
    hidden = [(h.requires_grad_(), c.requires_grad_())
              for h, c in model.init_hidden(streams if fork else streams * repeats, fork)]
    with torch.backends.mkldnn.flags(enabled=False), FlopCounterMode(display=False) as counter:
        if fork is not None:
            logits, *_ = model(tokens, hidden, fork=fork)
        else:
            logits, *_ = model(tokens.repeat(1, repeats), hidden, repeats=repeats)  # tiled columns
        logits.sum().backward()
    return counter.get_total_flops()


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # toggling oneDNN warns on CPU builds
@pytest.mark.parametrize("repeats,fork_layer,per_copy_masks", [(1, 0, False), (3, 0, False), (3, 0, True),
                                                               (3, 1, False), (2, 2, False), (3, AWD_L, False)])
def test_awd_lstm_step_flops_match_torch_counter(repeats, fork_layer, per_copy_masks):
    sizes = [AWD_E, AWD_H, AWD_H, AWD_E]  # tied weights: the last layer has E units
    ours = awd_lstm_step_flops(5, 2, layer_sizes=sizes, vocab_size=AWD_V, repeats=repeats, fork_layer=fork_layer)
    assert ours == pytest.approx(_awd_counted(repeats, fork_layer, per_copy_masks=per_copy_masks), rel=1e-9)


def test_awd_lstm_step_flops_formula_and_refusals():
    # one layer 3 -> 4 and a head of 5 words: 6·4·4·(3+4) + 6·5·4 per token, T·B = 6 tokens
    assert awd_lstm_step_flops(3, 2, layer_sizes=[3, 4], vocab_size=5) == (672 + 120) * 6
    kwargs = dict(layer_sizes=[AWD_E, AWD_H, AWD_E], vocab_size=AWD_V)
    for bad in (dict(fork_layer=3), dict(fork_layer=-1), dict(repeats=0)):
        with pytest.raises(ValueError):
            awd_lstm_step_flops(5, 2, **kwargs, **bad)
    with pytest.raises(ValueError):
        awd_lstm_step_flops(-1, 2, **kwargs)
    with pytest.raises(ValueError):
        awd_lstm_step_flops(5, 2, layer_sizes=[8], vocab_size=AWD_V)


# -- measured per-example FLOPs (image ResNets) ---------------------------------------------------------------------
def _tiny_resnet():
    from seqba.models.resnet import CifarResNet, ResNetConfig

    torch.manual_seed(0)
    return CifarResNet(ResNetConfig(depth=8, width=4, ghost_batch_size=2), 10, 3)


def test_per_example_flops_match_a_counted_training_step():
    """3 × the forward equals FlopCounterMode's forward + backward exactly when the input needs a gradient (every
    conv's and linear's backward = grad input + grad weight = 2 × its forward); a training step's images do not,
    so its backward skips the stem conv's input gradient: exactly that conv's forward FLOPs less."""
    model, x = _tiny_resnet(), torch.randn(4, 3, 32, 32)
    per_image = per_example_training_flops(model, x[:1])
    for needs_grad in (True, False):
        with FlopCounterMode(display=False) as counter:
            model(x.clone().requires_grad_(needs_grad)).sum().backward()
        stem = 0 if needs_grad else 2 * 3 * 4 * 9 * 32 * 32 * len(x)  # 2 · C_in · width · 3·3 · H·W per image
        assert counter.get_total_flops() == pytest.approx(per_image * len(x) - stem, rel=1e-9)
    assert per_example_training_flops(model, x) == pytest.approx(per_image, rel=1e-9)  # per row of a batch


def test_per_example_flops_leave_the_model_and_the_rng_alone():
    model = _tiny_resnet()
    model.train()
    model.fc.eval()  # a submodule whose mode differs keeps it
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}  # incl. BN running stats, num_batches_tracked
    rng = torch.get_rng_state()
    assert per_example_training_flops(model, torch.randn(1, 3, 32, 32)) > 0
    rng_after_input = torch.get_rng_state()
    assert per_example_training_flops(model, torch.zeros(1, 3, 32, 32)) > 0
    assert torch.equal(torch.get_rng_state(), rng_after_input) and not torch.equal(rng, rng_after_input)
    assert [m.training for m in model.modules()] == modes
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError):
        per_example_training_flops(model, torch.zeros(0, 3, 32, 32))


# -- end to end: metrics.jsonl of tiny runs -------------------------------------------------------------------------
def _training_records(run):
    import json

    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_image_run_logs_model_flops(tmp_path):
    from seqba import config as config_lib
    from seqba import train as train_cli
    from seqba.tasks.image_classification import build_model
    from test_image_task import RECIPES, TINY, write_fake_cifar10

    args = [f"data.root={write_fake_cifar10(tmp_path / 'cifar')}", *TINY, "train.log_interval=1",
            f"output_dir={tmp_path / 'run'}"]
    recipe = RECIPES / "resnet44_cifar10_m40.yaml"
    assert train_cli.main([str(recipe), *args]) == 0
    per_image = per_example_training_flops(build_model(config_lib.load(recipe, args)), torch.zeros(1, 3, 32, 32))
    records = _training_records(tmp_path / "run")
    assert len(records) == 2
    for r in records:  # M·B = 40 · 8 rows a step
        assert r["images_per_step"] == 320 and r["model_flops_per_step"] == pytest.approx(per_image * 320, rel=1e-9)
        assert r["model_flops_per_s"] > 0


def _tiny_corpus(folder):
    """ptb.{train,valid,test}.txt of 40 words (every one in train), random lines."""
    import numpy as np

    folder.mkdir()
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(40)]
    for split, lines in (("train", 300), ("valid", 40), ("test", 40)):
        text = [" ".join(rng.choice(words, rng.integers(3, 12))) for _ in range(lines)]
        if split == "train":
            text.append(" ".join(words))
        (folder / f"ptb.{split}.txt").write_text("\n".join(text) + "\n")
    return folder


@pytest.mark.parametrize("fork_layer", [0, 1])
def test_awd_lstm_run_logs_model_flops(tmp_path, fork_layer):
    """Every step's count is that of its own drawn window length (variable BPTT): words_per_step = T·M·B."""
    from seqba import train as train_cli
    from seqba.data.lm import load_corpus
    from test_lm_task import SMALL, TINY

    root = _tiny_corpus(tmp_path / "ptb")
    assert train_cli.main([str(SMALL), f"data.root={root}", *TINY, f"ba.fork_layer={fork_layer}",
                           f"output_dir={tmp_path / 'run'}"]) == 0
    vocab, repeats, streams = len(load_corpus(root).dictionary), 10, 4  # the recipe's M, TINY's B
    records = _training_records(tmp_path / "run")
    assert len(records) == 3 and len({r["words_per_step"] for r in records}) > 1  # variable BPTT lengths
    for r in records:
        t = r["words_per_step"] / (repeats * streams)
        assert t == int(t)
        want = awd_lstm_step_flops(int(t), streams, layer_sizes=[8, 16, 8], vocab_size=vocab, repeats=repeats,
                                   fork_layer=fork_layer)
        assert r["model_flops_per_step"] == pytest.approx(want, rel=1e-12) and r["model_flops_per_s"] > 0
