"""seqba.flops against PyTorch's own FLOP counter (torch.utils.flop_counter) on a tiny Transformer step."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from seqba.flops import decoder_lm_step_flops, matmul_peak, transformer_step_flops
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


def test_decoder_lm_step_flops_refuses_bad_arguments():
    kwargs = dict(d_model=DM, ffn_dim=F, num_layers=LM_LAYERS, vocab_size=V)
    for bad in (dict(fork_layer=LM_LAYERS), dict(fork_layer=-1), dict(repeats=0)):
        with pytest.raises(ValueError):
            decoder_lm_step_flops(6, 2, **kwargs, **bad)
    with pytest.raises(ValueError):
        decoder_lm_step_flops(-1, 2, **kwargs)
