"""Bad input gets a clear error naming the argument.

The checks every function makes alike (its input, axis, mask, temperature, key) run over
the functions of tests/registry.py, in their standard call, as far as each takes the
argument (its registry properties); a variant (``ties=``, ``backward=``, ...) shares its
function's checks. A combinator that hands its input to functions of the user's
(``straight_through``, registry property ``checks=None``) checks none of it.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import registry

import jaxrelax

X = jnp.array([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]])
KEY = jax.random.key(0)
IMAGE = jnp.ones((2, 5, 4, 3))  # (batch, height, width, features)


def _functions(**properties):
    """The registry's functions (their standard calls) with these properties, that check
    their arguments."""
    return registry.select(variants=False, checks=lambda c: c is not None, **properties)


STANDARD = object()


def _call(name, x=STANDARD, *axis, **keywords):
    """The function's standard call on X (IMAGE for pooling), with k = 1 for the k-of-n
    functions (so that a 0-d input may take it)."""
    entry = registry.ENTRIES[name]
    if x is STANDARD:
        x = IMAGE if entry.input == registry.IMAGES else X
    if entry.k is not None:
        keywords.setdefault("k", 1)
    return entry(x, *axis, **keywords)


def _parameters(name):
    return inspect.signature(getattr(jaxrelax, registry.ENTRIES[name].name)).parameters


TEMPERED = _functions(temperature="temperature")
PER_SLICE_TEMPERATURE = _functions(temperature="temperature", input=registry.SLICES)
WITH_AXIS = _functions(axis=lambda a: a is not registry.NO_AXIS)
MASKED = _functions(where=True)
SAMPLED = _functions(sampled=True)
PERTURBED = _functions(temperature="sigma")


@pytest.mark.parametrize(
    "temperature", [0.0, -1.0, np.nan, np.inf, 1e-45, np.array([[1.0], [0.0]])]
)
@pytest.mark.parametrize("name", TEMPERED)
def test_bad_temperature(name, temperature):
    with pytest.raises(ValueError, match="temperature"):
        _call(name, temperature=temperature)


def test_bad_temperature_spatial():
    with pytest.raises(ValueError, match="temperature"):
        jaxrelax.spatial_soft_argmax(X, temperature=0.0, channel_axis=None)
    with pytest.raises(ValueError, match="temperature"):
        jaxrelax.spatial_soft_argmax(
            jnp.ones((2, 3, 4)), temperature=jnp.ones((2, 3, 1)), channel_axis=None
        )


@pytest.mark.parametrize("name", PER_SLICE_TEMPERATURE)
def test_temperature_shape(name):
    with pytest.raises(ValueError, match="temperature of shape"):
        _call(name, temperature=jnp.ones((2, 3)))  # not size 1 along the axis
    with pytest.raises(ValueError, match="temperature of shape"):
        _call(name, temperature=jnp.ones((3, 1)))  # does not broadcast
    with pytest.raises(TypeError, match="temperature"):
        _call(name, temperature=1j)


@pytest.mark.parametrize("name", _functions())
@pytest.mark.parametrize("bad", [X.astype(jnp.complex64), "scores", None, [[1.0, 2.0], [3.0]]])
def test_bad_x(name, bad):
    checked = registry.ENTRIES[name].checks  # how the errors name the input
    with pytest.raises(TypeError, match=f"{checked} must be an array of real numbers"):
        _call(name, bad)


@pytest.mark.parametrize("name", _functions(dtypes=lambda dtypes: "int32" not in dtypes))
def test_integer_input_where_only_floats_are_taken(name):
    checked = registry.ENTRIES[name].checks  # (the samplers: integer logits are an error)
    with pytest.raises(TypeError, match=f"{checked} must be a floating-point array"):
        _call(name, jnp.array([[1, 2, 3], [0, 1, 2]]))


@pytest.mark.parametrize("name", WITH_AXIS)
def test_scalar_x_needs_axis_none(name):
    checked = registry.ENTRIES[name].checks
    with pytest.raises(ValueError, match=f"axis -1 is out of range for {checked} with 0 dim"):
        _call(name, jnp.float32(1.0))
    assert np.isfinite(_call(name, jnp.float32(1.0), None))


@pytest.mark.parametrize("name", TEMPERED)
@pytest.mark.parametrize("temperature", [None, "hot", [[1.0], [2.0, 3.0]]])
def test_temperature_of_the_wrong_type(name, temperature):
    # raised at the call, not later under grad
    with pytest.raises(TypeError, match="temperature must be a real number"):
        _call(name, temperature=temperature)


@pytest.mark.parametrize("name", SAMPLED)
def test_bad_key(name):
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        _call(name, key=0)


@pytest.mark.parametrize("name", [n for n in _functions() if "labels" in _parameters(n)])
@pytest.mark.parametrize("labels", [None, "labels", [[1.0, 0.0, 0.0], [1.0]], X * 1j])
def test_bad_labels(name, labels):
    loss = getattr(jaxrelax, name)
    head = (KEY,) if registry.ENTRIES[name].sampled else ()
    with pytest.raises(TypeError, match="labels must be an array of real numbers"):
        loss(*head, X, labels)


@pytest.mark.parametrize("alpha", [None, "1.5", np.inf, np.nan, 0.5, jnp.array([[1.5], [0.9]])])
def test_bad_alpha(alpha):
    error = TypeError if alpha is None or isinstance(alpha, str) else ValueError
    with pytest.raises(error, match="alpha must be"):
        jaxrelax.entmax(X, alpha=alpha)
    with pytest.raises(error, match="alpha must be"):
        jaxrelax.entmax_loss(X, jnp.eye(3)[:2], alpha=alpha)


def test_spatial_names_heatmaps():
    with pytest.raises(ValueError, match="heatmaps must have at least 2 dimension"):
        jaxrelax.spatial_soft_argmax(jnp.ones(5), channel_axis=None)
    with pytest.raises(TypeError, match="heatmaps must be an array of real numbers"):
        jaxrelax.spatial_soft_argmax(None, channel_axis=None)
    with pytest.raises(ValueError, match="to heatmaps of shape"):
        jaxrelax.spatial_soft_argmax(
            jnp.ones((2, 3, 4)), temperature=jnp.ones((3, 1, 1)), channel_axis=None
        )


@pytest.mark.parametrize(
    "fn, flag",
    [
        (lambda v: jaxrelax.smooth_max(X, keepdims=v), "keepdims"),
        (lambda v: jaxrelax.st_max(X, keepdims=v), "keepdims"),
        (lambda v: jaxrelax.spatial_soft_argmax(X, normalized=v, channel_axis=None), "normalized"),
        (lambda v: jaxrelax.gumbel_softmax(jax.random.key(0), X, hard=v), "hard"),
        (lambda v: jaxrelax.binary_concrete(jax.random.key(0), X, hard=v), "hard"),
    ],
)
@pytest.mark.parametrize("value", ["yes", 1, None, jnp.array(True)])
def test_flags_must_be_bools(fn, flag, value):
    with pytest.raises(TypeError, match=f"{flag} must be a bool"):
        fn(value)
    assert fn(np.True_).shape == fn(True).shape


@pytest.mark.parametrize("num_samples", [0, -1, 1.5, True, None])
def test_bad_num_samples(num_samples):
    error = ValueError if num_samples in (0, -1) and num_samples is not True else TypeError
    with pytest.raises(error, match="num_samples"):
        jaxrelax.gumbel_rao(jax.random.key(0), X, num_samples=num_samples)
    assert jaxrelax.gumbel_rao(jax.random.key(0), X, num_samples=np.int64(3)).shape == X.shape


@pytest.mark.parametrize("name", WITH_AXIS)
def test_bad_axis(name):
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        _call(name, X, 2)
    with pytest.raises(ValueError, match="axis -3 is out of range"):
        _call(name, X, -3)
    with pytest.raises(TypeError, match="axis"):
        _call(name, X, 1.0)
    with pytest.raises(TypeError, match="axis"):
        _call(name, X, True)
    if registry.ENTRIES[name].axis == registry.ONE_AXIS:
        with pytest.raises(TypeError, match="axis must be a single int"):
            _call(name, X, (0, 1))
    else:
        with pytest.raises(ValueError, match="axis must not repeat"):
            _call(name, X, (1, -1))
        with pytest.raises(ValueError, match="axis must name at least one"):
            _call(name, X, ())


@pytest.mark.parametrize("name", MASKED)
def test_bad_mask(name):
    with pytest.raises(TypeError, match="where must be a boolean mask"):
        _call(name, where=jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="where of shape"):
        _call(name, where=jnp.ones((2,), bool))
    with pytest.raises(ValueError, match="where of shape"):
        _call(name, where=jnp.ones((1, 2, 3), bool))  # broadcasts, but not *to* x


def test_bad_choices():
    with pytest.raises(ValueError, match="ties must be one of"):
        jaxrelax.hardmax(X, ties="last")
    with pytest.raises(ValueError, match="ties must be one of"):
        jaxrelax.st_hardmax(X, ties=None)
    with pytest.raises(ValueError, match="method must be one of"):
        jaxrelax.smooth_max(X, method="mellowmax")
    with pytest.raises(ValueError, match="method must be one of"):
        jaxrelax.st_max(X, method="max")
    with pytest.raises(ValueError, match="backward must be one of"):
        jaxrelax.st_hardmax(X, backward="sparsemax")


# (the registry's k is an int where k must be a concrete integer, a float where it may be real)
INT_K = _functions(k=lambda k: isinstance(k, int))
REAL_K = _functions(k=lambda k: isinstance(k, float))


def _with_k(name):
    return lambda k: _call(name, k=k)


@pytest.mark.parametrize("name", INT_K)
def test_k_must_be_an_int_in_range(name):
    fn = _with_k(name)
    for k in [-1, 4]:
        with pytest.raises(ValueError, match=r"k must be .*in \[0, 3\]"):
            fn(k)
    for k in [1.5, 2.0, True, None, "2", jnp.array([1, 2])]:
        with pytest.raises(TypeError, match="k must be a concrete integer"):
            fn(k)
    with pytest.raises(TypeError, match="k must be a concrete integer"):
        jax.jit(fn)(2)  # traced
    assert fn(np.int64(2)).shape == fn(jnp.array(2)).shape == X.shape


@pytest.mark.parametrize("name", REAL_K)
def test_k_must_be_real_in_range(name):
    fn = _with_k(name)
    for k in [-0.5, 3.5, np.inf, np.nan, jnp.array([[1.0], [4.0]])]:
        with pytest.raises(ValueError, match=r"k must be in \[0, 3\]"):
            fn(k)
    for k in [None, "2", 1j]:
        with pytest.raises(TypeError, match="k must be a real number"):
            fn(k)
    with pytest.raises(ValueError, match="k of shape"):
        fn(jnp.ones((2, 3)))  # one k per slice has size 1 along the axis
    assert fn(jnp.array([[1.0], [2.5]])).shape == X.shape
    assert jax.jit(fn)(2.5).shape == X.shape  # traced: not checked


def test_bad_topk_choices():
    with pytest.raises(ValueError, match="ties must be one of"):
        jaxrelax.topk_mask(X, 2, ties="random")
    with pytest.raises(ValueError, match="ties must be one of"):
        jaxrelax.st_topk(X, 2, ties="last")
    with pytest.raises(ValueError, match="backward must be one of"):
        jaxrelax.st_topk(X, 2, backward="softmax")
    with pytest.raises(TypeError, match="hard must be a bool"):
        jaxrelax.gumbel_topk(jax.random.key(0), X, 2, hard="yes")
    with pytest.raises(TypeError, match="key must be"):
        jaxrelax.gumbel_topk(0, X, 2)
    with pytest.raises(TypeError, match="logits must be a floating-point array"):
        jaxrelax.gumbel_topk(jax.random.key(0), jnp.array([1, 2, 3]), 2)
    with pytest.raises(ValueError, match="temperature must be positive"):
        jaxrelax.gumbel_topk(jax.random.key(0), X, 2, temperature=0.0)
    with pytest.raises(ValueError, match="where of shape"):
        jaxrelax.gumbel_topk(jax.random.key(0), X, 2, where=jnp.ones((3, 2), bool))


# the pooling functions that take a window (max_unpool's, checked below, is max_pool's)
POOLS = [
    n
    for n in _functions(input=registry.IMAGES)
    if "window_shape" in _parameters(n) and "indices" not in _parameters(n)
]


@pytest.mark.parametrize("name", POOLS)
def test_bad_pooling_geometry(name):
    pool = getattr(jaxrelax, name)
    for window, error in [
        ((2, 0), ValueError),  # zero
        ((2, -1), ValueError),  # negative
        ((), ValueError),  # no spatial dims
        ((1, 1, 1, 1), ValueError),  # more than 3
        ((2.0, 2), TypeError),
        (2, TypeError),  # not a sequence
        ("22", TypeError),
    ]:
        with pytest.raises(error, match="window_shape"):
            pool(IMAGE, window)
    with pytest.raises(ValueError, match="x must have 3 spatial dimension"):
        pool(IMAGE[0, 0], (2, 2, 2))  # (4, 3): too few dims for the window
    with pytest.raises(ValueError, match="empty spatial dimension"):
        pool(jnp.ones((2, 0, 4, 3)), (1, 1))
    for strides, error in [((2,), ValueError), ((0, 1), ValueError), ((1, -2), ValueError)]:
        with pytest.raises(error, match="strides"):
            pool(IMAGE, (2, 2), strides)
    for padding, error in [
        ("same", ValueError),
        ("FULL", ValueError),
        (((1, 1),), ValueError),  # one pair for two spatial dims
        (((1, 1), (1,)), ValueError),
        (((1, 1), (-1, 0)), ValueError),  # negative
        (((2, 0), (0, 0)), ValueError),  # as wide as the window: windows of padding alone
        (((1.5, 0), (0, 0)), TypeError),
        (3, TypeError),
    ]:
        with pytest.raises(error, match="padding"):
            pool(IMAGE, (2, 2), (1, 1), padding)
    with pytest.raises(ValueError, match="window_shape .* must fit"):
        pool(IMAGE, (6, 2))  # larger than the (unpadded) input
    assert pool(IMAGE, (6, 2), None, ((1, 0), (0, 0))).shape == (2, 1, 3, 3)  # with padding
    for dilation, error in [
        ((2, 0), ValueError),  # zero
        ((1, -1), ValueError),  # negative
        ((2,), ValueError),  # one entry for two spatial dims
        ((2, 1, 1), ValueError),
        ((1.5, 1), TypeError),
        (2, TypeError),  # not a sequence
    ]:
        with pytest.raises(error, match="window_dilation"):
            pool(IMAGE, (2, 2), window_dilation=dilation)
    with pytest.raises(ValueError, match=r"window_shape \(3, 2\) with window_dilation .* fit"):
        pool(IMAGE, (3, 2), window_dilation=(3, 1))  # an extent of 7 in 5 positions
    # the padding's bound is the dilated window's extent (3 here, for a window of 2) ...
    with pytest.raises(ValueError, match=r"padding must be smaller than the extent \(3, 2\)"):
        pool(IMAGE, (2, 2), (1, 1), ((3, 0), (0, 0)), window_dilation=(2, 1))
    wide = pool(IMAGE, (2, 2), (1, 1), ((2, 0), (0, 0)), window_dilation=(2, 1))
    assert wide.shape == (2, 5, 3, 3)
    # ... and every window must still hold a real entry: one position, a window of 2 with
    # dilation 3 and padding (2, 2) reads positions -2 and 1, outside the input; "SAME" alike
    for padding in [((2, 2),), "SAME"]:
        with pytest.raises(ValueError, match="padding .*padding alone.*window_dilation"):
            pool(jnp.ones((1, 3)), (2,), (1,), padding, window_dilation=(3,))


@pytest.mark.parametrize("name", [n for n in POOLS if n in TEMPERED])
def test_bad_pooling_temperature(name):
    pool = getattr(jaxrelax, name)
    for t in [0.0, -1.0, np.nan, np.inf]:
        with pytest.raises(ValueError, match="temperature must be positive"):
            pool(IMAGE, (2, 2), temperature=t)
    with pytest.raises(ValueError, match="temperature of shape"):
        pool(IMAGE, (2, 2), temperature=jnp.ones((5, 1, 1)))  # varies along a spatial dim
    assert pool(IMAGE, (2, 2), temperature=jnp.ones((2, 1, 1, 3))).shape == (2, 4, 3, 3)


def test_bad_max_pool_and_unpool_arguments():
    with pytest.raises(TypeError, match="return_indices must be a bool"):
        jaxrelax.max_pool(IMAGE, (2, 2), return_indices=1)
    with pytest.raises(TypeError, match="x must be an array of real numbers"):
        jaxrelax.max_pool("image", (2, 2))
    values, indices = jaxrelax.max_pool(IMAGE, (2, 2), (2, 2), return_indices=True)
    with pytest.raises(TypeError, match="indices must be an integer array"):
        jaxrelax.max_unpool(values, indices.astype(jnp.float32), spatial_shape=(5, 4))
    with pytest.raises(ValueError, match="indices of shape"):
        jaxrelax.max_unpool(values, indices[..., :1], spatial_shape=(5, 4))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 6\)"):
        jaxrelax.max_unpool(
            values, indices, spatial_shape=(2, 3)
        )  # 5x4 plane indices in a 2x3 plane
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 20\).*got -1"):
        jaxrelax.max_unpool(values, indices - 1, spatial_shape=(5, 4))
    for spatial, error in [((5, 0), ValueError), ((), ValueError), (5, TypeError)]:
        with pytest.raises(error, match="spatial_shape"):
            jaxrelax.max_unpool(values, indices, spatial_shape=spatial)
    with pytest.raises(ValueError, match="values must have 3 spatial dimension"):
        jaxrelax.max_unpool(values[0, 0], indices[0, 0], spatial_shape=(5, 4, 1))
    with pytest.raises(TypeError, match="values must be an array of real numbers"):
        jaxrelax.max_unpool(None, indices, spatial_shape=(5, 4))
    with pytest.raises(TypeError, match="window_shape .* or spatial_shape"):
        jaxrelax.max_unpool(values, indices)
    # With the pooling's arguments, a shape it would not take to values' is an error at trace
    # time, under jit too (4x4 pooled by 2 is 2x2, as 5x5 is; 6x6 is not and 2x2 is not).
    pooled = jaxrelax.max_pool(jnp.ones((1, 4, 4, 1)), (2, 2), (2, 2), return_indices=True)
    for spatial in [(2, 2), (6, 6), (4, 6)]:
        with pytest.raises(ValueError, match=r"spatial_shape .* could be 4..5 x 4..5"):
            jax.jit(
                lambda v, i, s=spatial: jaxrelax.max_unpool(v, i, (2, 2), (2, 2), spatial_shape=s)
            )(*pooled)
    assert jaxrelax.max_unpool(*pooled, (2, 2), (2, 2), spatial_shape=(5, 5)).shape == (1, 5, 5, 1)
    with pytest.raises(ValueError, match="no spatial shape pools to"):  # n + 1 windows of n
        corner = [a[:, :1, :1] for a in pooled]
        jaxrelax.max_unpool(*corner, (2, 2), (1, 1), ((1, 1), (1, 1)))
    with pytest.raises(ValueError, match="strides must have 2 entries"):
        jaxrelax.max_unpool(*pooled, (2, 2), (2,))


@pytest.mark.parametrize("name", PERTURBED)
def test_bad_perturbation_arguments(name):
    def fn(x, **keywords):
        return _call(name, x, **keywords)

    for sigma in [0.0, -1.0, np.nan, np.inf, np.array([1.0, 0.0, 1.0])]:
        with pytest.raises(ValueError, match="sigma must be positive"):
            fn(X, sigma=sigma)
    with pytest.raises(ValueError, match="sigma of shape"):
        fn(X, sigma=jnp.ones((3, 1)))
    with pytest.raises(TypeError, match="sigma"):
        fn(X, sigma="1")
    with pytest.raises(ValueError, match="noise must be one of"):
        fn(X, noise="uniform")
    with pytest.raises(ValueError, match="num_samples"):
        fn(X, num_samples=0)
    with pytest.raises(TypeError, match="num_samples"):
        fn(X, num_samples=2.5)
    assert fn(X, sigma=jnp.ones((2, 1)) * 0.5).shape == fn(X).shape  # one per slice


def test_bad_perturbed_keys_labels_and_k():
    with pytest.raises(TypeError, match="key"):
        jaxrelax.perturbed_argmax(0, X)
    with pytest.raises(ValueError, match="labels of shape"):
        jaxrelax.perturbed_fy_loss(KEY, X, jnp.ones(3))
    with pytest.raises(TypeError, match="labels"):
        jaxrelax.perturbed_fy_loss(KEY, X, "one-hot")
    with pytest.raises(ValueError, match="k must be in"):
        jaxrelax.perturbed_topk(KEY, X, 4)


def test_bad_perturbed_options():
    def solver(y):
        return jaxrelax.hardmax(y)

    with pytest.raises(TypeError, match="fn must be callable"):
        jaxrelax.perturbed("argmax")
    for num_samples, error in [(0, ValueError), (1.5, TypeError), (None, TypeError)]:
        with pytest.raises(error, match="num_samples"):
            jaxrelax.perturbed(solver, num_samples=num_samples)
    with pytest.raises(ValueError, match="sigma must be positive"):
        jaxrelax.perturbed(solver, sigma=0.0)
    with pytest.raises(ValueError, match="noise must be one of"):
        jaxrelax.perturbed(solver, noise="cauchy")
    for batch_size, error in [(0, ValueError), (2.0, TypeError), ("all", TypeError)]:
        with pytest.raises(error, match="batch_size"):
            jaxrelax.perturbed(solver, batch_size=batch_size)
    with pytest.raises(TypeError, match="control_variate must be a bool"):
        jaxrelax.perturbed(solver, control_variate=1)
    smoothed = jaxrelax.perturbed(solver, num_samples=2)
    with pytest.raises(TypeError, match="key"):
        smoothed(None, X)
    with pytest.raises(TypeError, match="x must be an array of real numbers"):
        smoothed(KEY, "scores")
    for bad in [lambda y: "chosen", lambda y: None, lambda y: (y > 0).astype(jnp.complex64)]:
        with pytest.raises(TypeError, match="fn must return"):
            jaxrelax.perturbed(bad)(KEY, X)
    with pytest.raises(ValueError, match="sigma of shape"):
        jaxrelax.perturbed(solver, sigma=jnp.ones(4))(KEY, X)
    # batch_size larger than num_samples is taken as num_samples
    assert jaxrelax.perturbed(solver, num_samples=2, batch_size=8)(KEY, X).shape == X.shape
