"""Every row of the docs' table of Optax equivalents (docs/ecosystem.md), checked: the two
calls it pairs give the same values, and each jaxrelax function that mirrors an Optax one
says so, with what differs, in the first line of its docstring's Note."""

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrelax
from jaxrelax import schedules

MIRRORS = {
    jaxrelax.perturbed: "optax.perturbations.make_perturbed_fun",
    jaxrelax.perturbed_argmax: "optax.perturbations.make_perturbed_fun",
    jaxrelax.perturbed_topk: "optax.perturbations.make_perturbed_fun",
    jaxrelax.perturbed_max: "optax.perturbations.make_perturbed_fun",
    jaxrelax.sparsemax_loss: "optax.losses.multiclass_sparsemax_loss",
    jaxrelax.sparsemax: "optax.projections.projection_simplex",
    schedules.linear_anneal: "optax.linear_schedule",
    schedules.cosine_anneal: "optax.cosine_decay_schedule",
    schedules.exponential_anneal: "optax.exponential_decay",
    schedules.piecewise_anneal: "optax.piecewise_constant_schedule",
}


@pytest.mark.parametrize(
    "fn, optax_name", [pytest.param(f, o, id=f.__name__) for f, o in MIRRORS.items()]
)
def test_the_note_starts_with_the_optax_equivalent(fn, optax_name):
    doc = inspect.getdoc(fn)
    note = doc[doc.index("Note:") :].split("\n")[1].strip()
    assert note.startswith("Optax:") and optax_name in doc[doc.index("Note:") :][:300], note


def test_perturbed_with_optax_defaults_equals_make_perturbed_fun():
    """Optax draws its noise from its own keys, so with its defaults spelled out the two
    estimates agree in law: the same mean over many keys, within its standard error."""
    x = jnp.array([0.5, -1.0, 2.0, 0.0, 1.5])
    ours = jaxrelax.perturbed(jaxrelax.hardmax, num_samples=1000, sigma=0.1, control_variate=True)
    theirs = optax.perturbations.make_perturbed_fun(jaxrelax.hardmax)
    keys = jax.random.split(jax.random.key(0), 8)
    mine = jnp.mean(jax.vmap(lambda k: ours(k, x))(keys), 0)
    optax_mean = jnp.mean(jax.vmap(lambda k: theirs(k, x))(keys), 0)
    np.testing.assert_allclose(mine, optax_mean, atol=0.01)  # sigma 0.1: nearly the argmax
    np.testing.assert_allclose(mine, jaxrelax.hardmax(x), atol=0.01)


def test_sparse_rows():
    x = jnp.array([[1.0, 0.3, -0.5, 2.0], [0.1, 0.2, 0.3, 0.4], [3.0, 2.9, -1.0, 0.0]])
    labels = jnp.array([3, 1, 0])
    np.testing.assert_allclose(
        jaxrelax.sparsemax_loss(x, jax.nn.one_hot(labels, 4)),
        optax.losses.multiclass_sparsemax_loss(x, labels),
        rtol=1e-6,
        atol=1e-7,
    )
    for t in (1.0, 0.3):
        np.testing.assert_allclose(
            jaxrelax.sparsemax(x, temperature=t),
            jax.vmap(optax.projections.projection_simplex)(x / t),
            atol=1e-6,
        )


def test_schedule_rows():
    steps = jnp.array([0, 1, 9, 10, 25, 50, 99, 100, 150])
    pairs = [
        (schedules.linear_anneal(2.0, 0.5, 100), optax.linear_schedule(2.0, 0.5, 100)),
        (
            schedules.cosine_anneal(2.0, end_value=0.5, decay_steps=100),
            optax.cosine_decay_schedule(2.0, 100, alpha=0.25),
        ),
        (
            schedules.exponential_anneal(1.0, rate=-math.log(0.5) / 10, end_value=0.2, interval=10),
            optax.exponential_decay(1.0, 10, 0.5, staircase=True, end_value=0.2),
        ),
        (
            schedules.piecewise_anneal(1.0, {10: 0.5, 50: 0.5}),
            optax.piecewise_constant_schedule(1.0, {10: 0.5, 50: 0.5}),
        ),
    ]
    for ours, theirs in pairs:
        np.testing.assert_allclose(jax.vmap(ours)(steps), jax.vmap(theirs)(steps), rtol=1e-6)
