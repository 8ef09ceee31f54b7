"""AWD-LSTM: locked/embedding/weight dropout against their definitions, BA copy behaviour, gradients."""
import pytest
import torch
from torch import nn

from seqba.models.awd_lstm import AWDLSTM, LockedDropout, WeightDropLSTM, detach_hidden, embedded_dropout

V, E, H, L = 30, 6, 8, 2  # vocab, embedding, hidden, layers of the tiny model
T, B, M = 5, 3, 4  # time, streams, repeats


def tiny(**kw):
    torch.manual_seed(0)
    return AWDLSTM(V, emb_size=E, hidden_size=H, num_layers=L, **kw)


def ba_input():
    """(T, B * M) ids: B random streams, tiled M times copy-major."""
    g = torch.Generator().manual_seed(1)
    return torch.randint(V, (T, B), generator=g).repeat(1, M)


def copies(t):
    """Split (T, B * M, ...) into the M copy slices."""
    return t.chunk(M, dim=1)


def test_locked_dropout_mask_shared_over_time():
    torch.manual_seed(0)
    drop = LockedDropout(0.5).train()
    out = drop(torch.ones(7, 5, 6))
    mask = out[:1]  # (1, N, H)
    assert torch.equal(out, mask.expand(7, 5, 6))
    assert set(out.unique().tolist()) == {0.0, 2.0}  # Bernoulli(0.5) / (1 - 0.5)
    x = torch.randn(7, 5, 6)
    assert drop.eval()(x) is x
    with pytest.raises(ValueError, match="p must be in"):
        LockedDropout(1.0)


def test_embedded_dropout_drops_whole_rows():
    torch.manual_seed(0)
    emb = nn.Embedding(50, 4)
    words = torch.arange(50).repeat(2).view(10, 10)  # every word twice
    out = embedded_dropout(emb, words, 0.5)  # (10, 10, 4)
    dropped = set()
    for w, vec in zip(words.flatten().tolist(), out.view(-1, 4)):
        if torch.all(vec == 0):
            dropped.add(w)
        else:
            torch.testing.assert_close(vec, emb.weight[w] * 2)
    assert 0 < len(dropped) < 50
    for w in dropped:  # one mask per call: every occurrence of a dropped word is zero
        assert torch.all(out[words == w] == 0)
    torch.testing.assert_close(embedded_dropout(emb, words, 0.0, scale=3.0), emb(words) * 3)


def manual_lstm(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """The LSTM equations of torch.nn.LSTM (gates i, f, g, o), one step at a time."""
    outs = []
    for x_t in x:
        i, f, g, o = (x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs), h, c


def test_weight_drop_lstm_matches_reference_equations_and_backprops():
    torch.manual_seed(0)
    rnn = WeightDropLSTM(3, 4, wdrop=0.5).double().train()
    x, h0, c0 = torch.randn(6, 2, 3).double(), torch.randn(1, 2, 4).double(), torch.randn(1, 2, 4).double()
    w = rnn.drop_weight_hh()
    kept = w != 0
    assert 0 < kept.sum() < w.numel()
    torch.testing.assert_close(w[kept], rnn.weight_hh_l0[kept] * 2)

    out, (h, c) = rnn(x, (h0, c0), weight_hh=w)
    ref_out, ref_h, ref_c = manual_lstm(x, h0[0], c0[0], rnn.weight_ih_l0, w, rnn.bias_ih_l0, rnn.bias_hh_l0)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(h[0], ref_h)
    torch.testing.assert_close(c[0], ref_c)

    out.sum().backward()  # gradient reaches the raw weight, and only through kept entries
    grad = rnn.weight_hh_l0.grad
    assert grad is not None and grad[kept].abs().sum() > 0
    assert torch.all(grad[~kept] == 0)

    torch.manual_seed(5)  # without weight_hh the layer draws the same dropped matrix
    w = rnn.drop_weight_hh()
    torch.manual_seed(5)
    torch.testing.assert_close(rnn(x, (h0, c0))[0], rnn(x, (h0, c0), weight_hh=w)[0])

    rnn.eval()  # eval: raw weight
    ref_out = manual_lstm(x, h0[0], c0[0], rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)[0]
    torch.testing.assert_close(rnn(x, (h0, c0))[0], ref_out)


def test_shapes_tying_and_init():
    model = tiny()
    assert model.decoder.weight is model.encoder.weight
    assert [r.hidden_size for r in model.rnns] == [H, E]  # last layer = emb_size when tied
    assert torch.all(model.decoder.bias == 0) and model.encoder.weight.abs().max() <= 0.1
    x = ba_input()
    logits, hidden, raw, dropped = model(x, model.init_hidden(B * M), repeats=M)
    assert logits.shape == (T, B * M, V)
    assert [tuple(h.shape) for h, _ in hidden] == [(1, B * M, H), (1, B * M, E)]
    assert [tuple(r.shape) for r in raw] == [tuple(d.shape) for d in dropped] == [(T, B * M, H), (T, B * M, E)]
    untied = AWDLSTM(V, emb_size=E, hidden_size=H, num_layers=L, tie_weights=False)
    assert untied.rnns[-1].hidden_size == H and untied.decoder.weight is not untied.encoder.weight


def test_eval_is_deterministic():
    for per_copy in (False, True):
        model = tiny(per_copy_masks=per_copy).eval()
        x = ba_input()
        a = model(x, model.init_hidden(B * M), repeats=M)[0]
        b = model(x, model.init_hidden(B * M), repeats=M)[0]
        assert torch.equal(a, b)
        for copy in copies(a)[1:]:  # all copies identical without dropout
            torch.testing.assert_close(copy, copies(a)[0])


@pytest.mark.parametrize("per_copy", [False, True])
def test_train_copies_differ(per_copy):
    model = tiny(per_copy_masks=per_copy).train()
    logits = model(ba_input(), model.init_hidden(B * M), repeats=M)[0]
    parts = copies(logits)
    for c in range(1, M):
        assert not torch.allclose(parts[0], parts[c])


@pytest.mark.parametrize("which", ["wdrop", "dropoute"])
def test_default_mode_shares_weight_and_embedding_masks_across_copies(which):
    probs = dict(dropout=0.0, dropouth=0.0, dropouti=0.0, dropoute=0.0, wdrop=0.0)
    probs[which] = 0.5
    x = ba_input()
    shared = tiny(**probs).train()
    parts = copies(shared(x, shared.init_hidden(B * M), repeats=M)[0])
    for c in range(1, M):
        torch.testing.assert_close(parts[c], parts[0])  # one mask for the whole batch
    own = tiny(per_copy_masks=True, **probs).train()
    parts = copies(own(x, own.init_hidden(B * M), repeats=M)[0])
    for c in range(1, M):
        assert not torch.allclose(parts[c], parts[0])  # a mask per copy


def test_per_copy_mode_with_one_copy_equals_default():
    x = ba_input()
    outs = []
    for per_copy in (False, True):
        model = tiny(per_copy_masks=per_copy).train()
        torch.manual_seed(3)
        outs.append(model(x, model.init_hidden(B * M), repeats=1)[0])
    torch.testing.assert_close(outs[0], outs[1])


@pytest.mark.parametrize("per_copy", [False, True])
def test_gradients_flow_and_hidden_carries(per_copy):
    model = tiny(per_copy_masks=per_copy).train()
    x = ba_input()
    logits, hidden, raw, dropped = model(x, model.init_hidden(B * M), repeats=M)
    loss = logits.logsumexp(-1).mean() + 2 * dropped[-1].pow(2).mean() + (raw[-1][1:] - raw[-1][:-1]).pow(2).mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    hidden = detach_hidden(hidden)
    assert all(not h.requires_grad and not c.requires_grad for h, c in hidden)
    model(x, hidden, repeats=M)[0].sum().backward()  # the next window runs from the carried state


def test_input_validation():
    model = tiny()
    x = ba_input()
    with pytest.raises(ValueError, match="repeats=5"):
        model(x, model.init_hidden(B * M), repeats=5)
    with pytest.raises(ValueError, match=r"hidden\[0\]"):
        model(x, model.init_hidden(B), repeats=M)
    with pytest.raises(ValueError, match="int64"):
        model(x.float(), model.init_hidden(B * M))
    with pytest.raises(ValueError, match="wdrop"):
        tiny(wdrop=1.5)
