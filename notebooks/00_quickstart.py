# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # jaxrelax quickstart
#
# A tour of the deterministic relaxations of argmax and max, then a tiny training loop in
# which a jit-compiled Optax step anneals the temperature of a straight-through estimator.
#
# Run it as a script (`python notebooks/00_quickstart.py`) or open it in Jupyter with
# jupytext. `JAXRELAX_SMOKE=1` runs it at a small size (the tests do).

# %%
import math
import os

import jax
import jax.numpy as jnp
import optax

import jaxrelax

SMOKE = os.environ.get("JAXRELAX_SMOKE") == "1"
jnp.set_printoptions(precision=3, suppress=True)
print(f"jaxrelax {jaxrelax.__version__} on jax {jax.__version__} ({jax.default_backend()})")

# %% [markdown]
# ## Hard choices and their soft relaxations
#
# `hardmax` is the exact one-hot of the maximum: it has no useful gradient. `softmax` with a
# temperature is its smooth relaxation, tending to the hard one-hot as the temperature falls.

# %%
scores = jnp.array([1.0, 2.5, 2.5, 0.0])
print("hardmax (first)  ", jaxrelax.hardmax(scores))
print("hardmax (uniform)", jaxrelax.hardmax(scores, ties="uniform"))
for t in [4.0, 1.0, 0.25, 0.01]:
    print(f"softmax  t={t:<5}", jaxrelax.softmax(scores, temperature=t))

# %% [markdown]
# The maximum itself relaxes the same way: `smooth_max` is `t * logsumexp(x / t)` (an upper
# bound within `t log n`) or the softmax-weighted mean `softmax(x / t) . x` (a lower bound).
# `soft_argmax` is the expected index, and `spatial_soft_argmax` the expected (row, column)
# of a heatmap, as used for keypoints.

# %%
for t in [4.0, 1.0, 0.25, 0.01]:
    lse = jaxrelax.smooth_max(scores, temperature=t)
    weighted = jaxrelax.smooth_max(scores, temperature=t, method="softmax")
    index = jaxrelax.soft_argmax(scores, temperature=t)
    print(f"t={t:<5} logsumexp {lse:7.3f}  softmax-weighted {weighted:6.3f}  index {index:5.3f}")

heatmap = jnp.zeros((5, 7)).at[1, 5].set(8.0).at[3, 1].set(7.0)
print(
    "spatial soft-argmax (pixels):",
    jaxrelax.spatial_soft_argmax(heatmap, normalized=False, channel_axis=None),
)
print(
    "spatial soft-argmax at t=0.1:",
    jaxrelax.spatial_soft_argmax(heatmap, temperature=0.1, normalized=False, channel_axis=None),
)

# %% [markdown]
# ## Sparse relaxations: exact zeros
#
# `sparsemax` (the Euclidean projection onto the simplex) and `entmax15` put exact zeros on
# low scores, which softmax never does; `entmax(x, alpha=alpha)` spans them all (alpha = 1 is
# softmax, 2 is sparsemax) and takes a learnable `alpha`. Their Fenchel-Young losses
# (`sparsemax_loss`, `entmax_loss`) are zero exactly when the prediction is the label.

# %%
sparse_scores = jnp.array([1.0, 0.8, 0.1, -1.0])
print("softmax  ", jaxrelax.softmax(sparse_scores))
print("entmax15 ", jaxrelax.entmax15(sparse_scores))
print("sparsemax", jaxrelax.sparsemax(sparse_scores))
print("entmax a=1.25", jaxrelax.entmax(sparse_scores, alpha=1.25))
label = jnp.array([1.0, 0.0, 0.0, 0.0])
print(
    "entmax15 loss",
    jaxrelax.entmax_loss(sparse_scores, label),
    "and at a confident score:",
    jaxrelax.entmax_loss(jnp.array([3.0, 0.0, 0.0, 0.0]), label),
)

# %% [markdown]
# ## Straight-through: exact forward, soft backward
#
# `st_hardmax` returns the exact one-hot, and back-propagates through the softmax. Its
# gradient is exactly the softmax's; `st_argmax` and `st_max` do the same for the index and
# the value, and `straight_through` builds your own from any hard/soft pair.


# %%
def reward(choice):  # a downstream loss that rewards choosing index 1
    return choice[1]


for name, fn in [("st_hardmax", jaxrelax.st_hardmax), ("softmax", jaxrelax.softmax)]:
    choice = fn(scores, temperature=0.5)
    grad = jax.grad(lambda s, fn=fn: reward(fn(s, temperature=0.5)))(scores)
    print(f"{name:10}  forward {choice}  gradient {grad}")

st_round = jaxrelax.straight_through(jnp.round, lambda x: x)
print("straight-through round:", st_round(jnp.array(1.7)), "gradient", jax.grad(st_round)(1.7))

# %% [markdown]
# ## Sampling: Gumbel-softmax, straight-through Gumbel and Gumbel-Rao
#
# `gumbel_softmax` draws a relaxed sample of `softmax(logits)`; with `hard=True` the forward
# value is an exact categorical sample and the gradient that of the relaxed one (same noise).
# `gumbel_rao` keeps that forward sample and averages the straight-through gradient over
# Gumbel noise conditioned on it, which keeps straight-through Gumbel's expectation (and so
# its bias) and is meant to lower its variance. `jaxrelax.diagnostics` measures estimators
# exactly on problems small enough to enumerate; below, both on one such problem.

# %%
key = jax.random.key(0)
logits = jnp.log(jnp.array([0.1, 0.6, 0.3]))
print("soft sample", jaxrelax.gumbel_softmax(key, logits, temperature=0.5))
print("hard sample", jaxrelax.gumbel_softmax(key, logits, temperature=0.5, hard=True))


def objective(sample):  # any function of a one-hot sample
    return jnp.dot(sample, jnp.array([1.0, -1.0, 0.5])) ** 2


exact = jaxrelax.diagnostics.exact_gradient(objective, logits)
estimators = {
    "straight-through Gumbel": lambda k, lg: jaxrelax.gumbel_softmax(
        k, lg, temperature=0.5, hard=True
    ),
    "Gumbel-Rao, 10 samples": lambda k, lg: jaxrelax.gumbel_rao(k, lg, temperature=0.5),
}
print(f"exact gradient {exact}")


def gradient_of(sampler):
    return lambda k, lg: jax.grad(lambda lg: objective(sampler(k, lg)))(lg)


variances = {}
for name, sampler in estimators.items():
    stats = jaxrelax.diagnostics.estimator_stats(
        gradient_of(sampler), key, logits, exact, num_samples=2000 if SMOKE else 20000
    )
    bias, variances[name] = jnp.sum(stats.bias**2), jnp.sum(stats.variance)
    print(f"{name:24} squared bias {bias:.4f}  variance {variances[name]:.4f}")
straight, rao = variances.values()
print(f"Gumbel-Rao's variance is {rao / straight:.2f} times straight-through Gumbel's")

# %% [markdown]
# ## A jit-compiled training step that anneals the temperature
#
# Decision-focused learning in miniature: each problem offers some routes, each described by a
# few features; a route's cost is an unknown linear function of its features plus noise. A
# linear scorer, shared by all problems, picks one route per problem with `st_hardmax`, and
# the loss is the exact cost of the routes taken. The backward pass's softmax temperature
# follows `jaxrelax.schedules.exponential_anneal` (an Optax schedule), evaluated inside the
# compiled step from the step counter: warm early (every route gets a gradient), cold late
# (the gradient concentrates on the routes in contention). Held-out problems measure the
# regret: the cost above the best route.

# %%
num_problems, num_routes, num_features, num_steps = (256, 8, 6, 60) if SMOKE else (4096, 16, 6, 400)
key_features, key_weights, key_noise = jax.random.split(jax.random.key(0), 3)
features = jax.random.normal(key_features, (2 * num_problems, num_routes, num_features))
true_weights = jax.random.normal(key_weights, (num_features,))
costs = features @ true_weights + 0.5 * jax.random.normal(key_noise, (2 * num_problems, num_routes))
train, test = slice(0, num_problems), slice(num_problems, None)

# Jang et al.'s exponential anneal, tau(t) = max(0.02, 2 exp(-r t)), from 2 to 0.02.
temperature_schedule = jaxrelax.schedules.exponential_anneal(
    2.0, rate=math.log(100) / num_steps, end_value=0.02
)
optimizer = optax.adam(learning_rate=0.05)


def mean_cost(weights, temperature, features, costs):
    choice = jaxrelax.st_hardmax(-(features @ weights), temperature=temperature)
    return jnp.mean(jnp.sum(choice * costs, axis=-1))


@jax.jit
def train_step(weights, opt_state, step):
    temperature = temperature_schedule(step)
    loss, grads = jax.value_and_grad(mean_cost)(weights, temperature, features[train], costs[train])
    updates, opt_state = optimizer.update(grads, opt_state, weights)
    return optax.apply_updates(weights, updates), opt_state, loss, temperature


def test_regret(weights):
    return mean_cost(weights, 1.0, features[test], costs[test]) - costs[test].min(-1).mean()


weights = jnp.zeros(num_features)
opt_state = optimizer.init(weights)
print(f"held-out regret of a random choice: {costs[test].mean() - costs[test].min(-1).mean():.3f}")
print(f"{'step':>5} {'temperature':>11} {'train cost':>10} {'test regret':>11}")
for step in range(num_steps + 1):
    weights, opt_state, loss, temperature = train_step(weights, opt_state, step)
    if step % (num_steps // 8) == 0:
        print(f"{step:5d} {temperature:11.4f} {loss:10.3f} {test_regret(weights):11.3f}")

cosine = jnp.dot(weights, true_weights) / (jnp.linalg.norm(weights) * jnp.linalg.norm(true_weights))
print(f"cosine between learned and true cost weights: {cosine:.3f}")
