"""CopyLayout against slow, obvious references: every row of an expanded batch is written out as (sample, copy)
by a Python loop, and each method must agree with that list (expand, copies view and back, copy of each row, rows
of a copy, sample chunks); and the errors."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqba.layout import LAYOUTS, CopyLayout


def slow_rows(samples: int, repeats: int, kind: str) -> list[tuple[int, int]]:
    """Reference: (sample, copy) of every row, in row order: sample-major (adjacent) or copy-major (tiled)."""
    if kind == "adjacent":
        return [(b, c) for b in range(samples) for c in range(repeats)]
    return [(b, c) for c in range(repeats) for b in range(samples)]


def slow_chunks(samples: int, repeats: int, kind: str, chunks: int) -> list[list[int]]:
    """Reference: samples split into ``chunks`` near-equal consecutive parts (the first ones one larger), each part
    with every copy of its samples, rows in the batch's order; empty parts dropped."""
    rows = slow_rows(samples, repeats, kind)
    parts = min(chunks, max(samples, 1))
    out = []
    for i in range(parts):
        size, extra = divmod(samples, parts)
        lo = i * size + min(i, extra)
        part = range(lo, lo + size + (i < extra))
        if len(part):
            out.append([r for r, (b, _) in enumerate(rows) if b in part])
    return out


layouts = st.builds(CopyLayout, st.integers(1, 5), st.sampled_from(LAYOUTS))


@settings(max_examples=80, deadline=None)
@given(layouts, st.integers(0, 7))
def test_expand_and_copy_of_rows_match_the_row_list(layout, samples):
    rows = slow_rows(samples, layout.repeats, layout.kind)
    indices = np.arange(samples) * 10
    assert layout.expand_indices(indices).tolist() == [10 * b for b, _ in rows]
    x = torch.arange(samples * 3).view(samples, 3)
    assert layout.expand(x).tolist() == [x[b].tolist() for b, _ in rows]
    assert layout.copy_of_rows(len(rows)).tolist() == [c for _, c in rows]
    assert layout.copy_of_rows(len(rows)).dtype == torch.int64
    assert layout.samples(len(rows)) == samples


@settings(max_examples=80, deadline=None)
@given(layouts, st.integers(1, 7), st.data())
def test_copies_view_and_rows_of_copy(layout, samples, data):
    rows = slow_rows(samples, layout.repeats, layout.kind)
    y = torch.randn(len(rows), 2)
    view = layout.copies(y)
    assert view.shape == (layout.repeats, samples, 2)
    for r, (b, c) in enumerate(rows):
        assert torch.equal(view[c, b], y[r])
    assert torch.equal(layout.rows(view), y)
    copy = data.draw(st.integers(0, layout.repeats - 1))
    assert layout.rows_of_copy(copy, len(rows)).tolist() == [r for r, (_, c) in enumerate(rows) if c == copy]
    assert torch.equal(y[layout.rows_of_copy(copy, len(rows))], view[copy])


@settings(max_examples=80, deadline=None)
@given(layouts, st.integers(0, 9), st.integers(1, 12))
def test_sample_chunks_match_reference(layout, samples, chunks):
    got = layout.sample_chunks(samples * layout.repeats, chunks)
    assert [g.tolist() for g in got] == slow_chunks(samples, layout.repeats, layout.kind, chunks)
    assert all(g.dtype == torch.int64 for g in got)
    assert sorted(r for g in got for r in g.tolist()) == list(range(samples * layout.repeats))


@settings(max_examples=40, deadline=None)
@given(layouts, st.lists(st.integers(1, 3), min_size=1, max_size=3), st.data())
def test_expand_any_dim_is_inverted_by_copies(layout, shape, data):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = torch.randn(*shape)
    expanded = layout.expand(x, dim)
    back = layout.copies(expanded.movedim(dim, 0))  # (M, B, ...)
    for c in range(layout.repeats):
        assert torch.equal(back[c], x.movedim(dim, 0))


def test_a_nested_batch_expands_with_its_counts():
    batch = {"x": torch.arange(3), "ntokens": 7, "name": "b", "pair": (torch.ones(3, 1), torch.tensor(2.0))}
    out = CopyLayout(2, "tiled").expand_batch(batch)
    assert out["x"].tolist() == [0, 1, 2, 0, 1, 2] and out["ntokens"] == 14 and out["name"] == "b"
    assert out["pair"][0].shape == (6, 1) and out["pair"][1].dim() == 0
    assert CopyLayout(1).expand_batch(batch) is batch


@pytest.mark.parametrize("repeats, kind, match", [
    (0, "adjacent", "repeats"), (True, "adjacent", "repeats"), (2.0, "tiled", "repeats"), (2, "interleaved", "layout"),
])
def test_bad_layouts_are_refused(repeats, kind, match):
    with pytest.raises(ValueError, match=match):
        CopyLayout(repeats, kind)


def test_errors_name_the_problem():
    layout = CopyLayout(3, "tiled")
    assert CopyLayout(np.int64(2)).repeats == 2 and type(CopyLayout(np.int64(2)).repeats) is int
    for call in (lambda: layout.copy_of_rows(10), lambda: layout.sample_chunks(10, 2), lambda: layout.samples(10),
                 lambda: layout.copies(torch.zeros(10, 2)), lambda: layout.copies(torch.tensor(1.0))):
        with pytest.raises(ValueError, match="multiple"):
            call()
    with pytest.raises(ValueError, match="copy must be in 0 .. 2"):
        layout.rows_of_copy(3, 6)
    with pytest.raises(ValueError, match=r"dim=2.*\(6, 2\)"):
        layout.expand(torch.zeros(6, 2), dim=2)
    with pytest.raises(ValueError, match="dim must be an int"):
        layout.expand_batch(torch.zeros(2), dim=True)
