"""consistency_loss against explicit loops over samples, positions and copy pairs; R-Drop at M = 2 as fairseq
writes it; the alpha correspondence; gradients; errors. copies_view as the inverse of repeat_batch. The kinds as
components: the registry, ConsistencyTerm (what the tasks call), a test-only kind registered in one place."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from seqba.config import BAConfig, from_dict
from seqba.consistency import (CONSISTENCY, ConsistencyKind, ConsistencyTerm, consistency_kind,
                               register_consistency)
from seqba.errors import ConfigError
from seqba.layout import CopyLayout
from seqba.losses import CONSISTENCY_KINDS, consistency_loss, copies_view, label_smoothed_nll_loss
from seqba.repeat import LAYOUTS, repeat_batch

PAD = 0


def row(layout, sample, copy, batch, repeats):
    return sample * repeats + copy if layout == "adjacent" else copy * batch + sample


def kl(p_log, q_log):
    """KL(p‖q) of two (V,) log-probability vectors, by F.kl_div (input = log q, target = log p)."""
    return F.kl_div(q_log, p_log, log_target=True, reduction="sum")


def reference(lprobs, repeats, layout, pad_mask, kind):
    """The definition, one sample, position and pair at a time."""
    batch = lprobs.size(0) // repeats
    flat = lprobs.reshape(lprobs.size(0), -1, lprobs.size(-1))  # (M·B, positions, V)
    mask = None if pad_mask is None else pad_mask.reshape(pad_mask.size(0), -1)
    total = lprobs.new_zeros(())
    for b in range(batch):
        for t in range(flat.size(1)):
            if mask is not None and mask[row(layout, b, 0, batch, repeats), t]:
                continue
            copies = [flat[row(layout, b, c, batch, repeats), t] for c in range(repeats)]
            if kind == "sym_kl":
                pairs = list(itertools.combinations(copies, 2))
                total = total + sum(0.5 * (kl(p, q) + kl(q, p)) for p, q in pairs) / len(pairs)
            else:
                mixture = torch.stack([c.exp() for c in copies]).mean(0).log()
                total = total + sum(kl(c, mixture) for c in copies) / repeats
    return total


def make_batch(repeats, batch, positions, vocab, layout, seed, pad=True, dtype=torch.float64):
    """Random (M·B, *positions, V) log-probs, and a padding mask shared by the copies (or None)."""
    g = torch.Generator().manual_seed(seed)
    lprobs = (2 * torch.randn(repeats * batch, *positions, vocab, generator=g, dtype=dtype)).log_softmax(-1)
    if not pad:
        return lprobs, None
    distinct = torch.rand(batch, *positions, generator=g) < 0.3
    return lprobs, repeat_batch(distinct, repeats, layout)


@pytest.mark.parametrize("kind", CONSISTENCY_KINDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("repeats", [2, 3, 4, 8])
@pytest.mark.parametrize(
    "positions, pad", [((), False), ((5,), False), ((5,), True)], ids=["image", "text", "text-padded"]
)
def test_matches_explicit_loops(kind, layout, repeats, positions, pad):
    lprobs, mask = make_batch(repeats, 3, positions, 7, layout, seed=repeats, pad=pad)
    got = consistency_loss(lprobs, repeats, layout=layout, pad_mask=mask, kind=kind)
    assert got.dim() == 0
    torch.testing.assert_close(got, reference(lprobs, repeats, layout, mask, kind))


@pytest.mark.parametrize("repeats", [2, 3, 4, 8])
def test_pairwise_identity(repeats):
    """Σ_{i<j} ½(KL_ij + KL_ji) = ½[M Σ_i Σ_v p_i l_i - Σ_v (Σ_i p_i)(Σ_j l_j)] at every position."""
    lprobs, _ = make_batch(repeats, 1, (6,), 9, "tiled", seed=10 + repeats, pad=False)
    lp = lprobs.view(repeats, 6, 9)
    pairs = sum(0.5 * (kl(lp[i, t], lp[j, t]) + kl(lp[j, t], lp[i, t]))
                for i, j in itertools.combinations(range(repeats), 2) for t in range(6))
    p = lp.exp()
    closed = 0.5 * (repeats * (p * lp).sum() - (p.sum(0) * lp.sum(0)).sum())
    torch.testing.assert_close(closed, pairs)
    mean_pairs = pairs / (repeats * (repeats - 1) / 2)
    torch.testing.assert_close(consistency_loss(lprobs, repeats, layout="tiled"), mean_pairs)


@settings(max_examples=40, deadline=None)
@given(
    repeats=st.integers(2, 5),
    batch=st.integers(1, 3),
    positions=st.lists(st.integers(1, 3), max_size=2).map(tuple),
    vocab=st.integers(2, 6),
    layout=st.sampled_from(LAYOUTS),
    kind=st.sampled_from(CONSISTENCY_KINDS),
    pad=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_match_reference(repeats, batch, positions, vocab, layout, kind, pad, seed):
    pad = pad and bool(positions)
    lprobs, mask = make_batch(repeats, batch, positions, vocab, layout, seed, pad=pad)
    got = consistency_loss(lprobs, repeats, layout=layout, pad_mask=mask, kind=kind)
    torch.testing.assert_close(got, reference(lprobs, repeats, layout, mask, kind))
    assert got.item() >= -1e-12
    if kind == "js":  # the JS divergence of M distributions is at most log M
        kept = lprobs[..., 0].numel() // repeats - (0 if mask is None else int(mask.sum()) // repeats)
        assert got.item() <= math.log(repeats) * kept + 1e-9


@pytest.mark.parametrize("kind", CONSISTENCY_KINDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_order_of_copies_does_not_matter(kind, layout):
    lprobs, mask = make_batch(4, 3, (5,), 7, layout, seed=3)
    shuffled = copies_view(lprobs, 4, layout)[torch.tensor([2, 0, 3, 1])]  # (M, B, T, V), copies permuted
    shuffled = shuffled.transpose(0, 1) if layout == "adjacent" else shuffled
    shuffled = shuffled.reshape(lprobs.shape)
    torch.testing.assert_close(
        consistency_loss(shuffled, 4, layout=layout, pad_mask=mask, kind=kind),
        consistency_loss(lprobs, 4, layout=layout, pad_mask=mask, kind=kind),
    )


@pytest.mark.parametrize("kind", CONSISTENCY_KINDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_identical_copies_give_zero(kind, layout):
    distinct, _ = make_batch(1, 3, (5,), 11, layout, seed=4, pad=False, dtype=torch.float32)
    loss = consistency_loss(repeat_batch(distinct, 4, layout), 4, layout=layout, kind=kind)
    torch.testing.assert_close(loss, torch.tensor(0.0), atol=1e-5, rtol=0)


def test_padding_removes_positions_and_their_gradient():
    lprobs, mask = make_batch(3, 2, (6,), 5, "adjacent", seed=5)
    lprobs.requires_grad_(True)
    consistency_loss(lprobs, 3, pad_mask=mask).backward()
    assert lprobs.grad[mask].abs().max() == 0
    assert lprobs.grad[~mask].abs().sum(-1).min() > 0
    # masked positions' values do not matter, even when they are garbage
    scrambled = lprobs.detach().clone()
    scrambled[mask] = torch.randn(int(mask.sum()), 5, dtype=scrambled.dtype).log_softmax(-1)
    torch.testing.assert_close(consistency_loss(scrambled, 3, pad_mask=mask), consistency_loss(lprobs, 3, pad_mask=mask))


def test_first_copy_mask_is_used():
    lprobs, mask = make_batch(2, 2, (4,), 5, "tiled", seed=6)
    other = mask.clone()
    other[2:] = ~other[2:]  # second copy's mask differs: documented to be ignored
    assert consistency_loss(lprobs, 2, layout="tiled", pad_mask=other) == consistency_loss(
        lprobs, 2, layout="tiled", pad_mask=mask
    )


@pytest.mark.parametrize("kind", CONSISTENCY_KINDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcheck(kind, layout):
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(3 * 2, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    mask = repeat_batch(torch.tensor([[False, True], [False, False]]), 3, layout)

    def fn(x):
        return consistency_loss(x.log_softmax(-1), 3, layout=layout, pad_mask=mask, kind=kind)

    assert torch.autograd.gradcheck(fn, (logits,))


def fairseq_compute_kl_loss(lprobs, pad_mask):
    """fairseq ``compute_kl_loss`` (R-Drop), reduce=True: lprobs (2·B, T, V) with the copies as halves."""
    net_prob = lprobs.view(-1, lprobs.size(-1))
    net_prob_tec = lprobs.exp().view(-1, lprobs.size(-1))
    p, q = torch.split(net_prob, net_prob.size(0) // 2, dim=0)
    p_tec, q_tec = torch.split(net_prob_tec, net_prob_tec.size(0) // 2, dim=0)
    p_loss = F.kl_div(p, q_tec, reduction="none")
    q_loss = F.kl_div(q, p_tec, reduction="none")
    p_loss = p_loss.masked_fill(pad_mask, 0.0)
    q_loss = q_loss.masked_fill(pad_mask, 0.0)
    return (p_loss.sum() + q_loss.sum()) / 2


def rdrop_batch(seed, batch=3, length=6, vocab=9):
    """A target of B sentences with padding, and R-Drop's doubled batch of log-probs (copies as halves)."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(1, vocab, (batch, length), generator=g)
    target[0, 4:] = PAD
    target[2, 2:] = PAD
    lprobs = torch.randn(2 * batch, length, vocab, generator=g, dtype=torch.float64).log_softmax(-1)
    return target, lprobs


def test_matches_rdrop_at_two_copies():
    target, lprobs = rdrop_batch(8)
    pad_mask = target.eq(PAD)
    ours = consistency_loss(lprobs, 2, layout="tiled", pad_mask=repeat_batch(pad_mask, 2, "tiled"))
    torch.testing.assert_close(ours, fairseq_compute_kl_loss(lprobs, pad_mask.reshape(-1, 1)))


@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_alpha_correspondence_with_rdrop_total_loss(epsilon):
    """fairseq: (CE over both copies + reg_alpha · KL) / ntokens, ntokens un-doubled. seqba, with
    consistency_alpha = (M / 2) · reg_alpha = reg_alpha: (CE over the M·B rows + alpha · C) / (M · ntokens):
    the same loss divided by M = 2."""
    reg_alpha = 5.0
    target, lprobs = rdrop_batch(9)
    ntokens = int(target.ne(PAD).sum())
    doubled_target = torch.cat([target, target.clone()], dim=0)  # fairseq get_lprobs_and_target
    ce_sum, _ = label_smoothed_nll_loss(lprobs.view(-1, 9), doubled_target.view(-1), epsilon, ignore_index=PAD)
    pad_mask = doubled_target[: doubled_target.size(0) // 2].reshape(-1, 1).eq(PAD)
    fairseq_loss = (ce_sum + reg_alpha * fairseq_compute_kl_loss(lprobs, pad_mask)) / ntokens

    repeats = 2
    expanded_target = repeat_batch(target, repeats, "tiled")
    ce, _ = label_smoothed_nll_loss(lprobs, expanded_target, epsilon, ignore_index=PAD)
    alpha = repeats / 2 * reg_alpha
    term = consistency_loss(lprobs, repeats, layout="tiled", pad_mask=expanded_target.eq(PAD))
    seqba_loss = (ce + alpha * term) / (repeats * ntokens)
    torch.testing.assert_close(repeats * seqba_loss, fairseq_loss)


@pytest.mark.parametrize("repeats", [2, 4])
def test_alpha_rule_keeps_rdrop_balance_per_token(repeats):
    """With alpha = (M / 2) · reg_alpha, seqba's loss is, per distinct token, the copies' mean CE plus
    reg_alpha / 2 times the mean pairwise symmetric KL: R-Drop's per-token objective (halved) at any M."""
    reg_alpha = 3.0
    g = torch.Generator().manual_seed(11)
    batch, vocab = 4, 6
    target = torch.randint(0, vocab, (batch,), generator=g)
    lprobs = torch.randn(repeats * batch, vocab, generator=g, dtype=torch.float64).log_softmax(-1)
    ce, _ = label_smoothed_nll_loss(lprobs, repeat_batch(target, repeats, "adjacent"), 0.0, ignore_index=None)
    seqba_loss = (ce + repeats / 2 * reg_alpha * consistency_loss(lprobs, repeats)) / (repeats * batch)
    per_token = []
    for b in range(batch):
        copies = lprobs[b * repeats:(b + 1) * repeats]
        mean_ce = -copies[:, target[b]].mean()
        pairs = [0.5 * (kl(copies[i], copies[j]) + kl(copies[j], copies[i]))
                 for i, j in itertools.combinations(range(repeats), 2)]
        per_token.append(mean_ce + reg_alpha / 2 * sum(pairs) / len(pairs))
    torch.testing.assert_close(seqba_loss, torch.stack(per_token).mean())


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("repeats", [1, 3])
def test_copies_view_inverts_repeat_batch(layout, repeats):
    x = torch.arange(4 * 5).view(4, 5)
    view = copies_view(repeat_batch(x, repeats, layout), repeats, layout)
    assert view.shape == (repeats, 4, 5)
    for c in range(repeats):
        assert torch.equal(view[c], x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(repeats=3), "multiple of repeats"),
        (dict(repeats=1), "int >= 2"),
        (dict(repeats=True), "int >= 2"),
        (dict(repeats=2.0), "int >= 2"),
        (dict(repeats=2, kind="kl"), "kind"),
        (dict(repeats=2, layout="interleaved"), "layout"),
        (dict(repeats=2, pad_mask=torch.zeros(4, 6, dtype=torch.bool)), "pad_mask"),
        (dict(repeats=2, pad_mask=torch.zeros(4, 5, dtype=torch.bool)[:, :, None]), "pad_mask"),
        (dict(repeats=2, pad_mask=torch.zeros(4, 5)), "pad_mask"),
    ],
)
def test_errors(kwargs, match):
    lprobs = torch.randn(4, 5, 7).log_softmax(-1)
    repeats = kwargs.pop("repeats")
    with pytest.raises(ValueError, match=match):
        consistency_loss(lprobs, repeats, **kwargs)


def test_errors_on_flat_lprobs():
    with pytest.raises(ValueError, match="M·B, ..., V"):
        consistency_loss(torch.randn(4).log_softmax(-1), 2)


@pytest.mark.parametrize("kind", CONSISTENCY_KINDS)
def test_underflowing_probabilities_stay_finite(kind):
    """float32 entries whose probability underflows to 0 in every copy (log p = -200 or -1e4) add nothing and
    give no NaN; the result matches float64."""
    lprobs, _ = make_batch(3, 2, (4,), 6, "tiled", seed=12, pad=False)
    lprobs = torch.cat([lprobs, torch.full((6, 4, 2), -200.0, dtype=lprobs.dtype)], dim=-1)
    lprobs[..., -1] = -1e4
    lprobs[0, 0, -2] = -150.0  # underflows in one copy only
    lprobs32 = lprobs.float().requires_grad_(True)
    loss = consistency_loss(lprobs32, 3, layout="tiled", kind=kind)
    loss.backward()
    assert torch.isfinite(lprobs32.grad).all()
    torch.testing.assert_close(loss.double(), consistency_loss(lprobs, 3, layout="tiled", kind=kind))


@pytest.mark.parametrize("kind", CONSISTENCY_KINDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradient_matches_autograd_through_reference(kind, layout):
    """The written-out backward equals autograd through the explicit loops, padding included."""
    lprobs, mask = make_batch(3, 2, (4,), 6, layout, seed=13)
    ours = lprobs.clone().requires_grad_(True)
    ref = lprobs.clone().requires_grad_(True)
    consistency_loss(ours, 3, layout=layout, pad_mask=mask, kind=kind).backward()
    reference(ref, 3, layout, mask, kind).backward()
    torch.testing.assert_close(ours.grad, ref.grad)


# -- components ----------------------------------------------------------------------------------------------


def test_registry_is_the_config_choices():
    assert tuple(CONSISTENCY) == CONSISTENCY_KINDS == ("sym_kl", "js")
    with pytest.raises(ConfigError, match="ba.consistency: 'kl' is not one of none, sym_kl, js"):
        from_dict(BAConfig, {"consistency": "kl"}, path=("ba",))
    with pytest.raises(ValueError, match=r"kind must be one of \('sym_kl', 'js'\), got 'kl'"):
        ConsistencyTerm("kl", 1.0)
    with pytest.raises(ValueError, match="already registered"):
        register_consistency("js")(ConsistencyKind)


@pytest.fixture
def mse_kind():
    """A test-only kind: one class and one registration (a SimCSE-style term on hidden states), removed after."""

    @register_consistency("mse_test")
    class MSE(ConsistencyKind):
        def forward(self, copies):  # (M, B, ..., D) -> (B, ...): mean squared distance to the copies' mean
            return (copies - copies.mean(0)).pow(2).sum(-1).mean(0)

    yield MSE
    del CONSISTENCY["mse_test"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_new_kind_is_one_class_and_one_registration(mse_kind, layout):
    cfg = from_dict(BAConfig, {"repeats": 3, "layout": layout, "consistency": "mse_test", "consistency_alpha": 2.0})
    term = ConsistencyTerm.from_config(cfg)
    assert isinstance(term.kind, mse_kind)
    hidden = torch.randn(3 * 4, 5, 8, dtype=torch.float64, requires_grad=True)  # (M·B, T, D)
    pad = repeat_batch(torch.rand(4, 5) < 0.3, 3, layout)
    got = term(hidden, pad)
    expected = hidden.new_zeros(())
    for b in range(4):  # slow: one sample and position at a time
        for t in range(5):
            rows = [row(layout, b, c, 4, 3) for c in range(3)]
            if not pad[rows[0], t]:
                h = hidden[rows, t]  # (M, D)
                expected = expected + (h - h.mean(0)).pow(2).sum(-1).mean()
    torch.testing.assert_close(got, expected)
    torch.autograd.gradcheck(lambda x: term(x, pad), (hidden,))


def test_unregistered_kind_is_refused_by_the_config(mse_kind):
    del CONSISTENCY["mse_test"]
    with pytest.raises(ConfigError, match="'mse_test' is not one of none, sym_kl, js"):
        from_dict(BAConfig, {"consistency": "mse_test"})
    CONSISTENCY["mse_test"] = mse_kind  # for the fixture's teardown


@pytest.mark.parametrize("kind", CONSISTENCY_KINDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_term_adds_alpha_times_the_function_and_logs_it(kind, layout):
    """What a task gets from ConsistencyTerm.add is bit for bit what it computed with consistency_loss."""
    lprobs, mask = make_batch(4, 3, (5,), 7, layout, seed=21)
    loss = lprobs.sum() * 0.5
    term = ConsistencyTerm(kind, 2.5, CopyLayout(4, layout))
    logs = {}
    got = term.add(loss, logs, lprobs, mask)
    function = consistency_loss(lprobs, 4, layout=layout, pad_mask=mask, kind=kind)
    assert torch.equal(got, loss + 2.5 * function)
    assert torch.equal(logs["consistency_sum"], function * 4)
    per_call = ConsistencyTerm(kind, 2.5)  # copies that change per batch: the layout comes with the call
    assert torch.equal(per_call(lprobs, mask, layout=CopyLayout(4, layout)), function)
    with pytest.raises(ValueError, match="no copy layout"):
        per_call(lprobs, mask)
    with pytest.raises(ValueError, match="repeats >= 2"):
        per_call(lprobs, mask, layout=CopyLayout(1, layout))


def test_from_config_without_consistency_is_none():
    assert ConsistencyTerm.from_config(BAConfig(repeats=2)) is None


@pytest.mark.parametrize("name", CONSISTENCY_KINDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_hand_written_backward_equals_autograd_of_forward(name, layout):
    """Each shipped kind's backward against autograd through the same kind's forward (the generic path a kind
    without a backward takes)."""
    kind = consistency_kind(name)
    lprobs, mask = make_batch(3, 4, (6,), 9, layout, seed=22)
    copy_layout = CopyLayout(3, layout)
    keep = ~copy_layout.copies(mask)[0]
    ours = lprobs.clone().requires_grad_(True)
    auto = lprobs.clone().requires_grad_(True)
    kind(ours, copy_layout, mask).backward()
    ConsistencyKind.total(kind, auto, copy_layout, keep).backward()
    torch.testing.assert_close(ours.grad, auto.grad)
