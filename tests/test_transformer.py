"""Transformer: shapes, incremental decoding == full forward, padding invariance, parameter count."""

import pytest
import torch

from seqba.models.transformer import EncoderOut, Transformer, sinusoidal_table

V, PAD, BOS, EOS = 20, 0, 2, 3


def tiny(**kwargs) -> Transformer:
    torch.manual_seed(0)
    args = dict(d_model=16, ffn_dim=32, num_heads=2, encoder_layers=2, decoder_layers=2, max_positions=64)
    return Transformer(V, **(args | kwargs))


def batch(b=3, s=7, t=6, seed=1):
    """Right-padded sources ending in eos (lengths s, s-2, ...) and prev_output_tokens without padding."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (b, s), generator=g)
    lengths = torch.tensor([max(s - 2 * i, 1) for i in range(b)])
    for i, n in enumerate(lengths.tolist()):
        src[i, n - 1] = EOS
        src[i, n:] = PAD
    prev = torch.randint(4, V, (b, t), generator=g)
    prev[:, 0] = BOS
    return src, lengths, prev


def test_shapes_and_dtypes():
    model = tiny()
    src, lengths, prev = batch()
    enc = model.encode(src, lengths)
    assert isinstance(enc, EncoderOut)
    assert enc.out.shape == (3, 7, 16) and enc.padding_mask.dtype == torch.bool
    assert torch.equal(enc.padding_mask, src.eq(PAD))
    logits = model(src, lengths, prev)
    assert logits.shape == (3, 6, V) and logits.dtype == torch.float32


@pytest.mark.parametrize("normalize_before", [False, True])
def test_incremental_decoding_matches_full_forward(normalize_before):
    model = tiny(normalize_before=normalize_before).eval()
    src, lengths, prev = batch()
    with torch.no_grad():
        full = model(src, lengths, prev)
        enc = model.encode(src, lengths)
        cache = model.init_cache()
        steps = [model.decode(prev[:, t : t + 1], enc, cache) for t in range(prev.size(1))]
        # several tokens at once on a warm cache: prefix of 2, then chunks of 3 and 1
        cache2 = model.init_cache()
        chunks = [model.decode(prev[:, a:b], enc, cache2) for a, b in [(0, 2), (2, 5), (5, 6)]]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=0)
    assert cache.length == prev.size(1) and cache.self_attn[0].k.shape == (3, 2, 6, 8)


def test_reorder_cache_matches_reordered_inputs():
    model = tiny().eval()
    src, lengths, prev = batch()
    order = torch.tensor([2, 0, 0, 1])
    with torch.no_grad():
        enc = model.encode(src, lengths)
        cache = model.init_cache()
        model.decode(prev[:, :3], enc, cache)
        model.reorder_cache(cache, order)
        got = model.decode(prev[order, 3:4], model.reorder_encoder_out(enc, order), cache)
        want = model(src[order], lengths[order], prev[order, :4])[:, 3:4]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_padding_does_not_change_outputs():
    model = tiny().eval()
    src, lengths, prev = batch()
    with torch.no_grad():
        base = model(src, lengths, prev)
        # extra source padding
        src_padded = torch.cat([src, torch.full((3, 4), PAD)], dim=1)
        torch.testing.assert_close(model(src_padded, lengths, prev), base, atol=1e-5, rtol=0)
        # right-padded targets: real positions unchanged
        prev_padded = torch.cat([prev, torch.full((3, 2), PAD)], dim=1)
        torch.testing.assert_close(model(src, lengths, prev_padded)[:, :6], base, atol=1e-5, rtol=0)


def test_all_pad_source_row_gives_finite_outputs():
    model = tiny().eval()
    src, lengths, prev = batch()
    src[1] = PAD
    with torch.no_grad():
        assert model(src, lengths, prev).isfinite().all()


def test_backward_in_train_mode():
    model = tiny(attention_dropout=0.1, activation_dropout=0.1, normalize_before=True).train()
    src, lengths, prev = batch()
    model(src, lengths, prev).logsumexp(-1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.isfinite().all() for g in grads)


def test_embeddings_shared_and_initialized():
    model = tiny()
    assert model.encoder_embed is model.decoder_embed
    assert torch.all(model.decoder_embed.weight[PAD] == 0)
    separate = tiny(share_all_embeddings=False)
    assert separate.encoder_embed is not separate.decoder_embed
    table = sinusoidal_table(10, 7, PAD)
    assert table.shape == (10, 7) and torch.all(table[PAD] == 0) and torch.all(table[:, -1] == 0)


def test_sequence_longer_than_max_positions_raises():
    model = tiny(max_positions=5)
    src, lengths, prev = batch(s=7)
    with pytest.raises(ValueError, match="max_positions"):
        model.encode(src, lengths)


def test_base_parameter_count():
    with torch.device("meta"):
        post = Transformer(32000)
        pre = Transformer(32000, normalize_before=True)
    # 32000*512 shared embeddings + 6 * 3,152,384 (encoder layer) + 6 * 4,204,032 (decoder layer)
    assert sum(p.numel() for p in post.parameters()) == 60_522_496
    assert sum(p.numel() for p in pre.parameters()) == 60_522_496 + 2 * 2 * 512  # two final LayerNorms


def test_training_forward_is_one_graph_under_dynamic_shapes():
    """torch.compile(dynamic=True), as train.compile does, traces the teacher-forced forward into one graph for
    any batch shape: fullgraph=True raises on a graph break (a size-derived SymBool reaching SDPA's ``is_causal``
    once made dynamo skip the whole decoder). backend="eager" traces without generating kernels."""
    import torch._dynamo

    torch._dynamo.reset()
    model = tiny().train()
    compiled = torch.compile(model, dynamic=True, fullgraph=True, backend="eager")
    for b, s, t in ((3, 7, 6), (4, 9, 9), (2, 5, 11), (5, 6, 1)):
        src, lengths, prev = batch(b, s, t)
        assert compiled(src, lengths, prev).shape == (b, t, V)


def test_cpu_attention_in_bf16_runs_in_float32_even_under_autocast():
    import torch.nn.functional as F

    from seqba.models.transformer import attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 5, 8, generator=g).bfloat16() for _ in range(3))
    mask = torch.ones(3, 1, 1, 5, dtype=torch.bool)
    mask[0, ..., 3:] = False
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # would otherwise cast the float32 inputs back to bf16
        out = attention(q, k, v, mask, 0.0, False)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected)
    causal = attention(q.float(), k.float(), v.float(), None, 0.0, True)  # float32 goes to SDPA unchanged
    torch.testing.assert_close(causal, F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True))
