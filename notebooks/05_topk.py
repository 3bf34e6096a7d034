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
# # Learning which k patches to look at: four top-k estimators side by side
#
# Instance-wise feature selection, as in L2X (Chen et al. 2018,
# [arXiv:1802.07814](https://arxiv.org/abs/1802.07814)) and the benchmark of Xie & Ermon
# (2019, [arXiv:1901.10517](https://arxiv.org/abs/1901.10517)): a *selector* looks at an
# image and picks k of its patches; a *classifier* sees only those k patches (the others
# are zeroed) and must still name the class. Picking k of n is discrete, so the selector's
# gradient needs an estimator. We train the same pair of networks, from the same seeds,
# with four of them:
#
# - **`st_topk`**: the classifier sees the exact k-hot mask; the backward pass is the VJP of
#   `soft_topk` (straight-through);
# - **`soft_topk`**: the classifier sees the smooth mask `sigmoid((s - tau) / t)`, whose
#   entries sum to k (the LML relaxation);
# - **`sparse_topk`**: the classifier sees the projection of `s / t` onto
#   `{0 <= p <= 1, sum p = k}`, which is exactly k-hot wherever the scores are well separated;
# - **`gumbel_topk(hard=True)`**: an exact k-hot *sample* of the Gumbel-top-k distribution,
#   with the gradient of the relaxed sample under the same noise (Xie & Ermon).
#
# The temperature `t` is annealed by a `jaxrelax.schedules` schedule read inside the
# jit-compiled training step. At evaluation every model is judged the same way: the
# classifier sees the hard selection `topk_mask(scores, k)`, exactly k patches. Run as a
# script, the notebook prints a table and writes its figures to a folder it names;
# `JAXRELAX_SMOKE=1` runs it at a small size.

# %%
import math
import os
import sys
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import real_data

import jaxrelax

if "ipykernel" not in sys.modules:
    import matplotlib

    matplotlib.use("Agg")
import matplotlib.pyplot as plt

SMOKE = os.environ.get("JAXRELAX_SMOKE") == "1"
FIGURES = Path(os.environ.get("JAXRELAX_FIGURES", "figures/topk"))
FIGURES.mkdir(parents=True, exist_ok=True)
print(f"jaxrelax {jaxrelax.__version__} on jax {jax.__version__} ({jax.default_backend()})")

# %% [markdown]
# ## Data: images as grids of patches
#
# Fashion-MNIST from Debian's `dataset-fashion-mnist` package when it is installed (IDX
# files, read by `notebooks/real_data.py`): 28x28 images cut into 49 patches of 4x4 pixels,
# a random subset of 20,000 of the 60,000 training images (to keep the run to minutes on a laptop
# CPU) and all 10,000 test images. Otherwise scikit-learn's bundled 8x8 digits, cut into 16
# patches of 2x2 pixels; with only 16 patches there, k runs over {2, 4, 8} instead of
# {4, 8, 16}. At smoke size, k takes the smallest and the largest of these values only.

# %%
TRAIN_SIZE = 600 if SMOKE else 20_000
TEST_SIZE = 500 if SMOKE else 10_000


def to_patches(images, size):
    """(n, side, side) -> (n, patches, size * size), patches in row-major order."""
    n, side = len(images), images.shape[1] // size
    patches = images.reshape(n, side, size, side, size).transpose(0, 1, 3, 2, 4)
    return jnp.asarray(patches.reshape(n, side * side, size * size), jnp.float32)


DATASET, train_images, train_y, test_images, test_y = real_data.load(
    TRAIN_SIZE, TEST_SIZE, verbose=False
)
PATCH = 4 if DATASET == "Fashion-MNIST" else 2
train_x, test_x = to_patches(train_images, PATCH), to_patches(test_images, PATCH)
train_y, test_y = jnp.asarray(train_y, jnp.int32), jnp.asarray(test_y, jnp.int32)
SIDE = test_images.shape[1] // PATCH
PATCHES, PIXELS = SIDE * SIDE, test_images.shape[1] ** 2
KS = (4, 8, 16) if PATCHES == 49 else (2, 4, 8)
KS = KS[::2] if SMOKE else KS  # the smallest and the largest k only, to compile less
K_SHOWN = KS[len(KS) // 2]
print(
    f"data: {DATASET}: {len(train_x)} training and {len(test_x)} test images, "
    f"{PATCHES} patches of {PATCH}x{PATCH} pixels each; k in {KS}"
)

# %% [markdown]
# ## The model
#
# Two small multilayer perceptrons. The selector maps the whole image to one score per
# patch; the classifier maps the masked image (every pixel of a patch multiplied by that
# patch's mask value) to class logits. They are trained together on the cross-entropy of
# the classifier's prediction; only the map from scores to mask differs between models.

# %%
HIDDEN = 64 if SMOKE else 128
STEPS = 150 if SMOKE else 3000
BATCH = 100
CHUNK = 50  # training steps per compiled call


def init_mlp(key, sizes):
    keys = jax.random.split(key, len(sizes) - 1)
    init = jax.nn.initializers.glorot_uniform()
    return [
        (init(k, (m, n)), jnp.zeros(n)) for k, m, n in zip(keys, sizes, sizes[1:], strict=False)
    ]


def mlp(layers, h):
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i < len(layers) - 1:
            h = jax.nn.relu(h)
    return h


def init_params(key):
    selector_key, classifier_key = jax.random.split(key)
    return {
        "selector": init_mlp(selector_key, [PIXELS, HIDDEN, PATCHES]),
        "classifier": init_mlp(classifier_key, [PIXELS, HIDDEN, 10]),
    }


def select(params, x):
    """One score per patch, shape (batch, patches)."""
    return mlp(params["selector"], x.reshape(len(x), PIXELS))


def classify(params, x, mask):
    """Class logits from the patches weighted by ``mask`` (batch, patches)."""
    return mlp(params["classifier"], (x * mask[..., None]).reshape(len(x), PIXELS))


# %% [markdown]
# ## The estimators
#
# Each maps (key, scores, k, temperature) to the mask the classifier sees in training. A
# fifth, reference model ignores the scores and trains the classifier on k patches drawn
# uniformly at random (and is evaluated on random patches too): a learned selector should
# beat it. A sixth sees all the patches, for comparison.

# %%
ESTIMATORS = {
    "st_topk": lambda key, s, k, t: jaxrelax.st_topk(s, k, temperature=t),
    "soft_topk": lambda key, s, k, t: jaxrelax.soft_topk(s, k, temperature=t),
    "sparse_topk": lambda key, s, k, t: jaxrelax.sparse_topk(s, k, temperature=t),
    "gumbel_topk hard": lambda key, s, k, t: jaxrelax.gumbel_topk(
        key, s, k, temperature=t, hard=True
    ),
}


def random_patches(key, scores, k, t=None):
    return jaxrelax.topk_mask(jax.random.uniform(key, scores.shape), k)


def all_patches(key, scores, k, t=None):
    return jnp.ones_like(scores)


REFERENCES = {"random patches": random_patches, "all patches": all_patches}

# %% [markdown]
# ## The training step, with the temperature annealed inside it
#
# The temperature decays exponentially from 1 to 0.1, reached at three quarters of the run
# and held after, updated 50 times: `jaxrelax.schedules.exponential_anneal`, an Optax
# schedule of the step counter evaluated inside the compiled step. The same schedule serves
# every estimator.

# %%
T_START, T_END = 1.0, 0.1
temperature_at = jaxrelax.schedules.exponential_anneal(
    T_START,
    rate=math.log(T_START / T_END) / (0.75 * STEPS),
    end_value=T_END,
    interval=max(STEPS // 50, 1),
)
optimizer = optax.adam(1e-3)


def make_train(estimator, k):
    def loss_fn(params, key, x, y, t):
        mask = estimator(key, select(params, x), k, t)
        logits = classify(params, x, mask)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def train_step(carry, step, x, y):
        params, opt_state = carry
        batch_key, noise_key = jax.random.split(jax.random.fold_in(jax.random.key(1), step))
        batch = jax.random.randint(batch_key, (BATCH,), 0, len(x))
        t = temperature_at(step)
        loss, grads = jax.value_and_grad(loss_fn)(params, noise_key, x[batch], y[batch], t)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    @jax.jit
    def train_steps(params, opt_state, steps, x, y):
        """The training steps ``steps`` (a range of step numbers), compiled as one loop."""
        step = partial(train_step, x=x, y=y)
        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), steps)
        return params, opt_state, losses

    return train_steps


# %% [markdown]
# ## Evaluation with exactly k patches
#
# Whatever the estimator used in training, the classifier is tested on the hard selection
# `topk_mask(scores, k)` of the selector's scores: exactly k patches, no noise, no partial
# weights. For the references, the random or full mask they were trained with.


# %%
@jax.jit
def accuracy_with(params, x, y, mask):
    return jnp.mean(jnp.argmax(classify(params, x, mask), -1) == y)


@partial(jax.jit, static_argnums=(1, 2))
def evaluate(params, k, reference, x, y):
    """The test accuracy and the test masks of a trained model."""
    scores = select(params, x)
    if reference is None:
        mask = jaxrelax.topk_mask(scores, k)
    else:
        mask = REFERENCES[reference](jax.random.key(2), scores, k)
    return accuracy_with(params, x, y, mask), mask


# %% [markdown]
# ## Training every model for every k from the same seeds
#
# The table gives the test accuracy for each k, the number of distinct patch subsets the
# selector picks over the test images, and the wall time of the three trainings,
# compilation included.


# %%
def train(estimator, k):
    params = init_params(jax.random.key(0))
    opt_state = optimizer.init(params)
    train_steps = make_train(estimator, k)
    start = time.perf_counter()
    for steps in jnp.arange(STEPS).reshape(-1, CHUNK):
        params, opt_state, _ = train_steps(params, opt_state, steps, train_x, train_y)
    return jax.block_until_ready(params), time.perf_counter() - start


results = {}  # (name, k) -> dict
for name, estimator in {**ESTIMATORS, **REFERENCES}.items():
    reference = name if name in REFERENCES else None
    for k in KS[-1:] if name == "all patches" else KS:
        params, seconds = train(estimator, k)
        accuracy, mask = evaluate(params, k, reference, test_x, test_y)
        mask = np.asarray(mask)
        assert name == "all patches" or (mask.sum(-1) == k).all(), name  # exactly k patches
        results[name, k] = dict(
            params=params,
            accuracy=float(accuracy),
            mask=mask,
            subsets=len(np.unique(mask, axis=0)),
            seconds=seconds,
        )
        print(f"{name}, k={k}: test accuracy {accuracy:.3f}, trained in {seconds:.1f} s")

print()
print(f"temperature {temperature_at(0):.2f} at step 0, {temperature_at(STEPS - 1):.2f} at the end")
print(f"{STEPS} steps of {BATCH} images; test accuracy with the k selected patches (chance 0.10):")
header = "".join(f"{f'k={k}':>8}" for k in KS)
print(f"{'estimator':<18}{header}   distinct subsets (k={K_SHOWN})   seconds")
for name in {**ESTIMATORS, "random patches": None}:
    row = "".join(f"{results[name, k]['accuracy']:>8.3f}" for k in KS)
    subsets = results[name, K_SHOWN]["subsets"]
    seconds = sum(results[name, k]["seconds"] for k in KS)
    print(f"{name:<18}{row}   {subsets:>22d}   {seconds:>7.1f}")
everything = results["all patches", KS[-1]]["accuracy"]
print(f"{'all patches':<18}{everything:>8.3f} (all {PATCHES} patches)")

best = max(ESTIMATORS, key=lambda name: results[name, KS[-1]]["accuracy"])
print(f"best estimator at k={KS[-1]}: {best} ({results[best, KS[-1]]['accuracy']:.3f})")
for name in ESTIMATORS:  # every selector learns something (chance is 0.1)
    accuracy = results[name, KS[-1]]["accuracy"]
    assert accuracy > (0.3 if SMOKE else 0.6), (name, accuracy)

# %% [markdown]
# ## Do the selections show the class, or encode it?
#
# Selector and classifier are trained together, so the selector could *encode* the class in
# which patches it picks, and the classifier learn to read the code, whatever the patches
# show (Jethani et al. 2021, [arXiv:2103.01890](https://arxiv.org/abs/2103.01890)). Their
# EVAL-X check judges the selections with a classifier trained on random subsets instead:
# here the random-patches model for the same k, which never saw a learned selection. Patches
# that show the class help it, compared with the random patches it was trained on; a code
# it was never taught does not.

# %%
print("the same selections judged by the classifier trained on k random patches (EVAL-X):")
print(f"{'estimator':<18}{header}")
for name in ESTIMATORS:
    for k in KS:
        judge = results["random patches", k]["params"]
        mask = jnp.asarray(results[name, k]["mask"])
        results[name, k]["judged"] = float(accuracy_with(judge, test_x, test_y, mask))
    print(f"{name:<18}" + "".join(f"{results[name, k]['judged']:>8.3f}" for k in KS))
row = "".join(f"{results['random patches', k]['accuracy']:>8.3f}" for k in KS)
print(f"{'random patches':<18}{row} (its own random patches)")

# %% [markdown]
# ## Accuracy against k
#
# Left, each selector's selections judged by its own classifier; right, by the classifier
# trained on random patches. The dashed line is the random-patches model on random patches.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for ax, key, title in zip(
    axes,
    ["accuracy", "judged"],
    ["each selector's own classifier", "the classifier trained on random patches (EVAL-X)"],
    strict=True,
):
    for name in ESTIMATORS:
        ax.plot(KS, [results[name, k][key] for k in KS], "o-", label=name)
    random_row = [results["random patches", k]["accuracy"] for k in KS]
    ax.plot(KS, random_row, "k--", label="random patches")
    ax.axhline(everything, color="gray", ls=":", label=f"all {PATCHES} patches")
    ax.axhline(0.1, color="gray", ls="-.", lw=0.8, label="chance")
    ax.set_xscale("log", base=2)
    ax.minorticks_off()
    ax.set(xticks=KS, xticklabels=[str(k) for k in KS], ylim=(0, 1))
    ax.set(xlabel="patches seen by the classifier (k)", title=title)
axes[0].set_ylabel(f"test accuracy ({DATASET})")
axes[1].legend(fontsize=8, loc="lower right")
fig.tight_layout()
fig.savefig(FIGURES / "accuracy_vs_k.png", dpi=120)
print("wrote", FIGURES / "accuracy_vs_k.png")

# %% [markdown]
# ## Which patches each selector picks
#
# Each column is a test image; each row outlines the k patches one model's selector picks
# for it (k = the middle value). The second figure shows how often each patch is picked over
# the whole test set, and the titles count the distinct subsets picked: a selector that
# picks the same patches for every image makes a fixed, not an instance-wise, selection.


# %%
def to_image(patches):
    """(patches, size * size) -> (side, side), the inverse of to_patches for one image."""
    grid = np.asarray(patches).reshape(SIDE, SIDE, PATCH, PATCH).transpose(0, 2, 1, 3)
    return grid.reshape(SIDE * PATCH, SIDE * PATCH)


k, shown = K_SHOWN, 8
rows = len(ESTIMATORS) + 1
fig, axes = plt.subplots(rows, shown, figsize=(1.3 * shown, 1.4 * rows))
for row, name in zip(axes, ["test images", *ESTIMATORS], strict=True):
    row[0].set_ylabel(name, fontsize=8)
    for i, ax in enumerate(row):
        ax.imshow(to_image(test_x[i]), cmap="gray_r", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        if name in ESTIMATORS:  # outline the selected patches
            for patch in np.flatnonzero(results[name, k]["mask"][i]):
                corner = (patch % SIDE * PATCH - 0.5, patch // SIDE * PATCH - 0.5)
                ax.add_patch(plt.Rectangle(corner, PATCH, PATCH, fill=False, ec="red", lw=1))
fig.suptitle(f"the k={k} patches each selector picks (outlined)", fontsize=10)
fig.tight_layout()
fig.savefig(FIGURES / "selected_patches.png", dpi=120)
print("wrote", FIGURES / "selected_patches.png")

# %%
fig, axes = plt.subplots(
    1, len(ESTIMATORS), figsize=(2.4 * len(ESTIMATORS) + 1, 2.6), layout="constrained"
)
for ax, name in zip(axes, ESTIMATORS, strict=True):
    frequency = results[name, k]["mask"].mean(0).reshape(SIDE, SIDE)
    image = ax.imshow(frequency, cmap="viridis", vmin=0, vmax=1)
    ax.set_title(f"{name}\n{results[name, k]['subsets']} distinct subsets", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
fig.colorbar(image, ax=axes, shrink=0.9, label="share of test images selecting it")
fig.savefig(FIGURES / "selection_frequency.png", dpi=120)
print("wrote", FIGURES / "selection_frequency.png")
print(f"top-k figures written to {FIGURES}")

# %% [markdown]
# ## Conclusion
#
# The cell below states the conclusion from this run's results (the data set found, the
# size, the one seed), so that it can never disagree with the tables above. With one seed,
# whose spread was not measured, differences of a point or two read as ties.

# %%
small, large = KS[0], KS[-1]
own = {name: results[name, small]["accuracy"] for name in ESTIMATORS}
judged = {name: results[name, small]["judged"] for name in ESTIMATORS}
at_large = {name: results[name, large]["accuracy"] for name in ESTIMATORS}
random_small = results["random patches", small]["accuracy"]


def span(values):
    return f"{min(values.values()):.3f} to {max(values.values()):.3f}"


def listed(values, form=".3f"):
    return ", ".join(f"{n} {values[n]:{form}}" for n in sorted(values, key=values.get)[::-1])


close = [name for name in ESTIMATORS if everything - at_large[name] <= 0.005]
gap = {name: own[name] - judged[name] for name in ESTIMATORS}
subsets = {name: results[name, K_SHOWN]["subsets"] for name in ESTIMATORS}
lines = [
    f"On {DATASET} ({len(train_x)} training images, {STEPS} steps of {BATCH}, one seed), "
    f"with k = {small} of the {PATCHES} patches the selectors' own classifiers reach "
    f"{span(own)} test accuracy ({listed(own)}), against {random_small:.3f} on {small} "
    f"random patches and {everything:.3f} on the whole image.",
    f"At k = {large} they reach {span(at_large)}; within half a point of the whole-image "
    f"model: {', '.join(close) if close else 'none'}. Best at k = {large}: {best}.",
    f"Judged by the classifier trained on random patches (EVAL-X), the {small}-patch "
    f"selections score {span(judged)} ({listed(judged)}; random patches {random_small:.3f}): "
    + (
        "better than random patches, so the selectors pick informative patches, "
        if min(judged.values()) > random_small
        else "not all better than random patches, "
    )
    + f"but below their own classifiers by {min(gap.values()):.2f} to {max(gap.values()):.2f}, "
    f"most for {max(gap, key=gap.get)}: part of that gap is the selector encoding the class "
    "in where it looks.",
    f"Distinct {K_SHOWN}-patch subsets over the test images: {listed(subsets, 'd')}.",
]
print("conclusion:")
for line in lines:
    print(" ", line)
