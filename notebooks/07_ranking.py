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
# # Learning to rank images: three ways through the ranks
#
# A network gives each image one score; within a group of images, the ranks of the scores
# are its predicted order, and the loss compares that order with a target one. We use
# Spearman's correlation, the Pearson correlation of two rank vectors:
#
#     loss = 1 - corr(ranks(scores), target_ranks),
#
# averaged over groups. Ranks are piecewise constant in the scores, so their gradient is
# zero almost everywhere, and the network learns nothing through them unless something
# replaces it. We train the same network, from the same seeds on the same groups, with three
# replacements:
#
# - **`soft_rank`**: the loss sees the soft ranks, the projection of `scores / t` onto the
#   permutahedron (Blondel et al. 2020, [arXiv:2002.08871](https://arxiv.org/abs/2002.08871)),
#   and its exact gradient;
# - **`st_rank`**: the loss sees the exact ranks (it *is* one minus Spearman's correlation),
#   and the backward pass is the VJP of `soft_rank` (straight-through);
# - **`perturbed(rank)`**: the loss sees the ranks averaged over Gaussian perturbations of the
#   scores, and the gradient is Berthet et al.'s Monte-Carlo estimate (2020,
#   [arXiv:2002.08676](https://arxiv.org/abs/2002.08676)), which needs only values of the hard
#   `rank`: `jaxrelax.perturbed(jaxrelax.rank, ...)`.
#
# The temperature of the first two and the noise scale of the third follow the scaling that
# `soft_rank`'s docstring gives: `tau * std(scores) / n` per group, so that the loss depends
# on the standardised scores alone (scaling the scores up cannot lower it). At evaluation
# every model is judged the same way, by the hard ranks of its scores on held-out groups.
# Run as a script, the notebook prints its tables and writes its figures to a folder it
# names; `JAXRELAX_SMOKE=1` runs it at a small size.

# %%
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
FIGURES = Path(os.environ.get("JAXRELAX_FIGURES", "figures/ranking"))
FIGURES.mkdir(parents=True, exist_ok=True)
START = time.perf_counter()
print(f"jaxrelax {jaxrelax.__version__} on jax {jax.__version__} ({jax.default_backend()})")

# %% [markdown]
# ## Data: groups of images, ordered by their class
#
# Fashion-MNIST from Debian's `dataset-fashion-mnist` package when it is installed (IDX
# files, read by `notebooks/real_data.py`): a random subset of 20,000 of the 60,000 training
# images and all 10,000 test images. Otherwise scikit-learn's bundled 8x8 digits (1,400 for
# training, the other 397 held out). At smoke size: 2,000 training and 1,000 test images.
#
# The task: given a group of `n = 16` images, order them by their class label, 0 first and
# 9 last. On the digits that is the order of the digit's value; on Fashion-MNIST it is the
# dataset's arbitrary order of its classes (T-shirt/top, trouser, pullover, dress, coat,
# sandal, shirt, sneaker, bag, ankle boot), so the network must tell the ten classes apart
# and lay them on one line in that order. Images of the same class tie: their target rank is
# the average of the ranks they share, as in `scipy.stats.rankdata` and `jaxrelax.rank`.
# Training groups are drawn afresh at every step from the training images; the held-out
# groups are the test images, shuffled once and cut into groups of 16.

# %%
TRAIN_SIZE = 2_000 if SMOKE else 20_000
TEST_SIZE = 1_000 if SMOKE else 10_000
GROUP = 16  # n, the images ranked together

DATASET, train_images, train_labels, test_images, test_labels = real_data.load(
    TRAIN_SIZE, TEST_SIZE, verbose=False
)
PIXELS = test_images.shape[1] ** 2
train_x = jnp.asarray(train_images.reshape(len(train_images), PIXELS), jnp.float32)
train_y = jnp.asarray(train_labels, jnp.float32)
order = np.random.default_rng(0).permutation(len(test_images))
order = order[: len(order) // GROUP * GROUP].reshape(-1, GROUP)
test_x = jnp.asarray(test_images.reshape(len(test_images), PIXELS)[order], jnp.float32)
test_y = jnp.asarray(test_labels[order], jnp.float32)  # (groups, GROUP)
print(
    f"data: {DATASET}: {len(train_x)} training images, {len(test_x)} held-out groups of "
    f"{GROUP} test images ({PIXELS} pixels each)"
)

# %% [markdown]
# ## The model and the three ranking losses
#
# A multilayer perceptron with one hidden layer of 128 units maps an image to one score.
# Each loss takes a group's scores `s` (shape `(groups, n)`) and target ranks and returns
# one minus the mean Spearman correlation, computed with that method's ranks. The
# temperature `t = tau * std(s) / n` (per group, `tau = 1`) is a function of the scores and
# is differentiated with them. The perturbed ranks are `rank` averaged over `M = 32` draws of
# standard normal noise added to `s / t`: noise of standard deviation `t` on the scores.
#
# A reference model learns the labels' *values* instead, by least squares on the score
# (regression), which uses more than the order: a ranking loss should come close to it.

# %%
HIDDEN = 128
TAU = 1.0
SAMPLES = 32  # perturbations per group and step, for perturbed(rank)


def init_mlp(key, sizes):
    keys = jax.random.split(key, len(sizes) - 1)
    init = jax.nn.initializers.glorot_uniform()
    return [
        (init(k, (m, n)), jnp.zeros(n)) for k, m, n in zip(keys, sizes, sizes[1:], strict=False)
    ]


def score(layers, x):
    """One score per image: (..., PIXELS) -> (...)."""
    h = x
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i < len(layers) - 1:
            h = jax.nn.relu(h)
    return h[..., 0]


def correlation(a, b):
    """Pearson's correlation of a and b along the last axis."""
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    return (a * b).sum(-1) / jnp.sqrt((a * a).sum(-1) * (b * b).sum(-1))


def temperature(s):
    return TAU * jnp.std(s, -1, keepdims=True) / s.shape[-1]


perturbed_rank = jaxrelax.perturbed(jaxrelax.rank, num_samples=SAMPLES, sigma=1.0, noise="normal")

RANKS = {  # name -> (key, scores, (groups, n)) -> the ranks the loss sees
    "soft_rank": lambda key, s: jaxrelax.soft_rank(s, temperature=temperature(s)),
    "st_rank": lambda key, s: jaxrelax.st_rank(s, temperature=temperature(s)),
    "perturbed(rank)": lambda key, s: perturbed_rank(key, s / temperature(s)),
}


def ranking_loss(ranks_of):
    def loss(key, s, y):
        return 1 - correlation(ranks_of(key, s), jaxrelax.rank(y)).mean()

    return loss


def regression_loss(key, s, y):
    return jnp.mean((s - y) ** 2)


LOSSES = {name: ranking_loss(ranks_of) for name, ranks_of in RANKS.items()}
REFERENCE = "label regression"
LOSSES[REFERENCE] = regression_loss

# %% [markdown]
# ## Training
#
# Adam (learning rate 1e-3), batches of 32 groups of 16 training images (512 images, drawn
# without replacement) per step, compiled 50 steps at a time. Every model of a seed starts
# from the same initial weights and sees the same groups (and `perturbed(rank)` its own
# noise, fixed by the seed and step). After every 50 steps the held-out Spearman correlation
# is measured, for the curves below. We train from five seeds (one at smoke size).

# %%
STEPS = 150 if SMOKE else 500
GROUPS = 32  # groups per step
CHUNK = 50  # training steps per compiled call
SEEDS = 1 if SMOKE else 5
optimizer = optax.adam(1e-3)


def init_params(seed):
    return init_mlp(jax.random.key(seed), [PIXELS, HIDDEN, 1])


def make_train(loss_fn):
    def train_step(carry, step, seed):
        params, opt_state = carry
        step_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(1), seed), step)
        batch_key, noise_key = jax.random.split(step_key)
        batch = jax.random.choice(batch_key, len(train_x), (GROUPS, GROUP), replace=False)
        x, y = train_x[batch], train_y[batch]

        def objective(params):
            s = score(params, x)
            return loss_fn(noise_key, s, y), s

        (loss, s), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        spearman = correlation(jaxrelax.rank(s), jaxrelax.rank(y)).mean()
        return (optax.apply_updates(params, updates), opt_state), (loss, spearman)

    @jax.jit
    def train_steps(params, opt_state, steps, seed):
        """The training steps ``steps`` (a range of step numbers), compiled as one loop; the
        loss and the training batch's Spearman correlation at each."""
        step = partial(train_step, seed=seed)
        (params, opt_state), (losses, spearman) = jax.lax.scan(step, (params, opt_state), steps)
        return params, opt_state, losses, spearman

    return train_steps


# %% [markdown]
# ## Held-out metrics
#
# On every held-out group, from the hard ranks of the model's scores:
#
# - **Spearman**: the correlation of the predicted and target ranks (1: the exact order up to
#   ties; 0 for random scores), averaged over groups;
# - **Kendall**: Kendall's tau-b, the share of concordant less the share of discordant pairs,
#   with ties in either ranking discounted (1: the exact order; 0 for random scores), averaged
#   over groups;
# - **pairs**: the share of the pairs of images of different classes that the scores put in
#   the right order (ties in the scores count a half; 0.5 for random scores).


# %%
@jax.jit
def evaluate(params):
    """Held-out (Spearman, Kendall, pairs) and the scores, shape (groups, GROUP)."""
    s = score(params, test_x)
    spearman = correlation(jaxrelax.rank(s), jaxrelax.rank(test_y))
    # over ordered pairs (i, j), i != j: each unordered pair twice, which the ratios cancel
    by_score = jnp.sign(s[:, :, None] - s[:, None, :])
    by_label = jnp.sign(test_y[:, :, None] - test_y[:, None, :])
    untied_score, untied_label = (by_score != 0).sum((1, 2)), (by_label != 0).sum((1, 2))
    kendall = (by_score * by_label).sum((1, 2)) / jnp.sqrt(untied_score * untied_label)
    differ = by_label < 0  # pairs (i, j) with label i < label j
    right = jnp.where(by_score < 0, 1.0, jnp.where(by_score == 0, 0.5, 0.0))
    pairs = (right * differ).sum() / differ.sum()
    return jnp.stack([spearman.mean(), kendall.mean(), pairs]), s


def train(name, seed):
    train_steps = TRAINERS[name]
    params = init_params(seed)
    opt_state = optimizer.init(params)
    losses, spearman, curve = [], [], [float(evaluate(params)[0][0])]
    for steps in jnp.arange(STEPS).reshape(-1, CHUNK):
        params, opt_state, chunk_losses, chunk_spearman = train_steps(
            params, opt_state, steps, seed
        )
        losses.append(chunk_losses)
        spearman.append(chunk_spearman)
        curve.append(float(evaluate(params)[0][0]))
    return params, np.concatenate(losses), np.concatenate(spearman), np.array(curve)


TRAINERS = {name: make_train(loss_fn) for name, loss_fn in LOSSES.items()}
METHODS = [*RANKS, REFERENCE]
untrained = np.stack([np.asarray(evaluate(init_params(seed))[0]) for seed in range(SEEDS)])
results = {}
for name in METHODS:
    start = time.perf_counter()
    runs = [train(name, seed) for seed in range(SEEDS)]
    seconds = time.perf_counter() - start
    metrics = np.stack([np.asarray(evaluate(run[0])[0]) for run in runs])
    losses = np.stack([run[1] for run in runs])
    results[name] = dict(
        metrics=metrics,  # (seeds, 3): Spearman, Kendall, pairs
        losses=losses,
        train_spearman=np.stack([run[2] for run in runs]),
        curve=np.stack([run[3] for run in runs]),
        scores=np.asarray(evaluate(runs[0][0])[1]),  # seed 0's held-out scores
        seconds=seconds,
        finite=bool(np.isfinite(losses).all()),
    )
    print(
        f"{name}: held-out Spearman {metrics[:, 0].mean():.3f} over {SEEDS} seed(s), "
        f"trained in {seconds:.1f} s"
    )

# %% [markdown]
# ## Results
#
# Means over the seeds, with the standard deviation of the held-out Spearman correlation
# across seeds (a dash for one seed). Seconds are the wall time of all the seeds' training,
# compilation and the held-out checks included. The untrained row is the initial network
# of each seed, before any step.


# %%
def spread(values):
    return f"{values.std(ddof=1):.3f}" if len(values) > 1 else "-"


print(
    f"{STEPS} steps of {GROUPS} groups of {GROUP} images; ranking by class on held-out "
    f"{DATASET} groups ({len(test_x)} groups, {SEEDS} seed(s)):"
)
print(f"{'method':<18}{'Spearman':>10}{'sd':>8}{'Kendall':>9}{'pairs':>8}{'seconds':>9}")
for name in METHODS:
    m = results[name]["metrics"]
    print(
        f"{name:<18}{m[:, 0].mean():>10.3f}{spread(m[:, 0]):>8}{m[:, 1].mean():>9.3f}"
        f"{m[:, 2].mean():>8.3f}{results[name]['seconds']:>9.1f}"
    )
print(
    f"{'untrained':<18}{untrained[:, 0].mean():>10.3f}{spread(untrained[:, 0]):>8}"
    f"{untrained[:, 1].mean():>9.3f}{untrained[:, 2].mean():>8.3f}{'-':>9}"
)
for name in METHODS:
    assert results[name]["finite"], (name, "a non-finite training loss")

# %% [markdown]
# ## Training curves
#
# Left, the Spearman correlation of the hard ranks on each training batch (smoothed over 25
# steps), whatever ranks the loss saw; right, the held-out Spearman correlation every 50
# steps, from the untrained network at step 0 (its value, in the legend, may lie below the
# axis). Lines are the means over seeds, bands their range.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
smooth = min(25, STEPS // 4)
checkpoints = np.arange(0, STEPS + 1, CHUNK)
lowest = 1.0  # the lowest point drawn after the first checkpoint, for the y axis
for name in METHODS:
    train_curves = np.stack(
        [
            np.convolve(c, np.ones(smooth) / smooth, mode="valid")
            for c in results[name]["train_spearman"]
        ]
    )
    steps = np.arange(train_curves.shape[1]) + smooth
    style = "--" if name == REFERENCE else "-"
    (line,) = axes[0].plot(steps, train_curves.mean(0), style, label=name)
    axes[0].fill_between(
        steps, train_curves.min(0), train_curves.max(0), alpha=0.2, color=line.get_color()
    )
    curve = results[name]["curve"]
    axes[1].plot(checkpoints, curve.mean(0), style + "o", ms=3, color=line.get_color(), label=name)
    axes[1].fill_between(checkpoints, curve.min(0), curve.max(0), alpha=0.2, color=line.get_color())
    lowest = min(lowest, train_curves.min(), curve[:, 1:].min())
baseline = untrained[:, 0].mean()
axes[1].axhline(baseline, color="gray", ls=":", label=f"untrained ({baseline:.3f})")
axes[1].set_ylim(lowest - 0.05, 1)
axes[0].set(xlabel="training step", ylabel="Spearman correlation", title="training batches")
axes[1].set(xlabel="training step", title=f"held-out groups ({DATASET})")
axes[1].legend(fontsize=8, loc="lower right")
fig.tight_layout()
fig.savefig(FIGURES / "training_curves.png", dpi=120)
print("wrote", FIGURES / "training_curves.png")

# %% [markdown]
# ## Which order did each model learn?
#
# Each model's held-out scores (seed 0), standardised, by class: the mean and standard
# deviation of the scores of each class's images. A model that ranks by class puts the ten
# means on a rising staircase, with little overlap between neighbours. The second figure
# orders one held-out group of 16 images by the target (top row) and by each model's scores.

# %%
flat_y = np.asarray(test_y).ravel()
CLASSES = np.unique(flat_y).astype(int)
fig, axes = plt.subplots(1, len(METHODS), figsize=(3.0 * len(METHODS), 3.2), sharey=True)
for ax, name in zip(axes, METHODS, strict=True):
    s = results[name]["scores"].ravel()
    z = (s - s.mean()) / s.std()
    means = [z[flat_y == c].mean() for c in CLASSES]
    sds = [z[flat_y == c].std() for c in CLASSES]
    ax.errorbar(CLASSES, means, sds, fmt="o", ms=4, capsize=2)
    spearman = results[name]["metrics"][0, 0]
    ax.set(title=f"{name}\nSpearman {spearman:.3f}", xlabel="class label", xticks=CLASSES)
    ax.title.set_fontsize(9)
axes[0].set_ylabel("standardised held-out score")
fig.tight_layout()
fig.savefig(FIGURES / "scores_by_class.png", dpi=120)
print("wrote", FIGURES / "scores_by_class.png")

# %%
group = 0
side = test_images.shape[1]
rows = ["target", *METHODS]
fig, axes = plt.subplots(len(rows), GROUP, figsize=(0.8 * GROUP, 1.0 * len(rows)))
for row, name in zip(axes, rows, strict=True):
    key = test_y[group] if name == "target" else results[name]["scores"][group]
    shown = np.argsort(np.asarray(key), kind="stable")
    row[0].set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    for ax, i in zip(row, shown, strict=True):
        ax.imshow(np.asarray(test_x[group, i]).reshape(side, side), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(int(test_y[group, i]), fontsize=7, pad=1)
        ax.set_xticks([])
        ax.set_yticks([])
fig.suptitle(
    "one held-out group ordered by the target and by each model (labels above)", fontsize=9
)
fig.tight_layout()
fig.savefig(FIGURES / "ordered_group.png", dpi=120)
print("wrote", FIGURES / "ordered_group.png")
print(f"ranking figures written to {FIGURES}")

# %% [markdown]
# ## Conclusion
#
# The cell below states the conclusion from the results above, so that it holds for the run
# it comes from: the data set that was found, the size, the seeds. Two methods are called
# apart only when their mean held-out Spearman correlations differ by more than twice the
# standard error of that difference over seeds; with one seed, by more than 0.02.

# %%
spearman = {name: results[name]["metrics"][:, 0] for name in METHODS}
baseline = float(untrained[:, 0].mean())


def apart(a, b):
    """Whether methods a and b differ by more than twice the standard error of the
    difference of their means over seeds (0.01 without seeds to estimate it)."""
    if SEEDS > 1:
        error = np.sqrt((spearman[a].var(ddof=1) + spearman[b].var(ddof=1)) / SEEDS)
    else:
        error = 0.01
    return abs(spearman[a].mean() - spearman[b].mean()) > 2 * error


by_score = sorted(RANKS, key=lambda name: -spearman[name].mean())
best, worst = by_score[0], by_score[-1]
lines = [
    f"On {DATASET}, {STEPS} steps, {SEEDS} seed(s): every ranking method "
    + (
        "learns to order held-out images by class"
        if all(spearman[name].mean() > baseline + 0.2 for name in RANKS)
        else "does NOT clearly beat the untrained network"
    )
    + f" (held-out Spearman {spearman[worst].mean():.3f} to {spearman[best].mean():.3f}, "
    f"untrained {baseline:.3f}).",
]
ties = [name for name in by_score[1:] if not apart(best, name)]
if ties:
    lines.append(
        f"The best, {best} ({spearman[best].mean():.3f}), is not told apart from "
        + ", ".join(f"{name} ({spearman[name].mean():.3f})" for name in ties)
        + " by these seeds."
    )
else:
    lines.append(f"{best} ranks best ({spearman[best].mean():.3f}), apart from the others.")
reference = spearman[REFERENCE].mean()
gap = reference - spearman[best].mean()
lines.append(
    f"Regressing on the label values gives {reference:.3f}: "
    + (
        f"{'above' if gap > 0 else 'below'} the best ranking loss by {abs(gap):.3f}."
        if apart(REFERENCE, best)
        else "within the seeds' spread of the best ranking loss."
    )
)
seconds = {name: results[name]["seconds"] for name in RANKS}
fastest = min(seconds, key=seconds.get)
slowest = max(seconds, key=seconds.get)
lines.append(
    f"Training time: {slowest} took {seconds[slowest] / seconds[fastest]:.1f}x as long as "
    f"{fastest} ({seconds[slowest]:.1f} s against {seconds[fastest]:.1f} s, compilation included)."
)
print("conclusion:")
for line in lines:
    print(" ", line)
print(f"total run time {time.perf_counter() - START:.0f} s")
