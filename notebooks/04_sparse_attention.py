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
# # Sparse attention: softmax, 1.5-entmax and sparsemax side by side
#
# Softmax gives every token some weight; sparsemax (Martins & Astudillo 2016,
# [arXiv:1602.02068](https://arxiv.org/abs/1602.02068)) and 1.5-entmax (Peters, Niculae &
# Martins 2019, [arXiv:1905.05702](https://arxiv.org/abs/1905.05702)) put *exact* zeros on
# the tokens they ignore, so one can read off which tokens a prediction used. We train the
# same small attention-pooling classifier three times, changing only the map from attention
# scores to weights, on scikit-learn's 8x8 handwritten digits cut into 16 patches of 2x2
# pixels. `JAXRELAX_SMOKE=1` runs it at a small size.

# %%
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

import jaxrelax

if "ipykernel" not in sys.modules:
    import matplotlib

    matplotlib.use("Agg")
import matplotlib.pyplot as plt

SMOKE = os.environ.get("JAXRELAX_SMOKE") == "1"
FIGURES = Path(os.environ.get("JAXRELAX_FIGURES", "figures/sparse_attention"))
FIGURES.mkdir(parents=True, exist_ok=True)
print(f"jaxrelax {jaxrelax.__version__} on jax {jax.__version__} ({jax.default_backend()})")

# %% [markdown]
# ## Data: digits as sequences of 16 patches

# %%
digits = load_digits()
images = digits.images / 16.0
order = np.random.default_rng(0).permutation(len(images))
images, labels = jnp.asarray(images[order], jnp.float32), jnp.asarray(digits.target[order])
# (n, 8, 8) -> (n, 16 patches, 4 pixels), patches in row-major order of a 4x4 grid
patches = images.reshape(-1, 4, 2, 4, 2).transpose(0, 1, 3, 2, 4).reshape(-1, 16, 4)
TRAIN = 1400
train_x, train_y, test_x, test_y = patches[:TRAIN], labels[:TRAIN], patches[TRAIN:], labels[TRAIN:]
print(f"{len(train_x)} training and {len(test_x)} held-out digits, 16 patches each")

# %% [markdown]
# ## The model
#
# Each patch is embedded (with a learned position), scored against a learned query, and the
# patches' values are pooled with the attention weights `mapping(scores)`; a small MLP
# classifies the pooled vector. Only `mapping` differs between the three models.

# %%
WIDTH = 32
STEPS = 80 if SMOKE else 1500
MAPPINGS = {
    "softmax": jaxrelax.softmax,
    "1.5-entmax": jaxrelax.entmax15,
    "sparsemax": jaxrelax.sparsemax,
}


def init_params(key):
    k = jax.random.split(key, 6)
    normal = jax.nn.initializers.normal(0.3)
    return {
        "embed": normal(k[0], (4, WIDTH)),
        "position": normal(k[1], (16, WIDTH)),
        "key": normal(k[2], (WIDTH, WIDTH)),
        "query": normal(k[3], (WIDTH,)),
        "hidden": normal(k[4], (WIDTH, WIDTH)),
        "out": normal(k[5], (WIDTH, 10)),
    }


def attend(params, x, mapping):
    tokens = jnp.tanh(x @ params["embed"] + params["position"])  # (batch, 16, width)
    scores = (tokens @ params["key"]) @ params["query"]  # (batch, 16)
    weights = mapping(scores)
    pooled = jnp.einsum("bt,btw->bw", weights, tokens)
    logits = jax.nn.relu(pooled @ params["hidden"]) @ params["out"]
    return logits, weights


def make_train_step(mapping, optimizer):
    def loss_fn(params, x, y):
        logits, _ = attend(params, x, mapping)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def train_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


# %% [markdown]
# ## Training the three models from the same seeds


# %%
def train(mapping):
    optimizer = optax.adam(3e-3)
    params = init_params(jax.random.key(0))
    opt_state = optimizer.init(params)
    step_fn = make_train_step(mapping, optimizer)
    batches = jax.random.randint(jax.random.key(1), (STEPS, 128), 0, len(train_x))
    for batch in batches:
        params, opt_state, _ = step_fn(params, opt_state, train_x[batch], train_y[batch])
    return params


results = {}
for name, mapping in MAPPINGS.items():
    params = train(mapping)
    logits, weights = attend(params, test_x, mapping)
    accuracy = float(jnp.mean(jnp.argmax(logits, -1) == test_y))
    support = np.asarray(jnp.sum(weights > 0, -1))
    results[name] = dict(params=params, weights=np.asarray(weights), accuracy=accuracy)
    results[name]["support"] = support

print(f"{STEPS} training steps; on {len(test_x)} held-out digits:")
print(f"{'mapping':<12} {'accuracy':>8} {'patches used (mean)':>20} {'fewest':>7} {'most':>5}")
for name, r in results.items():
    s = r["support"]
    print(f"{name:<12} {r['accuracy']:>8.3f} {s.mean():>20.2f} {s.min():>7d} {s.max():>5d}")

# Softmax never zeroes a weight; the sparse maps do, and still sum to 1.
assert results["softmax"]["support"].min() == 16
for name in ("1.5-entmax", "sparsemax"):
    assert results[name]["support"].mean() < 16, name
    np.testing.assert_allclose(results[name]["weights"].sum(-1), 1, atol=1e-5)
for name, r in results.items():  # every model learns (chance is 0.1)
    assert r["accuracy"] > (0.3 if SMOKE else 0.8), (name, r["accuracy"])

# %% [markdown]
# ## Where each model looks
#
# Each column is a held-out digit; each row shows one model's attention weights over the 16
# patches, drawn over the digit. Patches with exactly zero weight are left blank: softmax
# leaves none blank.

# %%
shown = 8
fig, axes = plt.subplots(len(results), shown, figsize=(1.4 * shown, 1.5 * len(results)))
for row, (name, r) in zip(axes, results.items(), strict=True):
    for i, ax in enumerate(row):
        weights = r["weights"][i].reshape(4, 4)
        ax.imshow(np.asarray(images[TRAIN + i]), cmap="gray_r", extent=(0, 8, 8, 0))
        overlay = np.ma.masked_equal(weights, 0)
        ax.imshow(overlay, cmap="autumn_r", alpha=0.6, extent=(0, 8, 8, 0), vmin=0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{int(r['support'][i])} used", fontsize=7)
    row[0].set_ylabel(name, fontsize=9)
fig.tight_layout()
fig.savefig(FIGURES / "attention.png", dpi=120)
print("wrote", FIGURES / "attention.png")

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
bins = np.arange(0.5, 17.5)
for name, r in results.items():
    ax.hist(r["support"], bins=bins, alpha=0.6, label=name)
ax.set(xlabel="patches with non-zero weight (of 16)", ylabel="held-out digits")
ax.legend()
fig.tight_layout()
fig.savefig(FIGURES / "support_sizes.png", dpi=120)
print("wrote", FIGURES / "support_sizes.png")
print(f"sparse attention figures written to {FIGURES}")
