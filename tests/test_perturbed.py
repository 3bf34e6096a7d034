"""Tests of the perturbed optimizers (_perturbed.py) and of the perturbation estimator
(_perturbation.py) behind them and perturbed_topk.

The oracles: closed forms (the Gumbel-max and Gumbel-top-k tricks give softmax, logsumexp +
Euler's constant and Plackett-Luce probabilities; normal noise on two classes gives the normal
CDF), the estimator rebuilt in float64 NumPy from the same noise, and optax's perturbations
fed the same noise. Statistical assertions allow Z = 5 standard errors, estimated from the
per-sample terms: a single near-normal check fails by chance with probability about 6e-7,
and the few hundred here use fixed keys, so a run is reproducible and a pass is a pass.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax.perturbations
import pytest
from scipy import stats

import jaxrelax

Z = 5.0
EULER_GAMMA = 0.5772156649015329
KEY = jax.random.key(0)
X = np.array([0.3, -1.2, 1.1, 0.0, 0.9], np.float32)


def _gumbel(key, shape, dtype=jnp.float32):
    """The documented Gumbel noise: -log(-log(u)), u on the midpoints of the uniform grid."""
    u = jax.random.uniform(key, shape, dtype) + 2.0 ** -(jnp.finfo(dtype).nmant + 1)
    return -jnp.log(-jnp.log(u))


def _samples(key, num_samples, shape, kind="gumbel"):
    """Sample m's noise of the perturbed functions, float64, stacked: (num_samples, *shape)."""
    draw = _gumbel if kind == "gumbel" else jax.random.normal
    keys = jax.vmap(lambda m: jax.random.fold_in(key, m))(jnp.arange(num_samples))
    return np.asarray(jax.vmap(lambda k: draw(k, shape))(keys), np.float64)


def _score(z, kind="gumbel"):
    return 1 - np.exp(-z) if kind == "gumbel" else z


def _one_hot_argmax(y):
    return np.eye(y.shape[-1])[np.argmax(y, -1)]


def _within(estimate, exact, standard_error, floor=1e-6):
    estimate, exact = np.asarray(estimate, np.float64), np.asarray(exact, np.float64)
    bound = Z * np.asarray(standard_error) + floor
    assert np.all(np.abs(estimate - exact) <= bound), np.max(np.abs(estimate - exact) - bound)


def _jacobian(fn, x):
    return np.asarray(jax.jacrev(fn)(jnp.asarray(x)), np.float64)


# --- closed forms ---


@pytest.mark.parametrize("sigma", [1.0, 0.5])
def test_perturbed_argmax_is_softmax_in_expectation(sigma, rng):
    x = rng.normal(size=(6, 5)).astype(np.float32)
    num_samples = 4000
    value = jaxrelax.perturbed_argmax(KEY, x, num_samples=num_samples, sigma=sigma)
    p = np.asarray(jax.nn.softmax(np.float64(x) / sigma), np.float64)
    _within(value, p, np.sqrt(p * (1 - p) / num_samples))
    np.testing.assert_allclose(np.sum(value, -1), 1, rtol=1e-6)


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_perturbed_max_is_logsumexp_plus_euler_gamma(sigma, rng):
    x = rng.normal(size=(4, 6)).astype(np.float32)
    num_samples = 4000
    value = jaxrelax.perturbed_max(KEY, x, num_samples=num_samples, sigma=sigma)
    # The maximum of Gumbel-perturbed scores is Gumbel distributed: variance (sigma pi)^2 / 6.
    exact = sigma * jax.nn.logsumexp(np.float64(x) / sigma, -1) + sigma * EULER_GAMMA
    _within(value, exact, sigma * np.pi / np.sqrt(6 * num_samples))


@pytest.mark.parametrize("sigma", [1.0, 0.5])
def test_argmax_gradient_matches_the_softmax_jacobian(sigma):
    num_samples = 20000
    jacobian = _jacobian(
        lambda x: jaxrelax.perturbed_argmax(KEY, x, num_samples=num_samples, sigma=sigma), X
    )
    p = np.asarray(jax.nn.softmax(np.float64(X) / sigma))
    exact = (np.diag(p) - np.outer(p, p)) / sigma
    z = _samples(KEY, num_samples, X.shape)
    terms = _one_hot_argmax(X + sigma * z)[:, :, None] * _score(z)[:, None, :] / sigma
    _within(jacobian, exact, terms.std(0) / np.sqrt(num_samples))


def test_normal_noise_on_two_classes_is_the_normal_cdf():
    # P(class 1 wins) = Phi((x1 - x0) / (sigma sqrt 2)).
    x, sigma, num_samples = np.array([0.2, 0.7], np.float32), 0.8, 20000
    scale = sigma * np.sqrt(2)
    p1 = stats.norm.cdf((x[1] - x[0]) / scale)
    slope = stats.norm.pdf((x[1] - x[0]) / scale) / scale
    fn = lambda x: jaxrelax.perturbed_argmax(  # noqa: E731
        KEY, x, num_samples=num_samples, sigma=sigma, noise="normal"
    )
    _within(fn(x)[1], p1, np.sqrt(p1 * (1 - p1) / num_samples))
    z = _samples(KEY, num_samples, x.shape, "normal")
    wins = np.argmax(x + sigma * z, -1) == 1
    terms = wins[:, None] * z / sigma
    _within(_jacobian(fn, x)[1], [-slope, slope], terms.std(0) / np.sqrt(num_samples))


def _plackett_luce(x, k):
    """The probability of each entry being among the top k of x + Gumbel noise, by
    enumerating ordered draws without replacement (jnp, differentiable)."""
    weights = jnp.exp(x - jnp.max(x))
    inclusion = jnp.zeros_like(x)
    for order in itertools.permutations(range(x.shape[0]), k):
        prob, left = 1.0, jnp.sum(weights)
        for i in order:
            prob, left = prob * weights[i] / left, left - weights[i]
        inclusion = inclusion + prob * jnp.zeros_like(x).at[np.array(order)].set(1)
    return inclusion


def test_perturbed_topk_is_plackett_luce(x64):
    x, k, num_samples = np.float32([0.5, -0.3, 1.2, 0.1]), 2, 20000
    fn = lambda x: jaxrelax.perturbed_topk(KEY, x, k, num_samples=num_samples)  # noqa: E731
    exact = np.asarray(_plackett_luce(jnp.float64(x), k))
    _within(fn(x), exact, np.sqrt(exact * (1 - exact) / num_samples))
    z = _samples(KEY, num_samples, x.shape)
    masks = np.argsort(np.argsort(-(x + z), -1), -1) < k
    terms = masks[:, :, None] * _score(z)[:, None, :]
    _within(
        _jacobian(fn, x),
        _jacobian(lambda v: _plackett_luce(v, k), np.float64(x)),
        terms.std(0) / np.sqrt(num_samples),
    )


def test_a_user_ranking_solver(x64):
    # Ranks (0 for the largest) by argsort, in plain jnp: with Gumbel noise the ranking is a
    # Plackett-Luce sample, whose expectation is enumerated over the 6 orders of 3 entries.
    def ranks(y):
        return jnp.argsort(jnp.argsort(-y)).astype(jnp.float32)

    def expected_ranks(x):
        weights = jnp.exp(x - jnp.max(x))
        total = jnp.zeros_like(x)
        for order in itertools.permutations(range(3)):
            prob, left = 1.0, jnp.sum(weights)
            for i in order:
                prob, left = prob * weights[i] / left, left - weights[i]
            total = total + prob * jnp.zeros_like(x).at[np.array(order)].set(jnp.arange(3.0))
        return total

    x, num_samples = np.float32([0.4, -0.5, 0.1]), 20000
    smoothed = jaxrelax.perturbed(ranks, num_samples=num_samples, batch_size=4096)
    exact = np.asarray(expected_ranks(jnp.float64(x)))
    z = _samples(KEY, num_samples, x.shape)
    sampled = np.argsort(np.argsort(-(x + z), -1), -1).astype(np.float64)
    _within(smoothed(KEY, x), exact, sampled.std(0) / np.sqrt(num_samples))
    terms = sampled[:, :, None] * _score(z)[:, None, :]
    _within(
        _jacobian(lambda v: smoothed(KEY, v), x),
        _jacobian(expected_ranks, np.float64(x)),
        terms.std(0) / np.sqrt(num_samples),
    )


# --- the estimator, sample by sample ---


@pytest.mark.parametrize("kind", ["gumbel", "normal"])
@pytest.mark.parametrize("control_variate", [False, True])
def test_the_estimate_from_the_same_noise(kind, control_variate, rng):
    x = rng.normal(size=(3, 5)).astype(np.float32)
    cotangent = rng.normal(size=(3, 5))
    sigma, num_samples = 0.7, 50
    smoothed = jaxrelax.perturbed(
        lambda y: jaxrelax.hardmax(y),
        num_samples=num_samples,
        sigma=sigma,
        noise=kind,
        control_variate=control_variate,
    )
    value, vjp = jax.vjp(lambda x: smoothed(KEY, x), x)
    z = _samples(KEY, num_samples, x.shape, kind)
    outputs = _one_hot_argmax(x + sigma * z)
    np.testing.assert_allclose(value, outputs.mean(0), rtol=1e-6)
    baseline = _one_hot_argmax(np.float64(x)) if control_variate else 0
    pairs = np.sum(cotangent * (outputs - baseline), (1, 2))  # the whole output
    want = np.mean(pairs[:, None, None] * _score(z, kind), 0) / sigma
    np.testing.assert_allclose(vjp(jnp.float32(cotangent))[0], want, rtol=2e-5, atol=2e-6)


def test_per_slice_estimate_from_the_same_noise(rng):
    # perturbed_argmax pairs each slice's cotangent with that slice's own noise.
    x = rng.normal(size=(3, 5)).astype(np.float32)
    cotangent = rng.normal(size=(3, 5))
    num_samples = 50
    value, vjp = jax.vjp(lambda x: jaxrelax.perturbed_argmax(KEY, x, num_samples=50), x)
    z = _samples(KEY, num_samples, x.shape)
    outputs = _one_hot_argmax(x + z)
    np.testing.assert_allclose(value, outputs.mean(0), rtol=1e-6)
    pairs = np.sum(cotangent * outputs, -1, keepdims=True)
    np.testing.assert_allclose(
        vjp(jnp.float32(cotangent))[0], np.mean(pairs * _score(z), 0), rtol=2e-5, atol=2e-6
    )


def test_control_variate_lowers_the_variance():
    # The gradient of <c, E hardmax(x + Z)>, estimated 400 times with 8 samples each: every
    # choice costs about 10, which the control variate takes away.
    x = jnp.float32([2.0, 0.5, 0.0, -1.0])
    c = jnp.float32([10.0, 9.0, 10.5, 11.0])
    p = np.asarray(jax.nn.softmax(np.float64(x)))
    exact = (np.diag(p) - np.outer(p, p)) @ np.float64(c)
    keys = jax.random.split(jax.random.key(11), 400)
    variances = []
    for control_variate in [False, True]:
        smoothed = jaxrelax.perturbed(
            jaxrelax.hardmax, num_samples=8, control_variate=control_variate
        )
        grads = jax.vmap(jax.grad(lambda k, x, f=smoothed: f(k, x) @ c, 1), (0, None))(keys, x)
        grads = np.asarray(grads, np.float64)
        _within(grads.mean(0), exact, grads.std(0) / np.sqrt(len(keys)))
        variances.append(grads.var(0).sum())
    assert variances[1] < 0.05 * variances[0], variances


def test_batch_size_does_not_change_the_result(rng):
    x = rng.normal(size=(2, 6)).astype(np.float32)
    cotangent = jnp.float32(rng.normal(size=(2, 6)))
    results = []
    for batch_size in [None, 1, 3, 7, 100]:
        smoothed = jaxrelax.perturbed(jaxrelax.hardmax, num_samples=10, batch_size=batch_size)
        value, vjp = jax.vjp(lambda x, f=smoothed: f(KEY, x), x)
        results.append((value, vjp(cotangent)[0]))
    for value, grad in results[1:]:
        np.testing.assert_allclose(value, results[0][0], rtol=1e-6)
        np.testing.assert_allclose(grad, results[0][1], rtol=1e-5, atol=1e-6)


def test_optax_with_the_same_noise():
    # optax draws sample m's noise from a key of its own making: a noise object that maps
    # those keys back to m feeds it ours, and then values and gradients must agree.
    num_samples, sigma = 16, 0.8
    optax_keys = jax.vmap(lambda k: jax.random.key_data(jax.random.split(k, 1)[0]))(
        jax.random.split(KEY, num_samples)
    )

    class OurNoise(optax.perturbations.Gumbel):
        def sample(self, key, sample_shape=(), dtype=float):
            m = jnp.argmax(jnp.all(optax_keys == jax.random.key_data(key), -1))
            return _gumbel(jax.random.fold_in(KEY, m), sample_shape, dtype)

    c = jnp.float32([0.5, -1.0, 2.0, 0.0, 1.5])
    for control_variate in [False, True]:
        theirs = optax.perturbations.make_perturbed_fun(
            jaxrelax.hardmax, num_samples, sigma, OurNoise(), use_baseline=control_variate
        )
        ours = jaxrelax.perturbed(
            jaxrelax.hardmax, num_samples=num_samples, sigma=sigma, control_variate=control_variate
        )
        np.testing.assert_allclose(ours(KEY, X), theirs(KEY, X), rtol=1e-6)
        np.testing.assert_allclose(
            jax.grad(lambda x, f=ours: f(KEY, x) @ c)(X),
            jax.grad(lambda x, f=theirs: f(KEY, x) @ c)(X),
            rtol=1e-4,
            atol=1e-6,
        )


# --- the maximum and the loss ---


def test_max_gradient_is_the_argmax_and_its_second_derivative_the_estimate(rng):
    x = rng.normal(size=(3, 4)).astype(np.float32)
    where = rng.random((3, 4)) > 0.2

    def perturbed_max(x):
        return jaxrelax.perturbed_max(KEY, x, num_samples=30, where=where)

    argmax = jaxrelax.perturbed_argmax(KEY, x, num_samples=30, where=where)
    np.testing.assert_array_equal(jax.grad(lambda x: perturbed_max(x).sum())(x), argmax)
    hessian = jax.jacrev(jax.grad(lambda x: perturbed_max(x).sum()))(x)
    estimate = jax.jacrev(lambda x: jaxrelax.perturbed_argmax(KEY, x, num_samples=30, where=where))
    np.testing.assert_allclose(hessian, estimate(x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("sigma", [1.0, 0.5])
def test_fy_loss_is_the_cross_entropy_plus_euler_gamma(sigma, rng):
    x = rng.normal(size=(5, 4)).astype(np.float32)
    labels = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 5)]
    num_samples = 4000
    loss, grad = jax.value_and_grad(
        lambda x: jaxrelax.perturbed_fy_loss(
            KEY, x, labels, num_samples=num_samples, sigma=sigma
        ).sum()
    )(x)
    losses = jaxrelax.perturbed_fy_loss(KEY, x, labels, num_samples=num_samples, sigma=sigma)
    z = np.float64(x) / sigma
    cross_entropy = jax.nn.logsumexp(z, -1) - np.sum(z * labels, -1)
    _within(losses, sigma * cross_entropy + sigma * EULER_GAMMA, sigma * np.pi / np.sqrt(6 * 4000))
    np.testing.assert_allclose(loss, losses.sum(), rtol=1e-6)
    argmax = jaxrelax.perturbed_argmax(KEY, x, num_samples=num_samples, sigma=sigma)
    np.testing.assert_allclose(grad, argmax - labels, atol=1e-6)


def test_fy_loss_gradient_vanishes_in_expectation_at_matching_labels(rng):
    x = rng.normal(size=(8, 5)).astype(np.float32)
    labels = jax.nn.softmax(x)
    num_samples = 4000
    grad = jax.grad(
        lambda x: jaxrelax.perturbed_fy_loss(KEY, x, labels, num_samples=num_samples).sum()
    )(x)
    p = np.asarray(labels, np.float64)
    _within(grad, 0, np.sqrt(p * (1 - p) / num_samples))
    labels_grad = jax.grad(lambda y: jaxrelax.perturbed_fy_loss(KEY, x, y).sum())(labels)
    np.testing.assert_allclose(labels_grad, -x, rtol=1e-6)


def test_fy_loss_labels_gradient_is_minus_x_at_zero_labels_too():
    """The loss is affine in the labels, with slope -x: one-hot labels (zeros off the class)
    included, masked classes and -inf scores 0, and no NaN in a slice holding +inf."""
    inf = np.inf
    x = np.float32([[0.5, -1.0, 1.5, 4.0], [2.0, 3.0, -inf, 7.0], [inf, 1.0, 2.0, inf]])
    where = np.array([[True] * 4, [True, True, True, False], [True] * 4])
    one_hot = np.eye(4, dtype=np.float32)[[2, 0, 0]]

    def loss(labels):
        return jaxrelax.perturbed_fy_loss(KEY, x, labels, num_samples=10, where=where)

    grad = jax.grad(lambda y: loss(y)[:2].sum())(one_hot)
    np.testing.assert_allclose(grad[0], -x[0], rtol=1e-6)
    np.testing.assert_allclose(grad[1], [-2.0, -3.0, 0.0, 0.0], rtol=1e-6)  # -inf, masked: 0
    np.testing.assert_array_equal(grad[2], 0)
    # Central differences in each label (exact up to rounding: the loss is affine in them).
    for i in range(4):
        step = np.zeros_like(one_hot)
        step[0, i] = 0.25
        slope = (loss(one_hot + step)[0] - loss(one_hot - step)[0]) / 0.5
        np.testing.assert_allclose(slope, -x[0, i], rtol=1e-5, atol=1e-5)
    # The +inf slice: finite gradient, 0 on the +inf entries.
    grad_inf = jax.grad(lambda y: loss(y)[2])(one_hot)
    assert not np.isnan(grad_inf).any()
    np.testing.assert_array_equal(grad_inf[2, [0, 3]], 0)


# --- edges ---


def test_masked_and_infinite_entries():
    inf = np.inf
    x = np.float32(
        [
            [1.0, 50.0, 0.0, -inf],  # 50 is masked
            [inf, 1.0, inf, 2.0],  # the +inf entries share every win
            [-inf, -inf, -inf, 9.0],  # 9 is masked: nothing left
            [np.nan, 1.0, 2.0, 3.0],
        ]
    )
    where = np.array([[True, False, True, True], [True] * 4, [True, True, True, False], [True] * 4])
    labels = np.eye(4, dtype=np.float32)[[0, 0, 0, 1]]
    kwargs = dict(num_samples=200, where=where)
    argmax, argmax_grad = (
        jax.value_and_grad(
            lambda x: jnp.nansum(jaxrelax.perturbed_argmax(KEY, x, **kwargs) * np.arange(4))
        )(x),
        jax.grad(lambda x: jnp.nansum(jaxrelax.perturbed_argmax(KEY, x, **kwargs)[:, 0]))(x),
    )
    del argmax
    value = jaxrelax.perturbed_argmax(KEY, x, **kwargs)
    np.testing.assert_array_equal(value[0, [1, 3]], 0)
    np.testing.assert_array_equal(value[1, [1, 3]], 0)
    assert 0.3 < value[1, 0] < 0.7 and value[1, 0] + value[1, 2] == 1
    np.testing.assert_array_equal(value[2], 0)
    assert np.all(np.isnan(value[3]))
    for grad in [argmax_grad]:
        np.testing.assert_array_equal(grad[0, [1, 3]], 0)
        np.testing.assert_array_equal(grad[1:3], 0)  # every entry is fixed, or masked
        assert np.all(np.isnan(grad[3]))
        assert np.all(np.isfinite(grad[:3]))
    maximum = jaxrelax.perturbed_max(KEY, x, **kwargs)
    assert np.isfinite(maximum[0]) and maximum[1] == inf and maximum[2] == -inf
    assert np.isnan(maximum[3])
    max_grad = jax.grad(lambda x: jnp.nansum(jaxrelax.perturbed_max(KEY, x, **kwargs)[:3]))(x)
    np.testing.assert_array_equal(max_grad[:3], np.nan_to_num(value[:3]))
    loss = jaxrelax.perturbed_fy_loss(KEY, x, labels, **kwargs)
    assert np.isfinite(loss[0]) and np.isfinite(loss[1]) and loss[2] == 0 and np.isnan(loss[3])
    # Label mass off the +inf entries makes the loss +inf.
    assert jaxrelax.perturbed_fy_loss(KEY, x[1:2], labels[3:4])[0] == inf
    topk = jaxrelax.perturbed_topk(KEY, x, 2, **kwargs)
    np.testing.assert_array_equal(topk[1], [1, 0, 1, 0])
    np.testing.assert_allclose(topk[0], [1, 0, 1, 0])  # only two entries compete
    np.testing.assert_array_equal(topk[2], 0)
    topk_grad = jax.grad(lambda x: jnp.nansum(jaxrelax.perturbed_topk(KEY, x, 2, **kwargs)[:3]))(x)
    # Masked and -inf entries get 0; the others of rows 0 and 1, whose choice is fixed, get
    # an estimate that is 0 only in expectation.
    np.testing.assert_array_equal(topk_grad[0, [1, 3]], 0)
    np.testing.assert_array_equal(topk_grad[2], 0)
    assert np.all(np.isfinite(topk_grad[:3]))


def test_half_precision_and_integers(rng):
    x = rng.normal(size=(3, 5))
    for dtype in [jnp.float16, jnp.bfloat16]:
        xd = jnp.asarray(x, dtype)
        for fn in [
            lambda x: jaxrelax.perturbed_argmax(KEY, x),
            lambda x: jaxrelax.perturbed_topk(KEY, x, 2),
            lambda x: jaxrelax.perturbed_max(KEY, x),
            lambda x: jaxrelax.perturbed(jaxrelax.hardmax)(KEY, x),
        ]:
            value, vjp = jax.vjp(fn, xd)
            assert value.dtype == dtype and vjp(jnp.ones_like(value))[0].dtype == dtype
        np.testing.assert_allclose(
            jaxrelax.perturbed_argmax(KEY, xd).astype(np.float32),
            jaxrelax.perturbed_argmax(KEY, xd.astype(np.float32)),
            atol=1e-3,
        )
    ints = jnp.int32([[3, 1, 2]])
    assert jaxrelax.perturbed_argmax(KEY, ints).dtype == jnp.float32


def test_same_key_same_value_and_gradient(rng):
    x = jnp.float32(rng.normal(size=(4, 6)))

    def both(key):
        return jax.value_and_grad(
            lambda x: jnp.sum(jaxrelax.perturbed_argmax(key, x, num_samples=20) ** 2)
        )(x)

    first, again, other = both(KEY), both(jax.random.PRNGKey(0)), both(jax.random.key(1))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(first[1], other[1])


# --- transformations and layouts ---


def test_jit_vmap_and_tuple_axes(rng):
    x = jnp.float32(rng.normal(size=(2, 3, 4)))
    plain = jaxrelax.perturbed_argmax(KEY, x, axis=(0, 2), num_samples=16)
    # The noise is drawn for the slices laid out as rows: (3, 8) here.
    rows = jnp.transpose(x, (1, 0, 2)).reshape(3, 8)
    as_rows = jaxrelax.perturbed_argmax(KEY, rows, num_samples=16)
    np.testing.assert_array_equal(plain, jnp.transpose(as_rows.reshape(3, 2, 4), (1, 0, 2)))
    jitted = jax.jit(lambda k, x: jaxrelax.perturbed_argmax(k, x, axis=(0, 2), num_samples=16))
    np.testing.assert_array_equal(jitted(KEY, x), plain)
    everything = jaxrelax.perturbed_max(KEY, x, axis=None, num_samples=16)
    np.testing.assert_allclose(
        everything, jaxrelax.perturbed_max(KEY, x.reshape(-1), num_samples=16), rtol=1e-6
    )
    keys = jax.random.split(KEY, 2)
    batched = jax.vmap(lambda k, x: jaxrelax.perturbed_max(k, x, num_samples=16))(keys, x)
    for i in range(2):
        np.testing.assert_allclose(
            batched[i], jaxrelax.perturbed_max(keys[i], x[i], num_samples=16), rtol=1e-6
        )
    grads = jax.vmap(jax.grad(lambda x: jaxrelax.perturbed_fy_loss(KEY, x, x > 0).sum()))(x)
    np.testing.assert_allclose(
        grads[1], jax.grad(lambda x: jaxrelax.perturbed_fy_loss(KEY, x, x > 0).sum())(x[1])
    )


def test_perturbed_takes_pytrees_and_arguments(rng):
    x = jnp.float32(rng.normal(size=(5,)))
    threshold = jnp.float32(0.1)

    def solver(y, threshold):
        return {"chosen": y > threshold, "count": jnp.sum(y > threshold, dtype=jnp.int32)}

    smoothed = jaxrelax.perturbed(solver, num_samples=64, noise="normal", sigma=0.5)
    out = smoothed(KEY, x, threshold)
    assert out["chosen"].dtype == jnp.float32 and out["count"].dtype == jnp.float32
    np.testing.assert_allclose(out["count"], out["chosen"].sum(), rtol=1e-6)
    z = _samples(KEY, 64, x.shape, "normal")
    np.testing.assert_allclose(out["chosen"], np.mean(x + 0.5 * z > 0.1, 0), rtol=1e-6)
    grad_x, grad_threshold = jax.grad(lambda x, t: smoothed(KEY, x, t)["count"], argnums=(0, 1))(
        x, threshold
    )
    assert np.all(np.isfinite(grad_x)) and np.any(grad_x != 0)
    assert grad_threshold == 0  # only x receives a gradient


def test_the_backward_pass_keeps_nothing_sample_sized(rng):
    x = jnp.float32(rng.normal(size=(4, 8)))
    num_samples = 64
    for fn in [
        lambda x: jaxrelax.perturbed_argmax(KEY, x, num_samples=num_samples),
        lambda x: jaxrelax.perturbed_topk(KEY, x, 3, num_samples=num_samples),
        lambda x: jaxrelax.perturbed_max(KEY, x, num_samples=num_samples),
        lambda x: jaxrelax.perturbed_fy_loss(KEY, x, x > 0, num_samples=num_samples),
        lambda x: jaxrelax.perturbed(jaxrelax.hardmax, num_samples=num_samples)(KEY, x),
    ]:
        _, vjp = jax.vjp(fn, x)
        sizes = [np.size(leaf) for leaf in jax.tree_util.tree_leaves(vjp)]
        assert max(sizes) <= x.size, sizes
        assert sum(size == x.size for size in sizes) <= 4, sizes


def test_memory_is_flat_in_num_samples_with_batches(rng):
    x = jnp.float32(rng.normal(size=(32, 64)))

    def peak(num_samples):
        smoothed = jaxrelax.perturbed(jaxrelax.hardmax, num_samples=num_samples, batch_size=4)

        def value_and_grad(x):
            return jax.value_and_grad(lambda x: jnp.sum(smoothed(KEY, x) ** 2))(x)

        return jax.jit(value_and_grad).lower(x).compile().memory_analysis().temp_size_in_bytes

    small, large = peak(8), peak(512)
    assert large <= 1.25 * small, (small, large)
    assert large < 512 * x.nbytes / 8  # far below one array per sample


def test_hessian_of_perturbed_max_is_the_jacobian_of_the_perturbed_argmax():
    """jax.hessian (forward over reverse) works on `perturbed`, as the README says: for the
    perturbed maximum it is the Jacobian of the perturbed argmax on the same noise (Berthet
    et al., Prop. 2.2), the same as jax.jacrev(jax.grad(f))."""
    x = jnp.array([0.5, -1.0, 1.5, 0.0])
    smooth_max = jaxrelax.perturbed(lambda y: jnp.max(y, -1), num_samples=500)

    def f(x):
        return smooth_max(KEY, x)

    hessian = jax.hessian(f)(x)
    np.testing.assert_allclose(hessian, jax.jacrev(jax.grad(f))(x), rtol=1e-5, atol=1e-6)
    argmax_jacobian = jax.jacrev(lambda x: jaxrelax.perturbed_argmax(KEY, x, num_samples=500))
    np.testing.assert_allclose(hessian, argmax_jacobian(x).T, rtol=1e-5, atol=1e-6)
    assert np.abs(hessian).max() > 0.01


@pytest.mark.parametrize("name", ["perturbed_argmax", "perturbed_topk"])
def test_hessian_of_a_perturbed_choice_is_zero(name):
    """The choices' estimates are piecewise constant in x sample by sample, so jax.hessian of
    a linear function of them works and is exactly 0, as jax.jacrev(jax.grad(f)) is."""
    w = jnp.array([1.0, -2.0, 0.5, 3.0])
    x = jnp.array([0.5, -1.0, 1.5, 0.0])
    choice = {
        "perturbed_argmax": lambda x: jaxrelax.perturbed_argmax(KEY, x, num_samples=64),
        "perturbed_topk": lambda x: jaxrelax.perturbed_topk(KEY, x, 2, num_samples=64),
    }[name]
    hessian = jax.hessian(lambda x: choice(x) @ w)(x)
    np.testing.assert_array_equal(hessian, 0)
    np.testing.assert_array_equal(jax.jacrev(jax.grad(lambda x: choice(x) @ w))(x), 0)
    assert np.abs(jax.grad(lambda x: choice(x) @ w)(x)).max() > 0  # the estimate itself is not


def test_hessian_of_perturbed_max_raises_as_documented():
    for fn in [
        lambda x: jaxrelax.perturbed_max(KEY, x, num_samples=8),
        lambda x: jaxrelax.perturbed_fy_loss(KEY, x, jnp.eye(3)[2], num_samples=8),
    ]:
        with pytest.raises(TypeError, match="forward-mode"):
            jax.hessian(fn)(jnp.array([0.5, -1.0, 1.5]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("num_samples, batch_size", [(1000, None), (20000, None), (20000, 5000)])
def test_the_control_variate_is_the_plain_estimate_less_the_baselines(
    dtype, num_samples, batch_size
):
    """On the same noise, the control variate's estimate is the plain one less the estimate
    for the constant function f(x) (its baseline): an identity, exact up to rounding. (The
    audit's reproducer: in float32 at 20000 samples in one batch it was 3x too small.)"""
    with jax.enable_x64(dtype == "float64"):
        x = jnp.asarray([0.5, -1.0, 1.5, 0.0, 1.0], dtype)
        w = jnp.asarray([1.0, -2.0, 0.5, 3.0, 0.0], dtype)
        key = jax.random.key(99)

        def one_hot_argmax(y):
            return jax.nn.one_hot(jnp.argmax(y, -1), y.shape[-1], dtype=y.dtype)

        baseline = one_hot_argmax(x)
        options = dict(num_samples=num_samples, noise="normal", batch_size=batch_size)

        def estimate(fn, control_variate=False):
            smoothed = jaxrelax.perturbed(fn, control_variate=control_variate, **options)
            return np.asarray(jax.grad(lambda x: smoothed(key, x) @ w)(x), np.float64)

        plain = estimate(one_hot_argmax)
        controlled = estimate(one_hot_argmax, control_variate=True)
        constant = estimate(lambda y: jnp.broadcast_to(baseline, y.shape))
        np.testing.assert_allclose(controlled, plain - constant, atol=2e-3)
        assert np.abs(plain).max() > 0.1  # the estimates are not trivially 0


def test_perturbed_takes_a_pytree_as_one_flat_vector():
    """A pytree x is perturbed as the vector of its leaves (ravel_pytree order): value and
    gradient are exactly those of the flattened function on the same key, the gradient in x's
    structure, under jit too; integer leaves and an empty pytree are refused."""
    x = {"a": jnp.array([0.5, -1.0]), "b": jnp.array([[1.5, 0.0, 1.0]])}
    w = jnp.arange(5.0)

    def on_tree(t):
        return jax.nn.one_hot(jnp.argmax(jnp.concatenate([t["a"], t["b"].ravel()])), 5)

    def on_vector(v):
        return jax.nn.one_hot(jnp.argmax(v), 5)

    tree_fn = jaxrelax.perturbed(on_tree, num_samples=200)
    vector_fn = jaxrelax.perturbed(on_vector, num_samples=200)
    flat = jnp.concatenate([x["a"], x["b"].ravel()])
    np.testing.assert_array_equal(tree_fn(KEY, x), vector_fn(KEY, flat))
    np.testing.assert_array_equal(jax.jit(tree_fn)(KEY, x), vector_fn(KEY, flat))
    grad = jax.grad(lambda x: tree_fn(KEY, x) @ w)(x)
    want = jax.grad(lambda v: vector_fn(KEY, v) @ w)(flat)
    assert jax.tree.structure(grad) == jax.tree.structure(x)
    np.testing.assert_array_equal(grad["a"], want[:2])
    np.testing.assert_array_equal(grad["b"], want[2:].reshape(1, 3))
    with pytest.raises(TypeError, match="floating-point"):
        tree_fn(KEY, {"a": jnp.array([1, 2])})
    with pytest.raises(TypeError, match="x must be"):
        tree_fn(KEY, {})


def test_perturbed_pytree_against_the_closed_form():
    """f(t) = sum(a**2) + sum(b) under normal noise: E f(x + sigma Z) = sum(a**2) +
    sigma**2 len(a) + sum(b), with gradient (2 a, 1); the estimates are within 6 standard
    errors (estimated from the samples' spread) of them."""
    a, b, sigma, n = jnp.array([0.5, -1.0, 2.0]), jnp.array([[1.5, 0.0]]), 0.5, 4000
    smoothed = jaxrelax.perturbed(
        lambda t: jnp.sum(t["a"] ** 2) + jnp.sum(t["b"]),
        num_samples=n,
        sigma=sigma,
        noise="normal",
        control_variate=True,
    )
    x = {"a": a, "b": b}
    value = smoothed(KEY, x)
    np.testing.assert_allclose(value, np.sum(a**2) + sigma**2 * 3 + np.sum(b), atol=0.1)
    grad = jax.grad(lambda x: smoothed(KEY, x))(x)
    # per-sample estimates (f(x + s z) - f(x)) z / s have a spread of about 2 |a| + 2 s
    se = (2 * np.abs(np.asarray(a)).max() + 2 * sigma) / np.sqrt(n)
    np.testing.assert_allclose(grad["a"], 2 * a, atol=6 * se)
    np.testing.assert_allclose(grad["b"], np.ones((1, 2)), atol=6 * se)
