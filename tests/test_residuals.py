"""What the backward pass keeps: arrays of the input's size held by the function jax.vjp
returns (the same count jax.ad_checkpoint.print_saved_residuals reports)."""

import jax
import jax.ad_checkpoint
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrelax

SHAPE = (8, 16)
BROADCAST_MASK = jnp.arange(16)[None, :] % 5 != 0  # (1, 16): a copy at (8, 16) would count
FULL_MASK = jnp.broadcast_to(BROADCAST_MASK, SHAPE)


def _input_sized(fn, x):
    _, vjp = jax.vjp(fn, x)
    return sum(int(np.size(leaf) >= x.size) for leaf in jax.tree_util.tree_leaves(vjp))


@pytest.mark.parametrize(
    "fn, expected",
    [
        (lambda x: jaxrelax.softmax(x, temperature=0.5), 1),
        (lambda x: jaxrelax.softmax(x, temperature=0.5, where=BROADCAST_MASK), 1),
        (lambda x: jaxrelax.st_hardmax(x, temperature=0.5), 1),
        (lambda x: jaxrelax.st_hardmax(x, temperature=0.5, where=BROADCAST_MASK), 1),
        # a boolean array: the entries that take part (not masked, not -inf)
        (lambda x: jaxrelax.st_hardmax(x, backward="identity"), 1),
        (lambda x: jaxrelax.st_hardmax(x, backward="identity", where=BROADCAST_MASK), 1),
        (lambda x: jaxrelax.smooth_max(x, temperature=0.5), 1),
        (lambda x: jaxrelax.smooth_max(x, temperature=0.5, method="softmax"), 1),
        (lambda x: jaxrelax.soft_argmax(x, temperature=0.5), 1),
        (lambda x: jaxrelax.st_argmax(x, temperature=0.5), 1),
        (lambda x: jaxrelax.st_max(x, temperature=0.5), 1),
        (lambda x: jaxrelax.hardmax(x), 0),
        (lambda x: jaxrelax.gumbel_softmax(jax.random.key(0), x, hard=True), 1),
        (lambda x: jaxrelax.gumbel_softmax(jax.random.key(0), x), 1),
        (lambda x: jaxrelax.binary_concrete(jax.random.key(0), x, hard=True), 1),
        (lambda x: jaxrelax.sparsemax(x, temperature=0.5), 1),
        (lambda x: jaxrelax.entmax15(x, temperature=0.5, where=BROADCAST_MASK), 1),
        (lambda x: jaxrelax.entmax(x, 1.3, temperature=0.5), 1),
        (lambda x: jaxrelax.topk_mask(x, 3), 0),
        (lambda x: jaxrelax.soft_topk(x, 3, temperature=0.5, where=BROADCAST_MASK), 1),
        (lambda x: jaxrelax.sparse_topk(x, 3.5, temperature=0.5), 1),
        (lambda x: jaxrelax.st_topk(x, 3, temperature=0.5), 1),
        (lambda x: jaxrelax.st_topk(x, 3, backward="sparse", where=BROADCAST_MASK), 1),
        (lambda x: jaxrelax.st_topk(x, 3, backward="identity"), 1),
        (lambda x: jaxrelax.gumbel_topk(jax.random.key(0), x, 3, hard=True), 1),
        (lambda x: jaxrelax.gumbel_topk(jax.random.key(0), x, 3), 1),
    ],
)
def test_saved_residuals(fn, expected):
    x = jnp.ones(SHAPE)
    assert _input_sized(fn, x) == expected


@pytest.mark.parametrize(
    "fn, expected",
    [
        (lambda x: jaxrelax.softmax(x, temperature=0.5, where=BROADCAST_MASK), 1),
        (lambda x: jaxrelax.st_hardmax(x, temperature=0.5, where=BROADCAST_MASK), 1),
        (lambda x: jaxrelax.st_hardmax(x, backward="identity"), 1),
    ],
)
def test_print_saved_residuals_agrees(fn, expected, capsys):
    jax.ad_checkpoint.print_saved_residuals(fn, jnp.ones(SHAPE))
    lines = capsys.readouterr().out.splitlines()
    assert sum("[8,16]" in line for line in lines) == expected, lines


def test_full_size_mask_is_kept_only_by_identity():
    x = jnp.ones(SHAPE)
    assert _input_sized(lambda x: jaxrelax.softmax(x, where=FULL_MASK), x) == 1
    # the identity surrogate must zero masked cotangents: one boolean array, mask included
    assert (
        _input_sized(lambda x: jaxrelax.st_hardmax(x, where=FULL_MASK, backward="identity"), x) == 1
    )


def test_traced_temperature_adds_no_input_sized_residual():
    x = jnp.ones(SHAPE)
    _, vjp = jax.vjp(lambda x, t: jaxrelax.st_hardmax(x, temperature=t), x, jnp.float32(0.5))
    sizes = sorted(np.size(leaf) for leaf in jax.tree_util.tree_leaves(vjp))
    assert sizes[-1] == x.size and sizes[-2] < x.size


def _kept(fn, x):
    """(input-sized, output-sized) arrays held by fn's VJP (the input-sized ones excluded from
    the second count)."""
    out = jax.eval_shape(fn, x)
    out_size = jax.tree_util.tree_leaves(out)[0].size
    _, vjp = jax.vjp(fn, x)
    sizes = [np.size(leaf) for leaf in jax.tree_util.tree_leaves(vjp)]
    return sum(s >= x.size for s in sizes), sum(out_size <= s < x.size for s in sizes)


@pytest.mark.parametrize(
    "fn, expected",
    [
        # the winners' offsets (int8), output-sized
        (lambda x: jaxrelax.max_pool(x, (3, 3), (2, 2), "SAME"), (0, 1)),
        (lambda x: jaxrelax.max_pool(x, (2, 2), (2, 2), return_indices=True)[0], (0, 1)),
        # the input, and per window: half the maximum, the normaliser, the mean shifted score
        (lambda x: jaxrelax.soft_pool(x, (3, 3), (2, 2), "SAME"), (1, 3)),
        (lambda x: jaxrelax.lse_pool(x, (2, 2), (2, 2)), (1, 3)),
        (lambda x: jaxrelax.st_max_pool(x, (2, 2), (2, 2)), (1, 3)),
    ],
)
def test_pooling_keeps_the_input_at_most(fn, expected):
    x = jnp.ones((2, 8, 8, 4))
    assert _kept(fn, x) == expected


def test_max_unpool_keeps_only_the_flat_indices():
    values, indices = jaxrelax.max_pool(jnp.ones((2, 8, 8, 4)), (2, 2), (2, 2), return_indices=True)
    _, vjp = jax.vjp(lambda v: jaxrelax.max_unpool(v, indices, (8, 8)), values)
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(vjp) if np.size(leaf) > 1]
    assert [np.size(leaf) for leaf in leaves] == [values.size]
    assert jnp.issubdtype(leaves[0].dtype, jnp.integer)
