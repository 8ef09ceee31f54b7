"""The decoder-only Transformer LM (seqba.models.transformer_lm): shapes, causality, tied weights, forked copies
against a hand-written repeat at block k, training on a toy sequence, bf16, config errors, and sliding-window
perplexity against a slow loop."""
import math

import pytest
import torch
import torch.nn.functional as F

from seqba.errors import FieldError
from seqba.models.fork import Fork
from seqba.models.transformer_lm import TransformerLM, TransformerLMConfig, sliding_window_nll

V, N = 29, 3


def _model(dropout: float = 0.0, positions: str = "learned", **fields) -> TransformerLM:
    torch.manual_seed(0)
    kwargs = dict(d_model=16, num_layers=N, num_heads=2, ffn_dim=32, max_positions=24, dropout=dropout,
                  attention_dropout=dropout, positions=positions)
    return TransformerLM(V, **{**kwargs, **fields})


def _tokens(b: int = 3, t: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_shapes_and_causality(positions):
    model = _model(positions=positions).eval()
    tokens = _tokens()
    logits = model(tokens)
    assert logits.shape == (3, 7, V) and logits.dtype == torch.float32
    changed = tokens.clone()
    changed[:, 4] = (changed[:, 4] + 1) % V  # a future token for positions 0..3
    other = model(changed)
    torch.testing.assert_close(other[:, :4], logits[:, :4])
    assert not torch.allclose(other[:, 4:], logits[:, 4:])
    with pytest.raises(ValueError, match="max_positions"):
        model(_tokens(t=25))


def test_tied_weights_and_init():
    model = _model(num_layers=4)
    assert model.num_layers == 4
    names = [n for n, _ in model.named_parameters()]
    assert not any("head" in n for n in names)  # the output projection is the embedding table itself
    logits = model(_tokens())
    (g,) = torch.autograd.grad(logits.sum(), [model.embed.weight])
    unused = torch.ones(V, dtype=torch.bool)
    unused[_tokens().unique()] = False
    assert g[unused].abs().sum() > 0  # tokens absent from the input still get the head's gradient
    assert model.blocks[0].fc2.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.15)
    assert model.blocks[0].fc1.weight.std().item() == pytest.approx(0.02, rel=0.15)


def reference(model: TransformerLM, tokens, k: int, m: int, layout: str):
    """The obvious forked forward: embedding, blocks below k on B rows, then the hidden states repeated by hand
    (repeat_interleave for adjacent copies, repeat for tiled), blocks k.. and the tied head on M·B rows."""
    t = tokens.size(1)
    x = model.embed(tokens)
    rotary = None
    if model.config.positions == "learned":
        x = x + model.pos_embed(torch.arange(t))[None]
    else:
        rotary = (model.rotary_cos[:t], model.rotary_sin[:t])
    x = model.dropout(x)
    for i, block in enumerate(model.blocks):
        if i == k:
            x = x.repeat_interleave(m, 0) if layout == "adjacent" else x.repeat(m, 1, 1)
        x = block(x, rotary)
    return model.norm(x) @ model.embed.weight.T


def _grads(model, logits):
    loss = (logits.log_softmax(-1) * torch.linspace(-1, 1, V)).sum()
    return loss.detach(), torch.autograd.grad(loss, list(model.parameters()))


@pytest.mark.parametrize("layout", ["adjacent", "tiled"])
@pytest.mark.parametrize("k", range(1, N))
def test_fork_equals_hand_written_repeat(k, layout):
    model = _model(dropout=0.3, positions="rotary" if k == 2 else "learned").train()
    tokens = _tokens()
    torch.manual_seed(5)
    ours = model(tokens, Fork(k, 3, layout))
    torch.manual_seed(5)
    ref = reference(model, tokens, k, 3, layout)
    assert ours.shape == (9, 7, V)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    (loss, grads), (ref_loss, ref_grads) = _grads(model, ours), _grads(model, ref)
    torch.testing.assert_close(loss, ref_loss)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
    copies = ours.view(3, 3, 7, V).transpose(0, 1) if layout == "adjacent" else ours.view(3, 3, 7, V)
    assert not torch.allclose(copies[:, 0], copies[:, 1])  # dropout above the fork tells the copies apart


@pytest.mark.parametrize("k", range(1, N))
def test_fork_without_dropout_repeats_m1(k):
    model = _model(dropout=0.0).train()
    tokens = _tokens()
    single = model(tokens)
    forked = model(tokens, Fork(k, 4, "adjacent"))
    torch.testing.assert_close(forked, single.repeat_interleave(4, 0))
    _, g1 = _grads(model, single)
    _, g4 = _grads(model, forked)
    for a, b in zip(g1, g4):
        torch.testing.assert_close(4 * a, b, rtol=1e-4, atol=1e-6)


def test_eval_is_deterministic_and_copies_equal_m1():
    model = _model(dropout=0.3).eval()
    tokens = _tokens()
    torch.testing.assert_close(model(tokens), model(tokens), rtol=0, atol=0)
    torch.testing.assert_close(model(tokens, Fork(1, 2, "tiled")), model(tokens).repeat(2, 1, 1))
    model.train()
    assert not torch.allclose(model(tokens), model(tokens))


def test_fork_refuses_the_head():
    with pytest.raises(ValueError, match="no block"):
        _model()(_tokens(), Fork(N, 2))


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_trains_on_a_repeating_sequence(positions):
    """A period-8 sequence (each token fixes the next): the loss falls from about log(V) to a fraction of a nat
    in 40 Adam steps."""
    model = _model(dropout=0.1, positions=positions, d_model=32, ffn_dim=64, num_layers=2).train()
    stream = torch.tensor([5, 1, 7, 3, 8, 2, 6, 4] * 4)
    rows = torch.stack([stream[i:i + 17] for i in range(8)])  # (8, 17): inputs and shifted targets
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        logits = model(rows[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, V), rows[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0.9 * math.log(V) and losses[-1] < 0.3, losses[::5]


def test_bf16_autocast_forward_is_finite():
    model = _model(dropout=0.1, positions="rotary").train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(_tokens(), Fork(1, 2))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    logits.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("field,value", [("d_model", 0), ("num_layers", 0), ("dropout", 1.0),
                                         ("attention_dropout", -0.1), ("positions", "alibi"), ("num_heads", 3),
                                         ("rotary_base", 1.0)])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(FieldError) as info:
        TransformerLMConfig(**{"d_model": 16, "num_heads": 2, field: value})
    assert info.value.field == field


def test_config_errors_other():
    with pytest.raises(FieldError, match="even head width") as info:
        TransformerLMConfig(d_model=6, num_heads=2, positions="rotary")
    assert info.value.field == "num_heads"
    with pytest.raises(TypeError):
        TransformerLM(V, TransformerLMConfig(), d_model=8)
    with pytest.raises(ValueError):
        TransformerLM(0, d_model=16, num_heads=2)


# -- sliding-window perplexity -----------------------------------------------------------------------------------
def slow_strided_nll(model, tokens, context, stride):
    """The HF docs' loop verbatim in spirit: one window at a time, targets already scored masked out."""
    scored_at = torch.zeros(tokens.numel(), dtype=torch.long)
    per_position = torch.full((tokens.numel(),), float("nan"), dtype=torch.float64)
    nll, prev_end, last = 0.0, 0, tokens.numel() - 1
    for begin in range(0, last, stride):
        end = min(begin + context, last)
        new = end - prev_end
        logits = model(tokens[None, begin:end])[0]
        token_nll = F.cross_entropy(logits, tokens[begin + 1:end + 1], reduction="none")
        nll += token_nll[-new:].sum().item()
        scored_at[end + 1 - new:end + 1] += 1
        per_position[end + 1 - new:end + 1] = token_nll[-new:].double()
        prev_end = end
        if end == last:
            break
    assert scored_at[0] == 0 and (scored_at[1:] == 1).all()  # every token after the first scored exactly once
    return nll, per_position


@pytest.mark.parametrize("length,context,stride,batch", [(50, 8, 8, 3), (50, 8, 3, 2), (51, 8, 1, 16),
                                                         (9, 16, 4, 4), (20, 19, 19, 1)])
def test_sliding_window_equals_the_slow_loop(length, context, stride, batch):
    model = _model(dropout=0.3, max_positions=24).train()
    tokens = torch.randint(0, V, (length,), generator=torch.Generator().manual_seed(2))
    token_nll = torch.full((length,), float("nan"), dtype=torch.float64)
    nll, scored = sliding_window_nll(model, tokens, context, stride, batch, token_nll)
    assert model.training  # restored
    assert scored == length - 1
    with torch.no_grad():
        expected, per_position = slow_strided_nll(model.eval(), tokens, context, stride)
    assert nll == pytest.approx(expected, rel=1e-5)
    assert torch.isnan(token_nll[0]) and torch.allclose(token_nll[1:], per_position[1:], rtol=1e-5, atol=1e-6)


def test_sliding_window_full_context_and_context_free_model():
    model = _model().eval()
    tokens = torch.randint(0, V, (20,), generator=torch.Generator().manual_seed(3))
    nll, scored = sliding_window_nll(model, tokens, 24, 24, 4)  # stride = context >= L: one window, full context
    with torch.no_grad():
        full = F.cross_entropy(model(tokens[None, :-1])[0], tokens[1:], reduction="sum").item()
    assert scored == 19 and nll == pytest.approx(full, rel=1e-6)

    class Bigram(torch.nn.Module):  # logits depend on the current token only: any windowing gives the same sum
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Embedding(V, V)

        def forward(self, x):
            return self.table(x)

    bigram = Bigram()
    whole = F.cross_entropy(bigram(tokens[:-1]), tokens[1:], reduction="sum").item()
    for context, stride in [(5, 5), (5, 2), (7, 1), (3, 3)]:
        nll, scored = sliding_window_nll(bigram, tokens, context, stride, 2)
        assert scored == 19 and nll == pytest.approx(whole, rel=1e-6)
    for bad in [dict(context=4, stride=5), dict(context=0, stride=1), dict(context=4, stride=0)]:
        with pytest.raises(ValueError):
            sliding_window_nll(bigram, tokens, batch_size=1, **bad)
    with pytest.raises(ValueError):
        sliding_window_nll(bigram, tokens[:1], 4, 4, 1)
