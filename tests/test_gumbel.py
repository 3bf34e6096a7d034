"""Tests of the stochastic relaxations.

Statistical assertions allow 5 standard errors: for a (near) normal statistic a single such
check fails by chance with probability about 6e-7, and every test below makes at most a few
dozen of them, all with fixed keys (so a run is reproducible and a pass is a pass).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

import jaxrelax
from jaxrelax import _gumbel, diagnostics

EULER_GAMMA = 0.5772156649015329
Z = 5.0  # standard errors allowed
LOGITS = np.log(np.array([0.05, 0.15, 0.3, 0.4, 0.1], np.float32))


def _hard_samplers():
    return {
        "gumbel_softmax": functools.partial(jaxrelax.gumbel_softmax, hard=True),
        "gumbel_rao": functools.partial(jaxrelax.gumbel_rao, num_samples=3),
    }


def _draw(sampler, logits, count, seed=0, **kwargs):
    keys = jax.random.split(jax.random.key(seed), count)
    return jax.jit(jax.vmap(lambda k: sampler(k, logits, **kwargs)))(keys)


# --- noise, determinism, and the plain recipe ---


def test_same_key_same_noise_as_the_plain_recipe():
    key = jax.random.key(3)
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 7)), jnp.float32)
    noise = jax.random.gumbel(key, logits.shape)
    recipe = jax.nn.softmax((logits + noise) / 0.7)
    soft = jaxrelax.gumbel_softmax(key, logits, temperature=0.7)
    hard = jaxrelax.gumbel_softmax(key, logits, temperature=0.7, hard=True)
    np.testing.assert_allclose(soft, recipe, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(hard, jax.nn.one_hot(jnp.argmax(logits + noise, -1), 7))
    np.testing.assert_array_equal(jaxrelax.gumbel_softmax(key, logits, temperature=0.7), soft)
    other = jaxrelax.gumbel_softmax(jax.random.key(4), logits, temperature=0.7)
    assert not np.allclose(other, soft)


@pytest.mark.parametrize(
    "key",
    [jax.random.key(1), jax.random.PRNGKey(1), jax.random.key(1, impl="rbg")],
    ids=["typed", "legacy", "rbg"],
)
def test_any_key_kind(key):
    for sample in [
        jaxrelax.gumbel_softmax(key, LOGITS, hard=True),
        jaxrelax.gumbel_rao(key, LOGITS),
        jaxrelax.binary_concrete(key, LOGITS, hard=True),
    ]:
        assert set(np.unique(np.asarray(sample))) <= {0.0, 1.0}


def test_straight_through_gradient_is_the_soft_samples(rng):
    key = jax.random.key(5)
    logits = jnp.asarray(rng.normal(size=(3, 6)), jnp.float32)
    cot = jnp.asarray(rng.normal(size=(3, 6)), jnp.float32)
    for_hard = jax.vjp(
        lambda lg, t: jaxrelax.gumbel_softmax(key, lg, temperature=t, hard=True), logits, 0.6
    )[1](cot)
    for_soft = jax.vjp(lambda lg, t: jaxrelax.gumbel_softmax(key, lg, temperature=t), logits, 0.6)[
        1
    ](cot)
    for a, b in zip(for_hard, for_soft, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


# --- distributions ---


@pytest.mark.parametrize("name", ["gumbel_softmax", "gumbel_rao"])
@pytest.mark.parametrize("masked", [False, True])
def test_hard_sample_frequencies_match_softmax(name, masked):
    count = 40_000
    where = np.array([True, True, False, True, True]) if masked else None
    samples = _draw(_hard_samplers()[name], LOGITS, count, where=where)
    np.testing.assert_array_equal(samples.sum(-1), 1)
    frequencies = np.asarray(samples.mean(0))
    probs = np.asarray(jaxrelax.softmax(LOGITS, where=where))
    stderr = np.sqrt(probs * (1 - probs) / count)
    assert (np.abs(frequencies - probs) <= Z * stderr).all(), (frequencies, probs)
    if masked:
        assert frequencies[2] == 0


def test_expected_maximum_of_perturbed_logits():
    count = 200_000
    logits = jnp.asarray(LOGITS)
    perturbed = logits + jax.random.gumbel(jax.random.key(7), (count, 5))
    top = np.asarray(perturbed.max(-1), np.float64)
    expected = float(jax.nn.logsumexp(logits)) + EULER_GAMMA
    assert abs(top.mean() - expected) <= Z * top.std() / np.sqrt(count)


def test_soft_sample_mean_limits():
    count = 40_000
    probs = np.asarray(jax.nn.softmax(LOGITS))
    cold = np.asarray(_draw(jaxrelax.gumbel_softmax, LOGITS, count, temperature=1e-3).mean(0))
    # At t -> 0 the soft sample is the one-hot sample: its mean is a frequency.
    stderr = np.sqrt(probs * (1 - probs) / count)
    assert (np.abs(cold - probs) <= Z * stderr + 1e-3).all()
    hot = np.asarray(_draw(jaxrelax.gumbel_softmax, LOGITS, 2_000, temperature=1e4))
    # At t -> inf every sample is near uniform: |logits + g| < 60, so each entry is within
    # exp(120 / 1e4) - 1 < 1.3% of 1/n.
    np.testing.assert_allclose(hot, 0.2, rtol=0.013)


# --- Gumbel-Rao ---


def test_gumbel_rao_with_one_sample_is_straight_through_gumbel(rng):
    key = jax.random.key(11)
    logits = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
    cot = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
    forward_key = jax.random.split(key)[0]

    def rao(lg, t):
        return jaxrelax.gumbel_rao(key, lg, temperature=t, num_samples=1)

    def straight(lg, t):
        return jaxrelax.gumbel_softmax(forward_key, lg, temperature=t, hard=True)

    np.testing.assert_array_equal(rao(logits, 0.5), straight(logits, 0.5))
    for a, b in zip(
        jax.vjp(rao, logits, 0.5)[1](cot), jax.vjp(straight, logits, 0.5)[1](cot), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def _conditional(logits, sample, key, count):
    """``count`` draws of logits + g conditioned on argmax = sample, from the estimator's own
    construction (its gaps to the winner, plus the winner's Gumbel(logsumexp) value)."""
    logits = jnp.asarray(logits)
    probs = jax.nn.softmax(logits)
    log_partition = jax.nn.logsumexp(logits)

    def one(k):
        arrivals = _gumbel._exponentials(k, logits.shape, logits.dtype)
        gaps, winner = _gumbel._conditional_gaps(probs, sample, arrivals, (0,))
        return gaps + log_partition - jnp.log(winner)

    return jax.vmap(one)(jax.random.split(key, count))


def test_exponentials_are_exp_one():
    count = 1_000_003  # not a multiple of 4: the packing's tail is cut
    draws = np.asarray(_gumbel._exponentials(jax.random.key(5), (count,), jnp.float32), np.float64)
    assert draws.min() >= 0 and np.isfinite(draws).all()
    assert abs(draws.mean() - 1) <= Z / np.sqrt(count)  # Exp(1): mean 1, variance 1
    for quantile in [0.1, 1.0, 3.0, 8.0]:  # survival function exp(-q), binomial errors
        expected = np.exp(-quantile)
        stderr = np.sqrt(expected * (1 - expected) / count)
        assert abs((draws > quantile).mean() - expected) <= Z * stderr
    # neighbours (which share 32-bit words) are uncorrelated
    assert abs(np.corrcoef(draws[:-1], draws[1:])[0, 1]) <= Z / np.sqrt(count)


def test_conditional_noise_follows_the_conditional_distribution():
    count = 100_000
    sample = jax.nn.one_hot(3, 5)
    perturbed = np.asarray(_conditional(LOGITS, sample, jax.random.key(21), count), np.float64)
    # The argmax is the conditioning class, always.
    assert (perturbed.argmax(-1) == 3).all()
    # The maximum is Gumbel(logsumexp(logits)), independent of which class wins.
    top = perturbed.max(-1)
    expected = float(jax.nn.logsumexp(LOGITS)) + EULER_GAMMA
    assert abs(top.mean() - expected) <= Z * top.std() / np.sqrt(count)
    # The relaxed sample has the mean it has under unconditional noise, given the winner
    # (estimated by rejection).
    noise = np.asarray(jax.random.gumbel(jax.random.key(22), (5 * count, 5)), np.float64)
    unconditional = LOGITS + noise
    accepted = unconditional[unconditional.argmax(-1) == 3]

    def relaxed(z):
        z = (z - z.max(-1, keepdims=True)) / 0.5
        return np.exp(z) / np.exp(z).sum(-1, keepdims=True)

    mine, reference = relaxed(perturbed), relaxed(accepted)
    stderr = np.sqrt(mine.var(0) / len(mine) + reference.var(0) / len(reference))
    assert (np.abs(mine.mean(0) - reference.mean(0)) <= Z * stderr).all()


def _quadratic_program():
    """The toy of Paulus et al. 2021, section 5.2: f(D) = (D - c)^T Q (D - c), n = 3."""
    index = np.arange(3)
    q = jnp.asarray(np.exp(-2.0 * np.abs(index[:, None] - index[None, :])), jnp.float32)
    c = jnp.full(3, 1 / 3, jnp.float32)
    return lambda d: (d - c) @ q @ (d - c)


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_gumbel_rao_mean_squared_error_on_the_quadratic_program(temperature):
    f = _quadratic_program()
    logits = jnp.array([0.5, -0.2, 0.1], jnp.float32)
    exact = diagnostics.exact_gradient(f, logits)

    def estimator(sampler):
        return lambda key, lg: jax.grad(lambda lg: f(sampler(key, lg)))(lg)

    def squared_errors(sampler):
        grads = diagnostics.estimate_gradients(
            estimator(sampler), jax.random.key(31), logits, num_samples=8_000
        )
        return np.asarray(jnp.sum((grads - exact) ** 2, -1), np.float64)

    def rao(k):
        return functools.partial(jaxrelax.gumbel_rao, temperature=temperature, num_samples=k)

    def straight(key, lg):  # the noise gumbel_rao's forward pass uses with the same key
        forward_key = jax.random.split(key)[0]
        return jaxrelax.gumbel_softmax(forward_key, lg, temperature=temperature, hard=True)

    errors = {k: squared_errors(rao(k)) for k in (1, 4, 32)}
    # Same keys: the same samples D, so the comparisons are paired.
    np.testing.assert_allclose(errors[1], squared_errors(straight), rtol=1e-5, atol=1e-7)
    for fewer, more in [(1, 4), (4, 32)]:
        difference = errors[fewer] - errors[more]
        assert difference.mean() > Z * difference.std() / np.sqrt(len(difference)), (
            fewer,
            more,
            errors[fewer].mean(),
            errors[more].mean(),
        )


# --- binary Concrete ---


def test_binary_concrete_hard_mean_is_sigmoid():
    count = 40_000
    logits = jnp.array([-2.0, -0.3, 0.0, 0.8, 3.0])
    samples = _draw(jaxrelax.binary_concrete, logits, count, hard=True)
    assert set(np.unique(np.asarray(samples))) == {0.0, 1.0}
    probs = np.asarray(jax.nn.sigmoid(logits))
    stderr = np.sqrt(probs * (1 - probs) / count)
    assert (np.abs(np.asarray(samples.mean(0)) - probs) <= Z * stderr).all()


def _bernoulli_toy_gradient(hard, a, temperature, count, seed):
    """Samples of d/da (b - 0.499)^2 for the relaxed (hard=False) or straight-through
    binary Concrete, b ~ Bernoulli(sigmoid(a)) (Tucker et al. 2017)."""

    def one(key):
        sample = lambda a: jaxrelax.binary_concrete(key, a, temperature=temperature, hard=hard)  # noqa: E731
        return jax.grad(lambda a: (sample(a) - 0.499) ** 2)(a)

    keys = jax.random.split(jax.random.key(seed), count)
    return np.asarray(jax.jit(jax.vmap(one))(keys), np.float64)


@pytest.mark.parametrize("hard", [False, True])
def test_bernoulli_toy_bias_has_its_known_sign(hard):
    a, temperature, t = -1.0, 0.5, 0.499
    sigmoid = 1 / (1 + np.exp(-a))
    exact = sigmoid * (1 - sigmoid) * (1 - 2 * t)  # d/da of E[(b - t)^2]: positive
    grads = _bernoulli_toy_gradient(hard, jnp.float32(a), temperature, 100_000, seed=41)
    mean, stderr = grads.mean(), grads.std() / np.sqrt(len(grads))
    # The same expectation by quadrature over the logistic noise L.
    logistic = lambda x: np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))) ** 2  # noqa: E731
    relaxed = lambda x: 1 / (1 + np.exp(-(a + x) / temperature))  # noqa: E731

    def integrand(x):
        value = float(a + x > 0) if hard else relaxed(x)
        return logistic(x) * 2 * (value - t) * relaxed(x) * (1 - relaxed(x)) / temperature

    expected = integrate.quad(integrand, -60, 60, points=[-a], limit=200)[0]
    assert abs(mean - expected) <= Z * stderr
    # The relaxed objective's minimum is at y = t, so at a = -1 the estimator points the
    # wrong way: its bias is negative and larger than the exact gradient.
    assert exact > 0 and mean + Z * stderr < 0


# --- edges ---


@pytest.mark.parametrize("hard", [False, True])
def test_masks_and_empty_slices(hard):
    key = jax.random.key(2)
    logits = jnp.array(
        [[0.3, 1e30, -1.0, jnp.inf], [0.0, 0.0, 0.0, 0.0], [0.5, -jnp.inf, 1.0, 2.0]]
    )
    where = jnp.array([[True, False, True, False], [False] * 4, [True] * 4])
    samplers = {
        "gumbel_softmax": lambda lg: jaxrelax.gumbel_softmax(key, lg, hard=hard, where=where),
        "gumbel_rao": lambda lg: jaxrelax.gumbel_rao(key, lg, where=where),
    }
    for name, sampler in samplers.items():
        out = np.asarray(sampler(logits))
        assert not np.isnan(out).any(), name
        np.testing.assert_array_equal(out[1], 0)
        assert (out[0, [1, 3]] == 0).all() and out[2, 1] == 0
        np.testing.assert_allclose(out[[0, 2]].sum(-1), 1, rtol=1e-6)
        grad = np.asarray(jax.grad(lambda lg, f=sampler: jnp.sum(f(lg) * jnp.arange(4.0)))(logits))
        assert np.isfinite(grad).all(), name
        assert (grad[~np.asarray(where)] == 0).all() and grad[2, 1] == 0, name


def test_nan_logits_propagate():
    key = jax.random.key(0)
    logits = jnp.array([[0.0, jnp.nan, 1.0], [0.0, 0.5, 1.0]])
    for sample in [
        jaxrelax.gumbel_softmax(key, logits),
        jaxrelax.gumbel_softmax(key, logits, hard=True),
        jaxrelax.gumbel_rao(key, logits),
    ]:
        assert jnp.isnan(sample[0]).all() and not jnp.isnan(sample[1]).any()
    assert jnp.isnan(jaxrelax.binary_concrete(key, jnp.array([jnp.nan, 0.0]), hard=True)[0])


def test_binary_concrete_infinite_logits():
    key = jax.random.key(0)
    logits = jnp.array([jnp.inf, -jnp.inf, 0.0])
    for hard in [False, True]:
        out = jaxrelax.binary_concrete(key, logits, hard=hard)
        np.testing.assert_array_equal(out[:2], [1, 0])
        grad = jax.grad(lambda lg, h=hard: jaxrelax.binary_concrete(key, lg, hard=h).sum())(logits)
        np.testing.assert_array_equal(grad[:2], 0)
        assert jnp.isfinite(grad).all()


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_logits(dtype):
    key = jax.random.key(0)
    logits = jnp.asarray(LOGITS, dtype)
    samplers = [
        lambda lg: jaxrelax.gumbel_softmax(key, lg),
        lambda lg: jaxrelax.gumbel_softmax(key, lg, hard=True),
        lambda lg: jaxrelax.gumbel_rao(key, lg),
        lambda lg: jaxrelax.binary_concrete(key, lg),
        lambda lg: jaxrelax.binary_concrete(key, lg, hard=True),
    ]
    for sampler in samplers:
        out = sampler(logits)
        assert out.dtype == dtype
        # computed in float32, rounded once
        reference = sampler(logits.astype(jnp.float32)).astype(dtype)
        np.testing.assert_array_equal(out.astype(jnp.float32), reference.astype(jnp.float32))
        weighted = lambda lg, f=sampler: jnp.sum(f(lg).astype(jnp.float32) * jnp.arange(5.0))  # noqa: E731
        grad = jax.grad(weighted)(logits)
        assert grad.dtype == dtype and jnp.isfinite(grad.astype(jnp.float32)).all()


def test_bad_arguments():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="temperature"):
        jaxrelax.gumbel_softmax(key, LOGITS, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        jaxrelax.gumbel_rao(key, LOGITS, temperature=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        jaxrelax.binary_concrete(key, LOGITS, temperature=jnp.array([1.0, 0.0, 1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"num_samples must be an integer in \[1, "):
        jaxrelax.gumbel_rao(key, LOGITS, num_samples=0)
    with pytest.raises(TypeError, match="num_samples must be a concrete integer"):
        jaxrelax.gumbel_rao(key, LOGITS, num_samples=2.0)
    for sampler in [jaxrelax.gumbel_softmax, jaxrelax.gumbel_rao, jaxrelax.binary_concrete]:
        with pytest.raises(TypeError, match="key must be"):
            sampler(0, LOGITS)
        with pytest.raises(TypeError, match="key must be"):
            sampler(jax.random.split(key, 2), LOGITS)
        with pytest.raises(TypeError, match="logits must be a floating-point array"):
            sampler(key, jnp.arange(5))
    with pytest.raises(TypeError, match="hard must be a bool"):
        jaxrelax.gumbel_softmax(key, LOGITS, hard=1)
    with pytest.raises(ValueError, match="where of shape"):
        jaxrelax.gumbel_softmax(key, LOGITS, where=jnp.ones(4, bool))


# --- transformations ---

SAMPLERS = {
    "gumbel_softmax": lambda k, lg, t: jaxrelax.gumbel_softmax(k, lg, temperature=t),
    "gumbel_softmax_hard": lambda k, lg, t: jaxrelax.gumbel_softmax(
        k, lg, temperature=t, hard=True
    ),
    "gumbel_rao": lambda k, lg, t: jaxrelax.gumbel_rao(k, lg, temperature=t, num_samples=4),
    "binary_concrete": lambda k, lg, t: jaxrelax.binary_concrete(k, lg, temperature=t),
    "binary_concrete_hard": lambda k, lg, t: jaxrelax.binary_concrete(
        k, lg, temperature=t, hard=True
    ),
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_jit_vmap_grad(name, rng):
    sampler = SAMPLERS[name]
    logits = jnp.asarray(rng.normal(size=(3, 6)), jnp.float32)
    key = jax.random.key(9)
    eager = sampler(key, logits, 0.7)
    np.testing.assert_allclose(jax.jit(sampler)(key, logits, 0.7), eager, rtol=1e-6, atol=1e-7)
    keys = jax.random.split(key, 4)
    over_keys = jax.vmap(sampler, in_axes=(0, None, None))(keys, logits, 0.7)
    for i in range(4):
        np.testing.assert_allclose(
            over_keys[i], sampler(keys[i], logits, 0.7), rtol=1e-6, atol=1e-7
        )
    batch = jnp.stack([logits, -logits])
    over_logits = jax.vmap(sampler, in_axes=(None, 0, None))(key, batch, 0.7)
    for i in range(2):
        np.testing.assert_allclose(
            over_logits[i], sampler(key, batch[i], 0.7), rtol=1e-6, atol=1e-7
        )
    weights = jnp.asarray(rng.normal(size=logits.shape), jnp.float32)
    loss = lambda lg, t: jnp.sum(sampler(key, lg, t) * weights)  # noqa: E731
    grads = jax.grad(loss, argnums=(0, 1))(logits, 0.7)
    jitted = jax.jit(jax.grad(loss, argnums=(0, 1)))(logits, 0.7)
    for a, b in zip(grads, jitted, strict=True):
        assert jnp.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    per_key = jax.vmap(jax.grad(lambda k, lg: jnp.sum(sampler(k, lg, 0.7) * weights), 1), (0, None))
    assert per_key(keys, logits).shape == (4, 3, 6)


def test_gumbel_rao_gradient_under_vmap_matches_a_loop(rng):
    logits = jnp.asarray(rng.normal(size=(2, 5)), jnp.float32)
    keys = jax.random.split(jax.random.key(1), 3)

    def grad(key):
        return jax.grad(lambda lg: jnp.sum(jaxrelax.gumbel_rao(key, lg) * jnp.arange(5.0)))(logits)

    mapped = jax.vmap(grad)(keys)
    for i in range(3):
        np.testing.assert_allclose(mapped[i], grad(keys[i]), rtol=1e-5, atol=1e-7)


def test_gumbel_rao_backward_memory_does_not_grow_with_num_samples():
    logits = jnp.zeros((64, 1000))

    def temp_bytes(num_samples):
        def loss(lg):
            return jnp.sum(jaxrelax.gumbel_rao(jax.random.key(0), lg, num_samples=num_samples) * lg)

        compiled = jax.jit(jax.grad(loss)).lower(logits).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    # The same few input-sized buffers (about 8.3 here) whatever the number of samples.
    assert temp_bytes(512) == temp_bytes(8) <= 10 * logits.nbytes


# --- gradients against plain formulas ---


def test_soft_samples_pass_check_grads(x64, rng):
    from jax.test_util import check_grads

    key = jax.random.key(8)
    logits = jnp.asarray(rng.normal(size=(3, 5)))
    weights = jnp.asarray(rng.normal(size=(3, 5)))
    check_grads(
        lambda lg, t: jnp.sum(jaxrelax.gumbel_softmax(key, lg, temperature=t) * weights),
        (logits, 0.6),
        order=2,
        modes=["rev"],
        atol=1e-6,
        rtol=1e-6,
    )
    t = jnp.asarray(rng.uniform(0.3, 2.0, size=(3, 5)))  # one temperature per element
    check_grads(
        lambda lg, t: jnp.sum(jaxrelax.binary_concrete(key, lg, temperature=t) * weights),
        (logits, t),
        order=2,
        modes=["rev"],
        atol=1e-6,
        rtol=1e-6,
    )
    # and against autodiff of the textbook formula with the same noise
    noise = jax.random.logistic(key, logits.shape, logits.dtype)
    mine = jax.grad(
        lambda lg, t: jnp.sum(jaxrelax.binary_concrete(key, lg, temperature=t) * weights), (0, 1)
    )
    plain = jax.grad(lambda lg, t: jnp.sum(jax.nn.sigmoid((lg + noise) / t) * weights), (0, 1))
    for a, b in zip(mine(logits, t), plain(logits, t), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10)


def test_gumbel_rao_gradient_is_the_mean_of_conditional_softmax_vjps(x64, rng):
    key, temperature, num_samples = jax.random.key(12), 0.4, 5
    logits = jnp.asarray(rng.normal(size=(2, 6)))
    cot = jnp.asarray(rng.normal(size=(2, 6)))
    forward_key, backward_key = jax.random.split(key)
    perturbed = [logits + jax.random.gumbel(forward_key, logits.shape, logits.dtype)]
    sample = jax.nn.one_hot(jnp.argmax(perturbed[0], -1), 6, dtype=logits.dtype)
    probs = jax.nn.softmax(logits, -1)
    for k in range(num_samples - 1):
        arrivals = _gumbel._exponentials(
            jax.random.fold_in(backward_key, k), logits.shape, logits.dtype
        )
        gaps, _ = _gumbel._conditional_gaps(probs, sample, arrivals, (1,))
        perturbed.append(gaps + 3.0)  # any per-slice shift: the softmax ignores it

    def surrogate(lg, t):  # the mean of softmax((l + g_k) / t), each g_k held fixed
        return (
            sum(jax.nn.softmax((lg + jax.lax.stop_gradient(z - logits)) / t) for z in perturbed)
            / num_samples
        )

    expected = jax.vjp(surrogate, logits, temperature)[1](cot)
    mine = jax.vjp(
        lambda lg, t: jaxrelax.gumbel_rao(key, lg, temperature=t, num_samples=num_samples),
        logits,
        temperature,
    )
    np.testing.assert_array_equal(mine[0], sample)
    for a, b in zip(mine[1](cot), expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_conditional_gaps_survive_a_zero_arrival_of_the_winner(dtype, x64):
    # An Exp(1) draw of exactly 0 (probability 2**-24 per float32 draw: it happens in long
    # training runs) once gave p_D * E_D = 0 and a NaN gradient.
    probs = jnp.array([[0.7, 0.2, 0.1], [0.2, 0.3, 0.5]], dtype)
    sample = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype)
    arrivals = jnp.array([[0.0, 0.5, 2.0], [0.0, 1.0, 0.0]], dtype)
    gaps, _ = _gumbel._conditional_gaps(probs, sample, arrivals, (1,))
    assert not jnp.isnan(gaps).any()
    np.testing.assert_array_equal(jnp.where(sample > 0, gaps, 0), 0)  # the winner to itself
    assert (gaps[0, 1:] < -80).all()  # the others arrive far later
    # Two zero draws (both clamped to the smallest normal) tie: the gap is -log(1 + 1 / p_i).
    np.testing.assert_allclose(gaps[1, 0], -np.log1p(1 / 0.2), rtol=1e-6)
    assert gaps[1, 1] < -80


@pytest.mark.parametrize("t", [1.0, 1e38])
def test_gumbel_rao_gradients_at_masked_slices_and_huge_temperatures(t):
    # A fully masked slice has zero output and zero gradients. At t = 1e38 (float32) XLA's
    # division by t, a product with a flushed 1 / t, made -inf / t NaN in the backward pass's
    # conditional samples (found by drawing t = 1e38 in every fuzz suite).
    x = jnp.array([[np.inf, -3.4e38, 0.0, 2.0], [0.5, 1.0, -1.0, 2.0]], jnp.float32)
    where = jnp.array([[False] * 4, [True] * 4])
    temperature = jnp.full((2, 1), t, jnp.float32)

    def total(x, temperature):
        sample = jaxrelax.gumbel_rao(
            jax.random.key(3), x, temperature=temperature, num_samples=3, where=where
        )
        return jnp.sum(sample * jnp.arange(1.0, 9.0).reshape(2, 4))

    dx, dt = jax.jit(jax.grad(total, (0, 1)))(x, temperature)
    np.testing.assert_array_equal(dx[0], 0)
    np.testing.assert_array_equal(dt[0], 0)
    assert np.isfinite(np.asarray(dx)).all() and np.isfinite(np.asarray(dt)).all()
