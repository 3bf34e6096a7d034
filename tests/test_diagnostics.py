import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrelax
from jaxrelax import diagnostics

Z = 5.0  # standard errors allowed (a false failure per check: about 6e-7)


def _cost(d):
    return jnp.sum(d * jnp.array([1.0, -0.5, 2.0, 0.3])) ** 2


def test_exact_expectation_and_gradient_one_variable(rng):
    logits = jnp.asarray(rng.normal(size=4))
    p = np.asarray(jax.nn.softmax(logits), np.float64)
    values = np.array([float(_cost(jnp.eye(4)[i])) for i in range(4)])
    np.testing.assert_allclose(diagnostics.exact_expectation(_cost, logits), p @ values, rtol=1e-6)
    # d/dl_j sum_i p_i f_i = p_j (f_j - E f)
    expected = p * (values - p @ values)
    np.testing.assert_allclose(
        diagnostics.exact_gradient(_cost, logits), expected, rtol=1e-5, atol=1e-7
    )


def test_exact_gradient_factorised_matches_a_loop(rng, x64):
    logits = jnp.asarray(rng.normal(size=(3, 4)))

    def f(d):  # couples the variables
        return jnp.sum(d[0] * d[1]) + 2 * d[2, 1] * d[0, 3] + d[1, 2]

    p = np.asarray(jax.nn.softmax(logits, -1))
    expectation = 0.0
    for config in itertools.product(range(4), repeat=3):
        d = np.eye(4)[list(config)]
        expectation += np.prod([p[j, config[j]] for j in range(3)]) * float(f(jnp.asarray(d)))
    np.testing.assert_allclose(diagnostics.exact_expectation(f, logits), expectation, rtol=1e-12)
    numeric = np.zeros((3, 4))
    for j, k in itertools.product(range(3), range(4)):
        step = np.zeros((3, 4))
        step[j, k] = 1e-6
        numeric[j, k] = (
            diagnostics.exact_expectation(f, logits + step)
            - diagnostics.exact_expectation(f, logits - step)
        ) / 2e-6
    np.testing.assert_allclose(diagnostics.exact_gradient(f, logits), numeric, rtol=1e-6, atol=1e-9)


def test_stats_of_a_known_estimator():
    # A deterministic estimator plus Gaussian noise of known scale: bias and variance known.
    exact = jnp.array([0.5, -1.0, 2.0])
    offset = jnp.array([0.1, 0.0, -0.2])

    def estimator(key, logits):
        return exact + offset + 0.3 * jax.random.normal(key, logits.shape)

    count = 20_000
    stats = diagnostics.estimator_stats(
        estimator, jax.random.key(0), jnp.zeros(3), exact, num_samples=count
    )
    stderr = 0.3 / np.sqrt(count)
    assert (np.abs(stats.bias - offset) <= Z * stderr).all()
    # the sample variance of a normal: stderr sigma^2 sqrt(2 / (n - 1))
    assert (np.abs(stats.variance - 0.09) <= Z * 0.09 * np.sqrt(2 / count)).all()
    expected_mse = float(jnp.sum(offset**2)) + 3 * 0.09
    assert abs(float(stats.mse) - expected_mse) <= Z * float(stats.mse_stderr)
    np.testing.assert_allclose(
        stats.mse, jnp.sum(stats.bias**2) + jnp.sum(stats.variance) * (count - 1) / count, rtol=1e-4
    )


def test_straight_through_gumbel_is_biased_and_reinforce_is_not():
    logits = jnp.array([0.2, -0.4, 0.9, 0.0])
    exact = diagnostics.exact_gradient(_cost, logits)

    def reinforce(key, logits):
        d = jaxrelax.gumbel_softmax(key, logits, hard=True)
        return jax.lax.stop_gradient(_cost(d)) * jax.grad(
            lambda lg: jnp.vdot(d, jax.nn.log_softmax(lg))
        )(logits)

    def straight_through(key, logits):
        return jax.grad(
            lambda lg: _cost(jaxrelax.gumbel_softmax(key, lg, temperature=0.5, hard=True))
        )(logits)

    count = 40_000
    unbiased = diagnostics.estimator_stats(
        reinforce, jax.random.key(1), logits, exact, num_samples=count
    )
    assert (np.abs(unbiased.bias) <= Z * np.sqrt(unbiased.variance / count)).all()
    biased = diagnostics.estimator_stats(
        straight_through, jax.random.key(2), logits, exact, num_samples=count
    )
    assert (np.abs(biased.bias) > Z * np.sqrt(biased.variance / count)).any()


def test_jit_and_vmap_friendly():
    logits = jnp.array([[0.1, 0.2, -0.3], [0.0, 1.0, 0.5]])
    batched = jax.jit(jax.vmap(lambda lg: diagnostics.exact_gradient(lambda d: d[0] @ d[1], lg)))(
        jnp.stack([logits, -logits])
    )
    np.testing.assert_allclose(
        batched[0], diagnostics.exact_gradient(lambda d: d[0] @ d[1], logits), rtol=1e-6
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="configurations"):
        diagnostics.exact_gradient(lambda d: d.sum(), jnp.zeros((30, 10)))
    with pytest.raises(ValueError, match="shape"):
        diagnostics.exact_gradient(lambda d: d.sum(), jnp.zeros((2, 2, 2)))
    with pytest.raises(TypeError, match="floating-point"):
        diagnostics.exact_gradient(lambda d: d.sum(), jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match="at least 2"):
        diagnostics.gradient_stats(jnp.zeros((1, 3)), jnp.zeros(3))


# Arguments: wrong types raise TypeError, bad values ValueError, each naming the argument.

NAN, INF = float("nan"), float("inf")


def _sum_of_squares(z):
    return jnp.sum(z * jnp.arange(z.shape[-1])) ** 2


def _noisy_estimator(key, logits):
    return logits + jax.random.normal(key, logits.shape)


def _arguments(function):
    """Valid arguments for each public function."""
    key, logits = jax.random.key(0), jnp.array([0.3, -0.1, 0.2])
    sampling = dict(estimator=_noisy_estimator, key=key, logits=logits)
    return {
        "one_hot_configurations": dict(shape=(2, 3)),
        "exact_expectation": dict(f=_sum_of_squares, logits=logits),
        "exact_gradient": dict(f=_sum_of_squares, logits=logits),
        "estimate_gradients": dict(**sampling, num_samples=5, batch_size=2),
        "gradient_stats": dict(samples=jnp.arange(12.0).reshape(4, 3), exact=jnp.ones(3)),
        "estimator_stats": dict(**sampling, exact=jnp.ones(3), num_samples=5, batch_size=2),
    }[function]


FUNCTIONS = [
    "one_hot_configurations",
    "exact_expectation",
    "exact_gradient",
    "estimate_gradients",
    "gradient_stats",
    "estimator_stats",
]
_NOT_NUMBERS = [None, "3", True, np.bool_(True), 1 + 0j, [2]]
_COUNTS_BAD = [(v, TypeError) for v in _NOT_NUMBERS + [3.0, np.float32(3), NAN, INF]] + [
    (v, ValueError) for v in [0, -1, np.int64(-2), jnp.array(0), 2**31]
]
_NOT_ARRAYS = [None, "x", True, jnp.array([True, False, True]), 1 + 0j, jnp.ones(3, jnp.complex64)]
_LOGITS_BAD = [(v, TypeError) for v in _NOT_ARRAYS + [jnp.arange(3), [1, 2, 3]]] + [
    (v, ValueError)
    for v in [jnp.array([NAN, 0.0, 0.0]), jnp.array([0.0, INF, 0.0]), [-INF, 0.0, 0.0], NAN]
]
_ENUMERATED_LOGITS_BAD = (
    _LOGITS_BAD
    + [(v, ValueError) for v in [0.5, jnp.zeros(0), jnp.zeros((2, 0)), jnp.zeros((2, 2, 2))]]
    + [(jnp.zeros((30, 10)), ValueError)]
)  # 10**30 configurations
BAD = {
    "shape": [(v, TypeError) for v in [None, "ab", 3, NAN, True, jnp.zeros(2)]]
    + [(v, TypeError) for v in [(2.0,), (True, 3), (NAN,), (None,), ("2",), (jnp.array(2.0),)]]
    + [(v, ValueError) for v in [(), (0,), (-1,), (2, 0), (2, 2, 2), (30, 10), (2, 2**30)]]
    + [(v, ValueError) for v in [(2**31,), (21, 2), (2**20,), (1, 2**20), (2, 2**10)]],
    "f": [(v, TypeError) for v in [None, "f", 1.0, NAN, True, jnp.ones(3), lambda z: z]],
    "estimator": [(v, TypeError) for v in [None, "f", 1.0, NAN, True, jnp.ones(3)]],
    "key": [
        (v, TypeError)
        for v in [None, "key", 1.0, NAN, True, -1, np.int64(3), jnp.array(0), jnp.zeros(2)]
        + [jax.random.split(jax.random.key(0), 2), jnp.zeros(2, jnp.int32)]
    ],
    "logits": _LOGITS_BAD,
    "num_samples": _COUNTS_BAD,
    "batch_size": _COUNTS_BAD,
    "samples": [(v, TypeError) for v in _NOT_ARRAYS + [jnp.ones((4, 3), bool)]]
    + [(v, ValueError) for v in [NAN, 2.0, jnp.ones((1, 3)), jnp.ones((0, 3))]],
    "exact": [(v, TypeError) for v in _NOT_ARRAYS]
    + [(v, ValueError) for v in [NAN, jnp.zeros(2), jnp.zeros((4, 3)), jnp.zeros((3, 1))]],
}
BAD_CASES = [
    # (a function's repr holds its address, which differs between pytest-xdist's workers)
    pytest.param(
        function,
        name,
        value,
        error,
        id=f"{function}-{name}-{'a function' if callable(value) else f'{value!r:.40}'}",
    )
    for function in FUNCTIONS
    for name in _arguments(function)
    for value, error in (
        _ENUMERATED_LOGITS_BAD if name == "logits" and "exact" in function else BAD[name]
    )
] + [
    pytest.param("estimator_stats", "num_samples", 1, ValueError, id="one sample"),
    pytest.param("estimator_stats", "num_samples", np.int8(1), ValueError, id="one numpy sample"),
]


@pytest.mark.parametrize("function, name, value, error", BAD_CASES)
def test_bad_arguments_name_the_argument(function, name, value, error):
    with pytest.raises(error, match=rf"^{name}\b"):
        getattr(diagnostics, function)(**{**_arguments(function), name: value})


def test_estimator_stats_blames_num_samples():
    arguments = _arguments("estimator_stats")
    for count in [0, 1, -5]:
        with pytest.raises(ValueError, match=rf"^num_samples must be .*got {count}$"):
            diagnostics.estimator_stats(**{**arguments, "num_samples": count})


@pytest.mark.parametrize("name", ["num_samples", "batch_size"])
def test_traced_counts_are_rejected(name):
    arguments = _arguments("estimate_gradients")
    with pytest.raises(TypeError, match=rf"^{name} must be a concrete integer"):
        jax.jit(lambda n: diagnostics.estimate_gradients(**{**arguments, name: n}))(3)


@functools.cache
def _with_python_ints(function):
    return getattr(diagnostics, function)(**_arguments(function))


@pytest.mark.parametrize("function", ["estimate_gradients", "estimator_stats"])
@pytest.mark.parametrize("name", ["num_samples", "batch_size"])
@pytest.mark.parametrize("form", [np.int64, np.uint8, np.asarray, jnp.asarray, jnp.int32])
def test_numpy_and_0d_array_counts_are_numbers(function, name, form):
    arguments = _arguments(function)
    expected = _with_python_ints(function)
    got = getattr(diagnostics, function)(**{**arguments, name: form(arguments[name])})
    jax.tree.map(np.testing.assert_array_equal, got, expected)


def test_estimate_gradients_draws_the_documented_keys():
    # Sample i is estimator(split(key, n)[i], logits), a legacy key giving legacy keys.
    for key in [jax.random.key(3), jax.random.PRNGKey(3)]:
        got = diagnostics.estimate_gradients(
            _noisy_estimator, key, jnp.zeros(2), num_samples=7, batch_size=3
        )
        expected = [_noisy_estimator(k, jnp.zeros(2)) for k in jax.random.split(key, 7)]
        np.testing.assert_allclose(got, np.stack(expected), rtol=1e-6)
    legacy = diagnostics.estimate_gradients(
        lambda key, logits: key.astype(jnp.float32),
        jax.random.PRNGKey(3),
        jnp.zeros(2),
        num_samples=4,
    )
    split = jax.random.split(jax.random.PRNGKey(3), 4)
    np.testing.assert_array_equal(legacy, split.astype(jnp.float32))


def test_one_hot_configurations_take_any_integers():
    expected = np.array([[[1, 0, 0], [1, 0, 0]], [[1, 0, 0], [0, 1, 0]], [[1, 0, 0], [0, 0, 1]]])
    for shape in [(2, 3), [2, 3], (np.int64(2), jnp.array(3)), (np.uint8(2), np.asarray(3))]:
        got = diagnostics.one_hot_configurations(shape)
        assert got.shape == (9, 2, 3)
        np.testing.assert_array_equal(got[:3], expected)  # itertools.product order
        np.testing.assert_array_equal(got.sum(axis=-1), np.ones((9, 2)))
        assert len({tuple(np.asarray(c).argmax(-1)) for c in got}) == 9
    assert diagnostics.one_hot_configurations((1, 1)).shape == (1, 1, 1)
    assert diagnostics.one_hot_configurations((10, 2)).shape == (2**10, 10, 2)


def test_gradient_stats_of_integer_and_non_finite_samples():
    samples = np.array([[1, 0], [3, 0], [2, 3]])
    exact = np.array([1, 1])
    got = diagnostics.gradient_stats(jnp.asarray(samples), jnp.asarray(exact))
    squared = ((samples - exact) ** 2).sum(axis=1)
    expected = (
        samples.mean(0),
        samples.mean(0) - exact,
        samples.var(0, ddof=1),
        squared.mean(),
        squared.std(ddof=1) / np.sqrt(3),
    )
    for value, oracle in zip(got, expected, strict=True):
        assert value.dtype == jnp.float32
        np.testing.assert_allclose(value, oracle, rtol=1e-6)
    # NaN samples are an estimator's failure to show, not an argument error.
    broken = diagnostics.gradient_stats(jnp.array([[NAN, 0.0], [1.0, 0.0]]), jnp.zeros(2))
    assert np.isnan(broken.mean[0]) and broken.mean[1] == 0 and np.isnan(broken.mse)


def test_traced_non_finite_logits_give_nan(x64):
    # Concrete non-finite logits raise; traced ones cannot be checked and give NaN.
    logits = jnp.array([0.0, NAN, 1.0])
    gradient = jax.jit(diagnostics.exact_gradient, static_argnums=0)(_sum_of_squares, logits)
    assert np.isnan(gradient).all()
    expectation = jax.jit(diagnostics.exact_expectation, static_argnums=0)(_sum_of_squares, logits)
    assert np.isnan(expectation)
