import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrelax
from jaxrelax import schedules


def test_exponential_anneal_is_jangs_formula():
    initial, rate, minimum, interval = 2.0, 3e-3, 0.4, 25
    schedule = schedules.exponential_anneal(initial, rate, minimum, interval)
    steps = np.arange(0, 2000, 7)
    expected = np.maximum(minimum, initial * np.exp(-rate * interval * np.floor(steps / interval)))
    got = jax.vmap(schedule)(jnp.asarray(steps))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # updated every `interval` steps: constant within an interval
    assert float(schedule(interval - 1)) == initial and float(schedule(interval)) < initial


def test_defaults_match_the_paper():
    schedule = schedules.exponential_anneal()
    for step in [0, 1, 1000, 6931, 10_000, 50_000]:
        expected = max(0.5, np.exp(-1e-4 * step))
        np.testing.assert_allclose(schedule(step), expected, rtol=1e-5)


def test_other_schedules():
    linear = schedules.linear_anneal(1.0, 0.1, 100)
    np.testing.assert_allclose(
        [linear(0), linear(50), linear(100), linear(500)], [1, 0.55, 0.1, 0.1], rtol=1e-6
    )
    cosine = schedules.cosine_anneal(1.0, 0.1, 100)
    expected = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * np.array([0, 25, 50, 100]) / 100))
    np.testing.assert_allclose([cosine(s) for s in [0, 25, 50, 100]], expected, rtol=1e-5)
    assert float(cosine(1000)) == pytest.approx(0.1)
    piecewise = schedules.piecewise_anneal(1.0, {10: 0.5, 20: 0.5})
    np.testing.assert_allclose(
        [piecewise(s) for s in [0, 10, 19, 20, 99]], [1, 0.5, 0.5, 0.25, 0.25]
    )


def test_annealed_temperature_in_a_jitted_optax_step():
    schedule = schedules.exponential_anneal(1.0, 0.05, 0.1, 1)
    optimizer = optax.sgd(0.1)
    key = jax.random.key(0)
    cost = jnp.array([0.3, 0.0, 0.9, 0.5])

    @jax.jit
    def step(logits, state, count):
        temperature = schedule(count)
        sample_key = jax.random.fold_in(key, count)

        def loss(logits):
            sample = jaxrelax.gumbel_softmax(sample_key, logits, temperature=temperature, hard=True)
            return jnp.dot(sample, cost)

        grads = jax.grad(loss)(logits)
        updates, state = optimizer.update(grads, state)
        return optax.apply_updates(logits, updates), state, temperature

    logits = jnp.zeros(4)
    state = optimizer.init(logits)
    temperatures = []
    for count in range(300):
        logits, state, temperature = step(logits, state, count)
        temperatures.append(float(temperature))
    assert temperatures[0] == 1.0 and temperatures[-1] == pytest.approx(0.1)
    assert int(jnp.argmax(logits)) == 1  # the cheapest choice wins


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: schedules.exponential_anneal(initial=0.0), "initial"),
        (lambda: schedules.exponential_anneal(rate=-1.0), "rate"),
        (lambda: schedules.exponential_anneal(minimum=2.0), "minimum"),
        (lambda: schedules.exponential_anneal(minimum=0.0), "minimum"),
        (lambda: schedules.exponential_anneal(interval=0), "interval"),
        (lambda: schedules.linear_anneal(1.0, 0.5, 0), "steps"),
        (lambda: schedules.cosine_anneal(1.0, -0.5, 10), "minimum"),
        (lambda: schedules.piecewise_anneal(1.0, {10: 0.0}), "boundaries_and_scales"),
    ],
)
def test_bad_arguments(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_exponential_anneal_stays_accurate_over_long_runs():
    # A decay rate rounded to float32 would compound its error with the step count.
    schedule = schedules.exponential_anneal(1.0, 1e-4, 1e-6, 1)
    steps = np.array([1_000, 30_000, 100_000])
    np.testing.assert_allclose(
        jax.vmap(schedule)(jnp.asarray(steps)), np.exp(-1e-4 * steps), rtol=2e-6
    )
