"""Forked BA in the Transformer (seqba.models.fork, ``Transformer.forward(..., fork=...)``).

Checked against a hand-written reference that repeats the hidden states at layer k and runs every layer above on
the M·B rows (memory repeated, no row sharing): same logits and the same gradient for every parameter, with
dropout on, for every k, both layouts. With dropout off, a fork changes nothing but the row count: the logits are
the M=1 logits repeated and the gradients M times M=1's.
"""
import pytest
import torch

from seqba.models.fork import Fork
from seqba.models.transformer import Transformer, _key_mask
from seqba.repeat import repeat_batch

E, D, V = 2, 2, 37


def _model(dropout: float) -> Transformer:
    torch.manual_seed(0)
    return Transformer(V, d_model=16, ffn_dim=32, num_heads=2, encoder_layers=E, decoder_layers=D, dropout=dropout,
                       activation_dropout=dropout)


def _batch(b: int = 3, s: int = 5, t: int = 4):
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, V, (b, s), generator=g)
    src[0, -2:] = 0  # padding
    prev = torch.randint(4, V, (b, t), generator=g)
    prev[1, -1] = 0
    return src, prev


def reference(model: Transformer, src, prev, k: int, m: int, layout: str):
    """The obvious forked forward: run layers one by one, repeat everything (hidden states, masks, memory) at
    layer k; the decoder's cross-attention always reads a repeated memory."""
    def rep(x):
        return repeat_batch(x, m, layout)

    pad = src.eq(model.pad_idx)
    x = model._embed(src, model.encoder_embed)
    for i, layer in enumerate(model.encoder_layers):
        if i == k:
            x, pad = rep(x), rep(pad)
        x = layer(x, _key_mask(pad))
    memory = model.encoder_norm(x)
    if k < E:  # the copies exist already
        y = model._embed(rep(prev), model.decoder_embed)
    else:
        y = model._embed(prev if k > E else rep(prev), model.decoder_embed)
    for i, layer in enumerate(model.decoder_layers):
        if E + i == k and k > E:
            y = rep(y)
        if E + i == k:
            memory, pad = rep(memory), rep(pad)
        y = layer(y, memory, _key_mask(pad), None, True)
    return torch.nn.functional.linear(model.decoder_norm(y), model.decoder_embed.weight)


def _loss_and_grads(model, logits):
    loss = (logits.float().log_softmax(-1) * torch.linspace(-1, 1, V)).sum()
    grads = torch.autograd.grad(loss, [p for p in model.parameters()])
    return loss.detach(), grads


@pytest.mark.parametrize("layout", ["adjacent", "tiled"])
@pytest.mark.parametrize("k", range(1, E + D))
def test_fork_equals_hand_written_repeat(k, layout):
    model = _model(dropout=0.3).train()
    src, prev = _batch()
    fork = Fork(k, 3, layout)
    torch.manual_seed(5)
    ours = model(src, None, prev, fork=fork)
    torch.manual_seed(5)
    ref = reference(model, src, prev, k, 3, layout)
    assert ours.shape == (3 * 3, prev.size(1), V)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    (loss, grads), (ref_loss, ref_grads) = _loss_and_grads(model, ours), _loss_and_grads(model, ref)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)
    # the copies differ (masks above the fork) while the rows below it were shared
    copies = ours.view(-1, 3, *ours.shape[1:]) if layout == "adjacent" else ours.view(3, -1, *ours.shape[1:])
    first, second = (copies[:, 0], copies[:, 1]) if layout == "adjacent" else (copies[0], copies[1])
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("k", range(1, E + D))
def test_fork_without_dropout_repeats_m1(k):
    """Dropout off: the copies are equal, the logits are M=1's repeated, and the shared layers' gradient is the
    sum over the copies: M times M=1's."""
    model = _model(dropout=0.0).train()
    src, prev = _batch()
    single = model(src, None, prev)
    forked = model(src, None, prev, fork=Fork(k, 4, "adjacent"))
    torch.testing.assert_close(forked, repeat_batch(single, 4, "adjacent"), rtol=1e-5, atol=1e-6)
    _, g1 = _loss_and_grads(model, single)
    _, g4 = _loss_and_grads(model, forked)
    for a, b in zip(g1, g4):
        torch.testing.assert_close(4 * a, b, rtol=1e-4, atol=1e-5)


def test_fork_refuses_the_head_and_bad_arguments():
    model = _model(dropout=0.1)
    src, prev = _batch()
    with pytest.raises(ValueError, match="no layer"):
        model(src, None, prev, fork=Fork(E + D, 2))
    for bad in ({"layer": 0, "repeats": 2}, {"layer": 1, "repeats": 1}, {"layer": 1, "repeats": 2, "layout": "x"}):
        with pytest.raises(ValueError):
            Fork(**bad)


# -- AWD-LSTM ----------------------------------------------------------------------------------------------------
def _lstm(per_copy_masks: bool = False, p: float = 0.3):
    from seqba.models.awd_lstm import AWDLSTM

    torch.manual_seed(0)
    return AWDLSTM(29, emb_size=6, hidden_size=10, num_layers=3, dropout=p, dropouth=p, dropouti=p, dropoute=p,
                   wdrop=p, per_copy_masks=per_copy_masks)


def lstm_reference(model, x, hidden, k: int, m: int):
    """The obvious forked AWD-LSTM: embedding and layers below k on B columns, layer k-1's output repeated
    copy-major (tiled) before its locked dropout, every layer from k on over the M·B columns."""
    copies = m if model.per_copy_masks else 1
    h = model.lockdrop_i(model._embed(x, 1))
    for i, rnn in enumerate(model.rnns):
        raw, _ = model._run_layer(rnn, h, hidden[i], 1 if i < k else copies)
        if i == k - 1:
            raw = raw.repeat(1, m, 1)  # (T, B, H) -> (T, M·B, H), column c·B + b is copy c of stream b
        h = model.lockdrop_o(raw) if i == len(model.rnns) - 1 else model.lockdrop_h(raw)
    return model.decoder(h)


@pytest.mark.parametrize("per_copy_masks", [False, True])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_lstm_fork_equals_hand_written_repeat(k, per_copy_masks):
    model = _lstm(per_copy_masks).train()
    fork = Fork(k, 2, "tiled")
    x = torch.randint(0, 29, (5, 3))
    hidden = model.init_hidden(3, fork)
    assert [h.size(1) for h, _ in hidden] == [3 if i < k else 6 for i in range(3)]
    torch.manual_seed(3)
    logits, new_hidden, raw, dropped = model(x, hidden, fork=fork)
    torch.manual_seed(3)
    ref = lstm_reference(model, x, hidden, k, 2)
    torch.testing.assert_close(logits, ref)
    assert logits.shape == (5, 6, 29) and [h.size(1) for h, _ in new_hidden] == [h.size(1) for h, _ in hidden]
    g = torch.autograd.grad(logits.sum(), list(model.parameters()))
    g_ref = torch.autograd.grad(ref.sum(), list(model.parameters()))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(logits[:, :3], logits[:, 3:])  # the copies differ by their masks above the fork


def test_lstm_fork_without_dropout_repeats_m1():
    model = _lstm(p=0.0).train()
    x = torch.randint(0, 29, (5, 3))
    single, *_ = model(x, model.init_hidden(3))
    forked, *_ = model(x, model.init_hidden(3, Fork(2, 3, "tiled")), fork=Fork(2, 3, "tiled"))
    torch.testing.assert_close(forked, single.repeat(1, 3, 1))


def test_lstm_fork_refuses_bad_combinations():
    model = _lstm(per_copy_masks=True)
    x = torch.randint(0, 29, (5, 3))
    with pytest.raises(ValueError, match="tiled"):
        model(x, model.init_hidden(3, Fork(1, 2, "adjacent")), fork=Fork(1, 2, "adjacent"))
    with pytest.raises(ValueError, match="layer"):
        model(x, model.init_hidden(3), fork=Fork(4, 2, "tiled"))
