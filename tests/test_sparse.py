import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads
from reference import (
    EDGE_EMPTY_ROWS,
    EDGE_NAN_ROW,
    EDGE_WHERE,
    EDGE_X,
    np_entmax,
    np_entmax15,
    np_entmax_loss,
    np_softmax,
    np_sparsemax,
)

import jaxrelax

INF = np.inf
REFERENCES = {"sparsemax": np_sparsemax, "entmax15": np_entmax15}
FUNCTIONS = {"sparsemax": jaxrelax.sparsemax, "entmax15": jaxrelax.entmax15}
TOLERANCE = {np.float32: 1e-6, np.float64: 1e-12}


def _adversarial(rng):
    return {
        "ties": np.array([[1.0, 1.0, 1.0, 0.0, 0.0], [2.0, 2.0, 0.0, 0.0, -5.0]]),
        "many ties": rng.integers(0, 3, size=(4, 1000)).astype(float),
        "huge range": rng.normal(size=(4, 100)) * 1e6,
        "tiny range": 1.0 + rng.normal(size=(4, 1000)) * 1e-6,
        "nearly equal top": np.concatenate(
            [np.full((2, 1), 5.0), np.full((2, 1), 5.0 - 1e-7), rng.normal(size=(2, 98))], 1
        ),
        "n=1": rng.normal(size=(5, 1)),
        "n=131072 dense": rng.normal(size=(2, 131072)) * 0.01,
        "n=131072 sparse": rng.normal(size=(2, 131072)) * 10,
        "two elements": np.array([[0.3, -0.2], [5.0, -5.0], [0.1, 0.1], [0.0, 1.5]]),
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", FUNCTIONS)
def test_matches_sort_based_reference_on_adversarial_inputs(name, dtype, rng):
    with jax.enable_x64(dtype == np.float64):
        for case, x in _adversarial(rng).items():
            x = np.asarray(x, dtype)  # the reference sees the same, already rounded input
            out = np.asarray(FUNCTIONS[name](jnp.asarray(x)))
            assert out.dtype == dtype
            np.testing.assert_allclose(
                out, REFERENCES[name](x), rtol=0, atol=TOLERANCE[dtype], err_msg=case
            )
            assert (out >= 0).all(), case
            np.testing.assert_allclose(out.sum(-1), 1, atol=20 * np.finfo(dtype).eps, err_msg=case)


@pytest.mark.parametrize("temperature", [0.05, 1.0, 20.0])
@pytest.mark.parametrize("shape, axis", [((6, 50), -1), ((6, 50), 0), ((3, 4, 20), (0, 2))])
@pytest.mark.parametrize("name", FUNCTIONS)
def test_matches_reference_on_random_inputs(name, shape, axis, temperature, rng):
    x = rng.normal(size=shape).astype(np.float32)
    out = FUNCTIONS[name](x, axis, temperature=temperature)
    np.testing.assert_allclose(out, REFERENCES[name](x, axis, temperature), rtol=0, atol=1e-6)


@pytest.mark.parametrize("alpha", [1.2, 1.7, 3.0])
def test_general_alpha_matches_bisection_reference(alpha, rng, x64):
    # alpha > 2 is ill-conditioned at the support's edge (p ~ r ** (1 / (alpha - 1)) with an
    # infinite slope at 0): float64 gets 1e-9 there, float32 about 3e-5.
    x = rng.normal(size=(5, 300))
    for temperature in [0.2, 1.0, 5.0]:
        out = jaxrelax.entmax(jnp.asarray(x), alpha=alpha, temperature=temperature)
        np.testing.assert_allclose(out, np_entmax(x, alpha, -1, temperature), atol=1e-9)
    with jax.enable_x64(False):
        x32 = x.astype(np.float32)
        out = jaxrelax.entmax(x32, alpha=alpha)
        np.testing.assert_allclose(out, np_entmax(x32, alpha), atol=5e-5)


def test_closed_forms():
    # Two-element sparsemax is a clipped line: p1 = clip((z1 - z2 + 1) / 2, 0, 1).
    for d in [-3.0, -1.0, -0.4, 0.0, 0.7, 2.5]:
        expected = np.clip((d + 1) / 2, 0, 1)
        np.testing.assert_allclose(
            jaxrelax.sparsemax(jnp.array([d, 0.0])), [expected, 1 - expected], atol=1e-7
        )
    # Two-element 1.5-entmax: with h = (z1 - z2) / 2, p1 = ((h + sqrt(2 - h^2)) / 2)^2 while
    # |h| < 1, and one-hot beyond.
    for d in [-3.0, -2.0, -0.8, 0.0, 0.5, 1.9, 4.0]:
        h = d / 2
        if abs(h) >= 1:
            expected = float(h > 0)
        else:
            expected = ((h + np.sqrt(2 - h * h)) / 2) ** 2
        np.testing.assert_allclose(
            jaxrelax.entmax15(jnp.array([d, 0.0])), [expected, 1 - expected], atol=1e-6
        )


def test_entmax_special_alphas(rng):
    x = rng.normal(size=(4, 30)).astype(np.float32)
    np.testing.assert_array_equal(jaxrelax.entmax(x, alpha=1.0), jaxrelax.softmax(x))
    np.testing.assert_array_equal(jaxrelax.entmax(x, alpha=2.0), jaxrelax.sparsemax(x))
    np.testing.assert_array_equal(jaxrelax.entmax(x, alpha=1.5), jaxrelax.entmax15(x))
    # a traced alpha goes through the general solver, and alpha = 1 through softmax
    traced = jax.jit(lambda x, a: jaxrelax.entmax(x, alpha=a))
    for alpha, expected in [(1.0, np_softmax(x)), (1.5, np_entmax15(x)), (2.0, np_sparsemax(x))]:
        np.testing.assert_allclose(traced(x, jnp.float32(alpha)), expected, atol=2e-6)
    # one alpha per slice
    alphas = jnp.array([[1.0], [1.5], [2.0], [3.0]], jnp.float32)
    per_slice = jaxrelax.entmax(x, alpha=alphas)
    for i, alpha in enumerate([1.0, 1.5, 2.0, 3.0]):
        np.testing.assert_allclose(per_slice[i], np_entmax(x[i], alpha), atol=5e-5)


# --- gradients ---


@pytest.mark.parametrize("name", FUNCTIONS)
def test_jacobian_closed_form(name, rng, x64):
    x = jnp.asarray(rng.normal(size=12))
    p = np.asarray(FUNCTIONS[name](x, temperature=0.5))
    s = (p > 0).astype(float) if name == "sparsemax" else np.sqrt(p)
    expected = (np.diag(s) - np.outer(s, s) / s.sum()) / 0.5
    np.testing.assert_allclose(
        jax.jacrev(lambda x: FUNCTIONS[name](x, temperature=0.5))(x), expected, atol=1e-12
    )


@pytest.mark.parametrize(
    "fn",
    [
        lambda x, t: jaxrelax.sparsemax(x, temperature=t),
        lambda x, t: jaxrelax.entmax15(x, temperature=t),
        lambda x, t: jaxrelax.entmax(x, alpha=1.3, temperature=t),
        lambda x, t: jaxrelax.entmax(x, alpha=2.5, temperature=t),
    ],
    ids=["sparsemax", "entmax15", "entmax1.3", "entmax2.5"],
)
def test_check_grads_away_from_support_changes(fn, x64):
    # Well-separated scores: a small perturbation does not change the support.
    x = jnp.array([[2.0, 1.3, 0.3, -1.0, -2.5], [0.9, 1.4, -0.2, 0.1, -3.0]])
    weights = jnp.arange(1.0, 6.0)
    check_grads(
        lambda x, t: jnp.sum(fn(x, t) * weights), (x, 0.9), order=1, modes=["rev"], eps=1e-6
    )


def test_alpha_gradient_matches_finite_differences(x64, rng):
    x = jnp.asarray(rng.normal(size=(3, 8)))
    weights = jnp.asarray(rng.normal(size=(3, 8)))

    def loss(alpha):
        return jnp.sum(jaxrelax.entmax(x, alpha=alpha, temperature=0.7) * weights)

    for alpha in [1.3, 1.5, 2.0, 2.7]:
        numeric = (loss(alpha + 1e-6) - loss(alpha - 1e-6)) / 2e-6
        np.testing.assert_allclose(jax.grad(loss)(alpha), numeric, rtol=1e-5, atol=1e-9)
    # one alpha per slice gets one gradient per slice
    alphas = jnp.array([[1.3], [1.6], [2.2]])
    grads = jax.grad(lambda a: jnp.sum(jaxrelax.entmax(x, alpha=a) * weights))(alphas)
    assert grads.shape == (3, 1)


# --- edges ---


@pytest.mark.parametrize("name", FUNCTIONS)
def test_masks_and_infinities(name):
    out = np.asarray(FUNCTIONS[name](EDGE_X, where=EDGE_WHERE))
    np.testing.assert_allclose(out, REFERENCES[name](EDGE_X, where=EDGE_WHERE), atol=1e-6)
    assert np.isnan(out[EDGE_NAN_ROW]).all()
    others = np.arange(len(EDGE_X)) != EDGE_NAN_ROW
    np.testing.assert_array_equal(out[EDGE_EMPTY_ROWS], 0)
    grad = np.asarray(
        jax.grad(lambda x: jnp.nansum(FUNCTIONS[name](x, where=EDGE_WHERE) * jnp.arange(4.0)))(
            EDGE_X
        )
    )
    assert np.isfinite(grad[others]).all()
    ignored = ~EDGE_WHERE | np.isneginf(EDGE_X)
    assert (grad[others][ignored[others]] == 0).all()


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", FUNCTIONS)
def test_half_precision(name, dtype, rng):
    x = jnp.asarray(rng.normal(size=(3, 40)), dtype)
    out = FUNCTIONS[name](x)
    assert out.dtype == dtype
    expected = FUNCTIONS[name](x.astype(jnp.float32)).astype(dtype)
    np.testing.assert_array_equal(out.astype(jnp.float32), expected.astype(jnp.float32))
    grad = jax.grad(lambda x: jnp.sum(FUNCTIONS[name](x).astype(jnp.float32) * jnp.arange(40.0)))(x)
    assert grad.dtype == dtype


def test_bad_arguments():
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="alpha must be finite and >= 1"):
        jaxrelax.entmax(x, alpha=0.5)
    with pytest.raises(ValueError, match="alpha must be finite and >= 1"):
        jaxrelax.entmax(x, alpha=jnp.array([[1.5], [0.9]]))
    with pytest.raises(ValueError, match="alpha of shape"):
        jaxrelax.entmax(x, alpha=jnp.ones((2, 3)) * 1.5)
    with pytest.raises(ValueError, match="temperature"):
        jaxrelax.sparsemax(x, temperature=0.0)
    with pytest.raises(ValueError, match="labels of shape"):
        jaxrelax.sparsemax_loss(x, jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="labels of shape"):
        jaxrelax.entmax_loss(x, jnp.ones(3))
    with pytest.raises(ValueError, match="alpha must be finite and >= 1"):
        jaxrelax.entmax_loss(x, jnp.ones((2, 3)) / 3, alpha=0.0)


# --- Fenchel-Young losses ---


@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0, 1.3])
def test_losses_match_their_definition(alpha, rng, x64):
    x = rng.normal(size=(6, 9)) * 2
    labels = np.eye(9)[rng.integers(0, 9, size=6)]
    labels[0] = rng.dirichlet(np.ones(9))  # a distribution too
    loss = jaxrelax.entmax_loss(jnp.asarray(x), jnp.asarray(labels), alpha=alpha, temperature=0.8)
    expected = np_entmax_loss(x, labels, alpha, -1, 0.8)
    np.testing.assert_allclose(loss, expected, rtol=1e-9, atol=1e-12)
    assert (np.asarray(loss) >= -1e-12).all()
    # gradient = (prediction - labels) / temperature
    grad = jax.grad(
        lambda x: jnp.sum(jaxrelax.entmax_loss(x, labels, alpha=alpha, temperature=0.8))
    )(jnp.asarray(x))
    prediction = np_entmax(x, alpha, -1, 0.8)
    np.testing.assert_allclose(grad, (prediction - labels) / 0.8, rtol=1e-9, atol=1e-12)


def test_loss_is_zero_when_the_prediction_is_the_label():
    x = jnp.array([[5.0, 0.0, 0.0], [0.0, 3.0, -1.0]])
    labels = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert (jaxrelax.sparsemax_loss(x, labels) == 0).all()
    assert (jaxrelax.entmax_loss(x, labels) == 0).all()
    p = jaxrelax.entmax15(jnp.array([1.0, 0.5, -2.0]))
    assert jaxrelax.entmax_loss(jnp.array([1.0, 0.5, -2.0]), p) == pytest.approx(0, abs=1e-6)


def test_sparsemax_loss_matches_optax(rng):
    x = jnp.asarray(rng.normal(size=(8, 10)), jnp.float32)
    classes = rng.integers(0, 10, size=8)
    labels = jax.nn.one_hot(classes, 10)
    np.testing.assert_allclose(
        jaxrelax.sparsemax_loss(x, labels),
        optax.losses.multiclass_sparsemax_loss(x, jnp.asarray(classes)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_loss_gradients_for_temperature_and_alpha(x64, rng):
    x = jnp.asarray(rng.normal(size=(4, 7)))
    labels = jnp.asarray(np.eye(7)[rng.integers(0, 7, size=4)])

    def total(t, alpha):
        return jnp.sum(jaxrelax.entmax_loss(x, labels, alpha=alpha, temperature=t))

    for t, alpha in [(0.7, 1.5), (1.3, 2.0), (0.9, 1.3)]:
        dt, dalpha = jax.grad(total, argnums=(0, 1))(t, alpha)
        np.testing.assert_allclose(
            dt, (total(t + 1e-6, alpha) - total(t - 1e-6, alpha)) / 2e-6, rtol=1e-5
        )
        np.testing.assert_allclose(
            dalpha, (total(t, alpha + 1e-6) - total(t, alpha - 1e-6)) / 2e-6, rtol=1e-5, atol=1e-9
        )


def test_loss_masks():
    x = jnp.array([[2.0, 1e30, 0.5, -jnp.inf], [1.0, 0.0, 0.0, 0.0]])
    where = jnp.array([[True, False, True, True], [True, True, True, True]])
    labels = jnp.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    loss = jaxrelax.sparsemax_loss(x, labels, where=where)
    expected = np_entmax_loss(np.array([[2.0, 0.5]]), np.array([[1.0, 0.0]]), 2.0)
    np.testing.assert_allclose(loss[0], expected[0], rtol=1e-6)
    grad = jax.grad(lambda x: jnp.sum(jaxrelax.sparsemax_loss(x, labels, where=where)))(x)
    assert grad[0, 1] == 0 and grad[0, 3] == 0 and jnp.isfinite(grad).all()


@pytest.mark.parametrize("alpha", [1.25, 3.0, 6.0])
def test_general_alpha_sums_to_one_at_the_support_edge(alpha):
    # A score just inside the support's edge: beta = 1 / (alpha - 1) < 1 magnifies rounding.
    edge = 1 / (alpha - 1)
    x = jnp.array([[-edge * (1 - 1e-6), 0.0], [-edge * (1 + 1e-6), 0.0], [-edge / 2, 0.0]])
    out = jaxrelax.entmax(x, alpha=alpha)
    np.testing.assert_allclose(out.sum(-1), 1, atol=4 * np.finfo(np.float32).eps)
    assert (out >= 0).all()
    np.testing.assert_allclose(out, np_entmax(np.asarray(x), alpha), atol=1e-3)


def test_counting_passes_records_each_solve_while_on():
    # One entry 2 above the others: sparsemax is its one-hot, and the first step from the
    # bracket's left end (where it alone has mass 1) already meets the total.
    x = jnp.array([[3.0, 1.0, 0.5, -1.0], [0.1, 0.2, 0.3, 0.4]])
    with jaxrelax._threshold.counting_passes() as passes:
        p = jax.block_until_ready(jaxrelax.sparsemax(x[:1]))
        jax.block_until_ready(jaxrelax.soft_topk(x, 2))
    np.testing.assert_array_equal(p, [[1, 0, 0, 0]])
    assert passes[0] == 1 and len(passes) == 2 and passes[1] >= 2
    jax.block_until_ready(jaxrelax.sparsemax(x))  # off: nothing recorded
    assert len(passes) == 2


@pytest.mark.parametrize("alpha", [1.5, 2.0, 3.0])
@pytest.mark.parametrize("t", [1.0, 1e38])
def test_loss_labels_gradient_with_huge_scores_and_temperatures(alpha, t):
    # d loss / d labels = g (labels^(alpha - 1) / (alpha - 1) - x / t), in float64. In float32
    # g / t is flushed to 0 at t = 1e38: x times it lost x / t = 3.4 at finfo.max and gave
    # NaN at +inf (found by drawing t = 1e38 in every fuzz suite).
    labels = np.array([0.5, 0.5])
    g = 0.3
    for x in ([3.4028235e38, 1.0], [0.0, np.inf], [3.0, 1.0]):
        x32 = jnp.asarray(x, jnp.float32)
        grad = jax.grad(
            lambda y, x=x32: g * jaxrelax.entmax_loss(x, y, alpha=alpha, temperature=t)
        )(jnp.asarray(labels, jnp.float32))
        expected = g * (labels ** (alpha - 1) / (alpha - 1) - np.asarray(x32, np.float64) / t)
        np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6 * abs(g) / t)
    # a zero cotangent gives zero gradients, +inf scores included
    x32 = jnp.asarray([0.0, np.inf], jnp.float32)
    _, vjp = jax.vjp(lambda y: jaxrelax.entmax_loss(x32, y, alpha=alpha, temperature=t), labels)
    np.testing.assert_array_equal(vjp(jnp.zeros(()))[0], [0, 0])
