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
# # A categorical VAE, with the temperature annealed inside a jit-compiled Optax step
#
# The setting of Jang et al. (2017, [arXiv:1611.01144](https://arxiv.org/abs/1611.01144)):
# binarized images are encoded into 20 categorical latent variables with 10 categories each,
# under a uniform categorical prior, and decoded into Bernoulli pixels. The encoder's choice
# of categories is discrete, so its gradient needs an estimator. We train the same model,
# from the same seeds, with four of them:
#
# - **Gumbel-softmax**: the decoder sees the relaxed sample `softmax((logits + g) / t)`;
# - **straight-through Gumbel-softmax**: the decoder sees the exact one-hot sample, the
#   gradient is that of the relaxed sample with the same noise;
# - **straight-through**: an exact categorical sample, with the gradient of
#   `softmax(logits / t)` (Bengio et al. 2013);
# - **Gumbel-Rao** (Paulus et al. 2021, [arXiv:2010.04838](https://arxiv.org/abs/2010.04838)):
#   the straight-through Gumbel-softmax gradient averaged over 10 draws of the noise given
#   the sample.
#
# The temperature follows `jaxrelax.schedules.exponential_anneal`, an Optax schedule read
# inside the compiled training step. Run as a script, the notebook prints a table of results
# and writes its figures to a folder it names. `JAXRELAX_SMOKE=1` runs it at a small size.

# %%
import math
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import real_data
from tqdm import tqdm

import jaxrelax

if "ipykernel" not in sys.modules:
    import matplotlib

    matplotlib.use("Agg")
import matplotlib.pyplot as plt

SMOKE = os.environ.get("JAXRELAX_SMOKE") == "1"
FIGURES = Path(os.environ.get("JAXRELAX_FIGURES", "figures/annealing"))
FIGURES.mkdir(parents=True, exist_ok=True)
print(f"jaxrelax {jaxrelax.__version__} on jax {jax.__version__} ({jax.default_backend()})")

# %% [markdown]
# ## Data
#
# Binarized Fashion-MNIST from Debian's `dataset-fashion-mnist` package when it is installed
# (`sudo apt-get install dataset-fashion-mnist`; read by `notebooks/real_data.py`), and
# scikit-learn's bundled 8x8 digits otherwise.

# %%
DATA = real_data.load(digits_train=1500)
DATASET = f"{DATA.name} (binarized at 0.5)"
IMAGE_SHAPE = DATA.test_images.shape[1:]
train_images = (DATA.train_images > 0.5).reshape(len(DATA.train_images), -1)
test_images = (DATA.test_images > 0.5).reshape(len(DATA.test_images), -1)
train_images = jnp.asarray(train_images, jnp.float32)
test_images = jnp.asarray(test_images, jnp.float32)

# %% [markdown]
# ## The model
#
# Multilayer perceptrons for the encoder (image to 20 x 10 logits) and the decoder (20
# one-hot vectors to pixel logits). The training loss is the negative ELBO with the sample
# from the estimator and the analytic KL divergence of the encoder's categoricals from the
# uniform prior, as in Jang et al.

# %%
LATENTS, CLASSES = 20, 10
PIXELS = train_images.shape[1]
HIDDEN = 64 if SMOKE else 256
STEPS = 60 if SMOKE else 3000
BATCH = 100
LEARNING_RATE = 1e-3


def init_params(key):
    sizes = [(PIXELS, HIDDEN), (HIDDEN, LATENTS * CLASSES), (LATENTS * CLASSES, HIDDEN)]
    sizes += [(HIDDEN, PIXELS)]
    keys = jax.random.split(key, len(sizes))
    init = jax.nn.initializers.glorot_uniform()
    return [(init(k, size), jnp.zeros(size[1])) for k, size in zip(keys, sizes, strict=True)]


def mlp(layers, h):
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i < len(layers) - 1:
            h = jax.nn.relu(h)
    return h


def encode(params, images):
    return mlp(params[:2], 2 * images - 1).reshape(-1, LATENTS, CLASSES)


def decode(params, latents):
    return mlp(params[2:], latents.reshape(-1, LATENTS * CLASSES))


def log_likelihood(pixel_logits, images):
    """log p(x | z) of Bernoulli pixels, per image."""
    return jnp.sum(
        images * jax.nn.log_sigmoid(pixel_logits)
        + (1 - images) * jax.nn.log_sigmoid(-pixel_logits),
        -1,
    )


def kl_from_uniform(logits):
    """KL(q(z | x) || uniform), summed over the latent variables, per image."""
    log_q = jax.nn.log_softmax(logits)
    return jnp.sum(jnp.exp(log_q) * (log_q + math.log(CLASSES)), (-2, -1))


# %% [markdown]
# ## The estimators
#
# Each maps (key, logits, temperature) to the latent the decoder sees. The plain
# straight-through estimator is built with `jaxrelax.straight_through`: the forward value is
# the exact one-hot sample, the backward pass the VJP of `softmax(logits / t)`.

# %%
straight_through_sample = jaxrelax.straight_through(
    lambda logits, one_hot, t: one_hot,
    lambda logits, one_hot, t: jaxrelax.softmax(logits, temperature=t),
)


def plain_straight_through(key, logits, t):
    one_hot = jax.nn.one_hot(jax.random.categorical(key, logits), CLASSES)
    return straight_through_sample(logits, one_hot, t)


ESTIMATORS = {
    "Gumbel-softmax": lambda key, logits, t: jaxrelax.gumbel_softmax(key, logits, temperature=t),
    "ST Gumbel-softmax": lambda key, logits, t: jaxrelax.gumbel_softmax(
        key, logits, temperature=t, hard=True
    ),
    "straight-through": plain_straight_through,
    "Gumbel-Rao (K=10)": lambda key, logits, t: jaxrelax.gumbel_rao(
        key, logits, temperature=t, num_samples=10
    ),
}

# %% [markdown]
# ## The training step, with the temperature annealed inside it
#
# Jang et al. anneal `t = max(0.5, exp(-r * step))`, updated every `I` steps. The schedule is
# an Optax schedule of the step counter, so it is evaluated inside the compiled step: no
# recompilation, no host round trip.

# %%
temperature_at = jaxrelax.schedules.exponential_anneal(
    1.0, rate=math.log(2) / (0.6 * STEPS), end_value=0.5, interval=max(STEPS // 30, 1)
)
optimizer = optax.adam(LEARNING_RATE)


def make_train_step(estimator):
    def loss_fn(params, key, images, t):
        logits = encode(params, images)
        latents = estimator(key, logits, t)
        reconstruction = log_likelihood(decode(params, latents), images)
        return jnp.mean(kl_from_uniform(logits) - reconstruction)

    @jax.jit
    def train_step(params, opt_state, step, key, images):
        t = temperature_at(step)
        loss, grads = jax.value_and_grad(loss_fn)(params, key, images, t)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


# %% [markdown]
# ## Evaluation on held-out images
#
# Two numbers, with exact (hard) categorical samples `z ~ q(z | x)`: the negative ELBO
# `E_q[-log p(x | z)] + KL(q || p)`, and the tighter multi-sample bound of Burda et al.
# (2016, [arXiv:1509.00519](https://arxiv.org/abs/1509.00519)),
# `-log p(x) <= -E log (1/K) sum_k p(x | z_k) p(z_k) / q(z_k | x)`.
#
# Decoding `K = 100` samples of all 10,000 held-out images at once would hold gigabytes, so
# the images are evaluated `EVAL_CHUNK` (250) at a time; each image draws its samples from
# its own key, so the result does not depend on the chunking (checked below).

# %%
EVAL_SAMPLES = 10 if SMOKE else 100
EVAL_CHUNK = 250


@jax.jit
def evaluate_each(params, key, images, first):
    """The negative ELBO and the K-sample bound of each image; ``first`` is the index of
    ``images[0]`` among the held-out images, whose own key draws its samples."""
    logits = encode(params, images)
    log_q = jax.nn.log_softmax(logits)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(first + jnp.arange(len(images)))
    samples = jax.vmap(
        lambda k, logits: jax.random.categorical(k, logits, shape=(EVAL_SAMPLES, LATENTS))
    )(keys, logits)
    one_hot = jax.nn.one_hot(jnp.swapaxes(samples, 0, 1), CLASSES)  # (K, images, latents, C)
    log_px = jax.vmap(lambda z: log_likelihood(decode(params, z), images))(one_hot)
    log_ratio = log_px - LATENTS * math.log(CLASSES) - jnp.sum(one_hot * log_q, (-2, -1))
    negative_elbo = -jnp.mean(log_px, 0) + kl_from_uniform(logits)
    bound = -(jax.nn.logsumexp(log_ratio, 0) - math.log(EVAL_SAMPLES))
    return negative_elbo, bound


def evaluate(params, key, images, chunk=EVAL_CHUNK):
    """The mean negative ELBO and bound over ``images``, ``chunk`` images at a time."""
    parts = [
        evaluate_each(params, key, images[start : start + chunk], start)
        for start in range(0, len(images), chunk)
    ]
    negative_elbo, bound = (jnp.concatenate(p) for p in zip(*parts, strict=True))
    return jnp.mean(negative_elbo), jnp.mean(bound)


at_once = evaluate(init_params(jax.random.key(0)), jax.random.key(1), test_images[:60], 60)
in_chunks = evaluate(init_params(jax.random.key(0)), jax.random.key(1), test_images[:60], 25)
difference = max(abs(float(a - b)) for a, b in zip(at_once, in_chunks, strict=True))
print(f"evaluation in chunks of 25 vs at once: largest difference {difference:.1e} nats")
assert difference < 1e-4, (at_once, in_chunks)


# %% [markdown]
# ## Training every estimator from the same seeds


# %%
def train(estimator, name):
    init_key, data_key, noise_key = jax.random.split(jax.random.key(0), 3)
    params = init_params(init_key)
    opt_state = optimizer.init(params)
    train_step = make_train_step(estimator)
    batches = jax.random.randint(data_key, (STEPS, BATCH), 0, len(train_images))
    train_step(params, opt_state, 0, noise_key, train_images[batches[0]])  # compile
    losses = []
    start = time.perf_counter()
    for step in tqdm(range(STEPS), desc=name, disable=SMOKE, leave=False, mininterval=3):
        key = jax.random.fold_in(noise_key, step)
        params, opt_state, loss = train_step(
            params, opt_state, step, key, train_images[batches[step]]
        )
        losses.append(loss)
    losses = np.asarray(jax.block_until_ready(jnp.stack(losses)))
    return params, losses, time.perf_counter() - start


initial_elbo, initial_bound = evaluate(
    init_params(jax.random.key(0)), jax.random.key(1), test_images
)
print(f"untrained: held-out negative ELBO {initial_elbo:.2f} nats, bound {initial_bound:.2f}")
print(f"temperature: {temperature_at(0):.2f} at step 0, {temperature_at(STEPS - 1):.2f} at the end")
results = {}
for name, estimator in ESTIMATORS.items():
    params, losses, seconds = train(estimator, name)
    negative_elbo, bound = evaluate(params, jax.random.key(1), test_images)
    results[name] = dict(
        params=params, losses=losses, seconds=seconds, elbo=negative_elbo, bound=bound
    )

print()
print(f"{STEPS} steps of {BATCH} images; held-out bounds in nats per image (lower is better)")
bound_column = f"-log p (K={EVAL_SAMPLES})"
print(f"{'estimator':<20} {'train loss':>10} {'-ELBO':>8} {bound_column:>16} {'seconds':>8}")
for name, r in results.items():
    final = np.mean(r["losses"][-max(STEPS // 20, 1) :])
    print(f"{name:<20} {final:>10.2f} {r['elbo']:>8.2f} {r['bound']:>16.2f} {r['seconds']:>8.1f}")

for name, r in results.items():  # every estimator learns something
    assert r["bound"] < initial_bound - (5 if SMOKE else 10), (name, r["bound"], initial_bound)

# %% [markdown]
# ## Training curves and reconstructions

# %%
fig, ax = plt.subplots(figsize=(7, 4))
window = max(STEPS // 50, 1)
for name, r in results.items():
    smooth = np.convolve(r["losses"], np.ones(window) / window, mode="valid")
    ax.plot(np.arange(len(smooth)) + window, smooth, label=name)
ax.set(xlabel="step", ylabel="training loss (relaxed negative ELBO, nats)", title=DATASET)
ax.legend()
fig.tight_layout()
fig.savefig(FIGURES / "training_curves.png", dpi=120)
print("wrote", FIGURES / "training_curves.png")

# %%
shown = test_images[:10]
fig, axes = plt.subplots(len(results) + 1, len(shown), figsize=(len(shown), len(results) + 1.3))
rows = {"held-out images": shown}
for name, r in results.items():  # decode the encoder's most likely categories
    latents = jaxrelax.hardmax(encode(r["params"], shown))
    rows[name] = jax.nn.sigmoid(decode(r["params"], latents))
for row, (name, images) in zip(axes, rows.items(), strict=True):
    for ax, image in zip(row, images, strict=True):
        ax.imshow(np.asarray(image).reshape(IMAGE_SHAPE), cmap="gray_r", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
    row[0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
fig.tight_layout()
fig.savefig(FIGURES / "reconstructions.png", dpi=120)
print("wrote", FIGURES / "reconstructions.png")
print(f"annealing figures written to {FIGURES}")
