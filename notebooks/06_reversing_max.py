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
# # How can the max operation be reversed?
#
# A max-pool keeps the largest entry of each window and forgets the rest: its value, and
# *where* it was. Nothing can bring back the entries it dropped, but the position of the
# winner can be kept, guessed softly, or sampled. Three answers, each with `jaxrelax`:
#
# 1. **The soft answer.** `softmax(x / t)` over a window says, as probabilities, where its
#    maximum came from, and `soft_pool` is the value those probabilities average. Putting
#    the pooled value back with these weights is a soft unpooling; as `t -> 0` the weights
#    tend to the one-hot of the winner and the soft unpooling to the exact one.
# 2. **Argmax plus reconstruction.** `max_pool(..., return_indices=True)` records the
#    winner's position and `max_unpool` puts each value back there, zeros elsewhere: the
#    decoder of SegNet (Badrinarayanan et al. 2017,
#    [arXiv:1511.00561](https://arxiv.org/abs/1511.00561)). We train the same small
#    convolutional autoencoder with this decoder, with a decoder that upsamples by repetition
#    instead, and with repetition after an encoder whose pooling is `st_max_pool` (exact
#    max-pool forward, `soft_pool`'s gradient backward), and compare their held-out
#    reconstruction errors.
# 3. **The stochastic answer.** Treat a window's entries as logits and *sample* the winner's
#    position with `gumbel_softmax(..., hard=True)`: an exact one-hot sample whose mean is the
#    soft answer's weights, and whose limit, as the logits sharpen, is the argmax.
#
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
from jax import lax

import jaxrelax

if "ipykernel" not in sys.modules:
    import matplotlib

    matplotlib.use("Agg")
import matplotlib.pyplot as plt

SMOKE = os.environ.get("JAXRELAX_SMOKE") == "1"
FIGURES = Path(os.environ.get("JAXRELAX_FIGURES", "figures/reversing_max"))
FIGURES.mkdir(parents=True, exist_ok=True)
START = time.perf_counter()
print(f"jaxrelax {jaxrelax.__version__} on jax {jax.__version__} ({jax.default_backend()})")

# %% [markdown]
# ## Data
#
# Fashion-MNIST from Debian's `dataset-fashion-mnist` package when it is installed (IDX
# files, read by `notebooks/real_data.py`): 28x28 images, a random subset of 12,000 of the
# 60,000 training images (to keep the run to a few minutes on a laptop CPU) and all 10,000 test
# images. Otherwise scikit-learn's bundled 8x8 digits (1,400 for training, the other 397 for
# testing). Pixels are scaled to [0, 1]. All pooling here is over 2x2 windows with stride 2.
# At smoke size: 2,000 training and 500 test images.

# %%
TRAIN_SIZE = 2_000 if SMOKE else 12_000
TEST_SIZE = 500 if SMOKE else 10_000
DATASET, train_images, _, test_images, _ = real_data.load(TRAIN_SIZE, TEST_SIZE, verbose=False)
# channels last: (n, side, side, 1)
train_x = jnp.asarray(train_images[..., None], jnp.float32)
test_x = jnp.asarray(test_images[..., None], jnp.float32)
SIDE = test_x.shape[1]
print(
    f"data: {DATASET}: {len(train_x)} training and {len(test_x)} test images "
    f"of {SIDE}x{SIDE} pixels"
)

# %% [markdown]
# ## 1. The soft answer: where the maximum probably came from
#
# Cut an image into its 2x2 windows. `max_pool` keeps each window's largest pixel and, with
# `return_indices=True`, its position; `max_unpool` puts the value back there and zeros the
# other three pixels. The soft version weighs the window's four positions by
# `p = softmax(x / t)` and puts back `p * soft_pool(x)`, where `soft_pool(x) = sum(p * x)`
# is the value the same weights average. At a high temperature `p` is nearly uniform and
# `soft_pool` is the window's mean; as `t -> 0`, `p` tends to the one-hot of the winner and
# the soft unpooling to `max_unpool`'s. (The weights `p`, spread back onto the image, are
# also the gradient of `lse_pool`: we check that the two agree.)

# %%
WINDOW = STRIDES = (2, 2)


def to_windows(x):
    """(n, h, w, 1) -> (n, h / 2, w / 2, 4): each 2x2 window's pixels in row-major order."""
    n, h, w, _ = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2).transpose(0, 1, 3, 2, 4).reshape(n, h // 2, w // 2, 4)


def from_windows(windows):
    """The inverse of to_windows."""
    n, h, w, _ = windows.shape
    return windows.reshape(n, h, w, 2, 2).transpose(0, 1, 3, 2, 4).reshape(n, 2 * h, 2 * w, 1)


def soft_unpool(x, t):
    """Each window's soft_pool value put back with the weights softmax(window / t)."""
    p = jaxrelax.softmax(to_windows(x), temperature=t)
    pooled = jaxrelax.soft_pool(x, WINDOW, STRIDES, temperature=t)
    return from_windows(p * pooled), p


@jax.jit
def hard_answer(x):
    """max_unpool's reconstruction of ``x``, the pooled values, the windows, the one-hot of
    each window's first maximum, and the gap between each window's two largest pixels."""
    values, indices = jaxrelax.max_pool(x, WINDOW, STRIDES, return_indices=True)
    windows = to_windows(x)
    top_two = jnp.sort(windows, -1)[..., -2:]
    one_hot = jax.nn.one_hot(jnp.argmax(windows, -1), 4)  # the first maximum on ties
    return (
        jaxrelax.max_unpool(values, indices, WINDOW, STRIDES),
        values,
        windows,
        one_hot,
        top_two[..., 1] - top_two[..., 0],
    )


shown = test_x[:8]
exact, pooled, windows, one_hot, gap = hard_answer(shown)
assert jnp.array_equal(exact, from_windows(one_hot * pooled)), "max_unpool != the argmax's one-hot"
# A window has a unique maximum unless its two largest pixels are equal (blank background
# and saturated pixels tie).
unique = gap > 0
print(f"{float(unique.mean()):.0%} of the 2x2 windows of these images have a unique maximum")
exact_mse = float(jnp.mean((exact - shown) ** 2))
print(f"max_unpool's MSE to the images themselves: {exact_mse:.4f}")


@jax.jit
def soft_answer(x, t):
    """The soft unpooling of ``x`` at temperature ``t``, and how far it is from the hard one."""
    soft, p = soft_unpool(x, t)
    # the window softmax spread back onto the image is the gradient of lse_pool
    lse_weights = jax.grad(lambda x: jaxrelax.lse_pool(x, WINDOW, STRIDES, temperature=t).sum())(x)
    value = jaxrelax.soft_pool(x, WINDOW, STRIDES, temperature=t)
    numbers = (
        jnp.abs(value - pooled).mean(),
        jnp.abs(value - windows.mean(-1, keepdims=True)).mean(),
        jnp.abs(p - one_hot).sum(-1)[unique].mean(),
        jnp.mean((soft - exact) ** 2),
        jnp.mean((soft - x) ** 2),
    )
    return soft, numbers, jnp.abs(lse_weights - from_windows(p)).max()


TEMPERATURES = [1.0, 0.1, 0.03, 0.01, 0.001, 0.0001]
columns = ["|soft_pool - max_pool|", "|soft_pool - mean|", "|p - one-hot|_1"]
columns += ["MSE to max_unpool", "MSE to the image"]
print(f"{'t':>6}" + "".join(f"{column:>24}" for column in columns))
soft, soft_numbers = {}, {}
for t in TEMPERATURES:
    soft[t], numbers, lse_gap = soft_answer(shown, t)
    assert lse_gap < 1e-6, (t, float(lse_gap))
    soft_numbers[t] = dict(zip(columns, map(float, numbers), strict=True))
    print(f"{t:>6}" + "".join(f"{float(value):>24.4f}" for value in numbers))
print("(means over windows; |p - one-hot|_1 over the windows with a unique maximum)")

# %% [markdown]
# The figure shows one image, its exact unpooling, and the soft unpoolings as the
# temperature falls; on the right, the softmax weights of one window.

# %%
fig, axes = plt.subplots(1, len(TEMPERATURES) + 3, figsize=(2.0 * (len(TEMPERATURES) + 3), 2.4))
image = 0
panels = [("image", shown[image]), ("max_unpool", exact[image])]
panels += [(f"soft, t={t}", soft[t][image]) for t in TEMPERATURES]
for ax, (title, picture) in zip(axes, panels, strict=False):
    ax.imshow(picture[..., 0], cmap="gray_r", vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
# the window of this image whose two largest pixels are closest (but not tied)
margin = jnp.where(unique[image], gap[image], jnp.inf)
row, col = np.unravel_index(int(jnp.argmin(margin)), margin.shape)
window = windows[image, row, col]
ax = axes[-1]
for i, t in enumerate(TEMPERATURES[::2]):
    ax.bar(
        np.arange(4) + 0.27 * (i - 1), jaxrelax.softmax(window, temperature=t), 0.27, label=f"t={t}"
    )
ax.set_xticks(range(4), [f"{float(v):.3f}" for v in window], fontsize=7)
ax.set_title(f"softmax of window ({row}, {col})", fontsize=9)
ax.set_xlabel("its pixels", fontsize=8)
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(FIGURES / "soft_unpooling.png", dpi=120)
print("wrote", FIGURES / "soft_unpooling.png")

# %% [markdown]
# ## 2. Argmax plus reconstruction: a SegNet-style autoencoder
#
# The encoder has two stages of a 3x3 convolution, ReLU and a 2x2 max-pool (28x28 -> 14x14
# -> 7x7 on Fashion-MNIST); its code is the 7x7x8 output of the second stage, half as many
# numbers as the image has pixels. The decoder mirrors it: upsample, 3x3 convolution, ReLU,
# upsample, 3x3 convolution, sigmoid. Three variants differ only in how they pool and
# upsample:
#
# - **`max_unpool`**: the encoder pools with `max_pool(..., return_indices=True)` and the
#   decoder puts each value back at its winner's position (`max_unpool`), zeros elsewhere.
#   The indices of both stages are extra information the code does not count: two bits per
#   pooled value, 14x14x16 + 7x7x8 = 3,528 of them per Fashion-MNIST image.
# - **`repeat`**: the same encoder, and a decoder that upsamples by repeating each value over
#   its 2x2 window (nearest-neighbour upsampling, `jnp.repeat`).
# - **`st_max_pool + repeat`**: the encoder pools with `st_max_pool`, whose forward pass is the
#   exact max-pool but whose gradient is spread over each window's near-maxima by `soft_pool`'s
#   VJP (temperature 0.1), and the decoder repeats.
#
# All three start from the same initial weights and see the same batches, trained with Adam
# on the mean squared error: 1,500 steps of 64 images (200 of 32 at smoke size). Plain JAX:
# `lax.conv_general_dilated` with NHWC/HWIO dimension numbers.

# %%
CHANNELS = (16, 8)
ST_TEMPERATURE = 0.1
STEPS = 200 if SMOKE else 1_500
BATCH = 32 if SMOKE else 64
optimizer = optax.adam(2e-3)


# The initial weights (He-normal) and the batches (drawn with replacement) come from
# NumPy's generator: the same for every variant, and no random-number code to compile.
BATCHES = np.random.default_rng(1).integers(0, len(train_x), (STEPS, BATCH))


def init_params(seed=0):
    """(kernel, bias) of each 3x3 convolution: encoder 1 -> 16 -> 8, decoder 8 -> 16 -> 1."""
    rng = np.random.default_rng(seed)
    sizes = [(1, CHANNELS[0]), (CHANNELS[0], CHANNELS[1]), (CHANNELS[1], CHANNELS[0])]
    sizes += [(CHANNELS[0], 1)]
    return [
        (jnp.asarray(rng.normal(0, np.sqrt(2 / (9 * m)), (3, 3, m, n)), jnp.float32), jnp.zeros(n))
        for m, n in sizes
    ]


def conv(x, layer):
    kernel, bias = layer
    dimensions = ("NHWC", "HWIO", "NHWC")
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=dimensions) + bias


def max_pool(h):
    return jaxrelax.max_pool(h, WINDOW, STRIDES, return_indices=True)


def st_max_pool(h):
    return jaxrelax.st_max_pool(h, WINDOW, STRIDES, temperature=ST_TEMPERATURE), None


def max_unpool(h, indices, spatial):
    return jaxrelax.max_unpool(h, indices, WINDOW, STRIDES, spatial_shape=spatial)


def repeat(h, indices, spatial):
    return jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)


VARIANTS = {  # name -> (encoder's pooling, decoder's upsampling)
    "max_unpool": (max_pool, max_unpool),
    "repeat": (max_pool, repeat),
    "st_max_pool + repeat": (st_max_pool, repeat),
}


def autoencode(params, x, pool, upsample):
    enc1, enc2, dec1, dec2 = params
    h1 = jax.nn.relu(conv(x, enc1))
    p1, indices1 = pool(h1)
    h2 = jax.nn.relu(conv(p1, enc2))
    code, indices2 = pool(h2)
    h = jax.nn.relu(conv(upsample(code, indices2, h2.shape[1:3]), dec1))
    return jax.nn.sigmoid(conv(upsample(h, indices1, h1.shape[1:3]), dec2))


def make_train_step(pool, upsample):
    def loss_fn(params, x):
        return jnp.mean((autoencode(params, x, pool, upsample) - x) ** 2)

    @jax.jit
    def train_step(params, opt_state, x, batch):
        """One Adam step on the images ``x[batch]``."""
        loss, grads = jax.value_and_grad(loss_fn)(params, x[batch])
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


@partial(jax.jit, static_argnums=(2, 3))
def reconstruct(params, x, pool, upsample):
    """Reconstructions of ``x``, in batches of 500 images to bound the memory."""
    batches = x.reshape(-1, 500, *x.shape[1:]) if len(x) % 500 == 0 else x[None]
    out = lax.map(lambda b: autoencode(params, b, pool, upsample), batches)
    return out.reshape(x.shape)


# %% [markdown]
# ## Training the three variants from the same seeds
#
# The table gives the held-out (test-set) mean squared error per pixel, and the wall time of
# each training, compilation included. Two references that need no training bound it from
# above: predicting the mean training image for every image, and predicting all zeros.

# %%
results = {}
for name, (pool, upsample) in VARIANTS.items():
    params = init_params()
    opt_state = optimizer.init(params)
    train_step = make_train_step(pool, upsample)
    start = time.perf_counter()
    losses = []
    for batch in BATCHES:
        params, opt_state, loss = train_step(params, opt_state, train_x, batch)
        losses.append(loss)
    params = jax.block_until_ready(params)
    seconds = time.perf_counter() - start
    out = reconstruct(params, test_x, pool, upsample)
    mse = float(jnp.mean((out - test_x) ** 2))
    results[name] = dict(params=params, out=out, mse=mse, seconds=seconds)
    results[name]["losses"] = np.asarray(jnp.stack(losses))
    print(f"{name}: test MSE {mse:.5f}, trained in {seconds:.1f} s")

mean_image_mse = float(jnp.mean((train_x.mean(0) - test_x) ** 2))
zeros_mse = float(jnp.mean(test_x**2))
code_size = (SIDE // 4) ** 2 * CHANNELS[1]
indices = (SIDE // 2) ** 2 * CHANNELS[0] + code_size
print()
print(
    f"{STEPS} steps of {BATCH} images from {len(train_x)} training images; code of "
    f"{code_size} numbers per {SIDE * SIDE}-pixel image (max_unpool's decoder also gets "
    f"{indices} indices, 2 bits each); held-out reconstruction error:"
)
print(f"{'variant':<24}{'encoder':<13}{'decoder':<12}{'test MSE':>10}{'seconds':>9}")
for name, (pool, upsample) in VARIANTS.items():
    row = results[name]
    print(
        f"{name:<24}{pool.__name__:<13}{upsample.__name__:<12}"
        f"{row['mse']:>10.5f}{row['seconds']:>9.1f}"
    )
print(f"{'mean training image':<24}{'-':<13}{'-':<12}{mean_image_mse:>10.5f}{'-':>9}")
print(f"{'all zeros':<24}{'-':<13}{'-':<12}{zeros_mse:>10.5f}{'-':>9}")
best = min(VARIANTS, key=lambda name: results[name]["mse"])
print(f"best variant: {best} ({results[best]['mse']:.5f})")
for name in VARIANTS:  # every autoencoder learns something
    assert results[name]["mse"] < mean_image_mse, (name, results[name]["mse"])

# %% [markdown]
# ## Reconstructions side by side
#
# Test images (top row) and each variant's reconstructions; the second figure shows the
# training loss (mean squared error per batch, smoothed over 50 steps).

# %%
shown_count = 8
rows = ["test images", *VARIANTS]
fig, axes = plt.subplots(len(rows), shown_count, figsize=(1.3 * shown_count, 1.45 * len(rows)))
for row, name in zip(axes, rows, strict=True):
    pictures = test_x if name == "test images" else results[name]["out"]
    label = name if name == "test images" else f"{name}\nMSE {results[name]['mse']:.4f}"
    row[0].set_ylabel(label, fontsize=8)
    for i, ax in enumerate(row):
        ax.imshow(pictures[i, ..., 0], cmap="gray_r", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
fig.suptitle(f"held-out reconstructions ({DATASET})", fontsize=10)
fig.tight_layout()
fig.savefig(FIGURES / "reconstructions.png", dpi=120)
print("wrote", FIGURES / "reconstructions.png")

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
smooth = min(50, STEPS // 4)
for name in VARIANTS:
    curve = np.convolve(results[name]["losses"], np.ones(smooth) / smooth, mode="valid")
    ax.plot(np.arange(len(curve)) + smooth, curve, label=name)
ax.axhline(mean_image_mse, color="gray", ls=":", label="predicting the mean image (test)")
ax.set(xlabel="training step", ylabel="training MSE", yscale="log")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(FIGURES / "training_loss.png", dpi=120)
print("wrote", FIGURES / "training_loss.png")

# %% [markdown]
# ## 3. The stochastic answer: sample where the maximum came from
#
# Treat each window's four pixels, divided by a scale `s`, as logits, and draw the winner's
# position with `gumbel_softmax(key, window / s, hard=True)`: the one-hot of
# `argmax(window / s + g)` with Gumbel noise `g`, an exact sample of the categorical
# distribution `softmax(window / s)`, which is the soft answer's weights at `t = s`. (With
# `hard=True` the forward sample does not depend on `gumbel_softmax`'s own temperature, which
# sets only the straight-through gradient: the sharpness of the distribution is the scale of
# the logits.) Putting each window's maximum back at the sampled position is a stochastic
# unpooling: exact whenever the sample hits the winner, which happens with probability
# `softmax(window / s)[argmax]`, tending to 1 as `s -> 0`.
#
# For each scale, on the images of part 1, we draw many samples and compare how often they
# hit the winner (among windows with a unique maximum) with the probability the softmax
# gives, and the mean of the samples with those probabilities.

# %%
SAMPLES = 100 if SMOKE else 1_000
SCALES = [0.3, 0.1, 0.03, 0.01, 0.001]


@partial(jax.jit, static_argnums=2)
def stochastic_answer(key, s, samples):
    """``samples`` hard one-hot draws of gumbel_softmax over each window of the images of
    part 1 at scale ``s``, and how they compare with the softmax they sample."""
    keys = jax.random.split(key, samples)
    draws = jax.vmap(lambda k: jaxrelax.gumbel_softmax(k, windows / s, hard=True))(keys)
    p = jaxrelax.softmax(windows / s)
    # z-scores of the sample frequencies, where the normal approximation holds (at least 10
    # expected draws of the position and 10 of the others)
    normal = (samples * p >= 10) & (samples * (1 - p) >= 10)
    z = jnp.where(normal, jnp.abs(draws.mean(0) - p) / jnp.sqrt(p * (1 - p) / samples), 0)
    numbers = (
        (draws * one_hot).sum(-1).mean(0)[unique].mean(),
        (p * one_hot).sum(-1)[unique].mean(),
        z.max(),
        # each pixel of a sample's unpooling is the window's maximum or 0, as in the exact one
        jnp.mean((draws - one_hot) ** 2 * pooled**2),
        jnp.mean((draws * pooled - windows) ** 2),
    )
    sample = from_windows(draws[0] * pooled)
    return sample, draws.mean(0), p, jnp.all(draws.sum(-1) == 1), numbers


columns = ["P(hit) sampled", "P(hit) softmax", "max |mean - p| / s.e."]
columns += ["MSE to max_unpool", "MSE to the image"]
print(f"{'scale s':>8}" + "".join(f"{column:>24}" for column in columns))
sampled = {}
for i, s in enumerate(SCALES):
    sample, frequency, p, one_hot_draws, numbers = stochastic_answer(
        jax.random.key(10 + i), s, SAMPLES
    )
    sampled[s] = dict(sample=sample, frequency=frequency, p=p)
    sampled[s].update(zip(columns, map(float, numbers), strict=True))
    assert one_hot_draws, "gumbel_softmax(hard=True) draws that are not one-hot"
    print(f"{s:>8}" + "".join(f"{float(value):>24.4f}" for value in numbers))
    # With fixed keys this is deterministic; by chance, a z-score above 6 has a Gaussian tail
    # of 2e-9, which the skew of a binomial with 10 expected draws raises to about 1e-6: over
    # the few thousand positions tested per scale, it fails far less than once in 100 runs.
    assert numbers[2] < 6, (s, float(numbers[2]))
print(f"({SAMPLES} samples; P(hit) over the windows with a unique maximum)")

# %% [markdown]
# Left, one sample of the stochastic unpooling of the image of part 1 at two scales, beside
# the exact one. Right, for every window position of the eight images, the share of the
# samples that picked it against its softmax probability: the points lie on the diagonal,
# within the sampling error.

# %%
SHOWN_SCALES = [0.1, 0.01]
fig, axes = plt.subplots(
    1, len(SHOWN_SCALES) + 3, figsize=(2.3 * (len(SHOWN_SCALES) + 4), 2.8), layout="constrained"
)
panels = [("image", shown[image]), ("max_unpool", exact[image])]
panels += [(f"a Gumbel sample, s={s}", sampled[s]["sample"][image]) for s in SHOWN_SCALES]
for ax, (title, picture) in zip(axes, panels, strict=False):
    ax.imshow(picture[..., 0], cmap="gray_r", vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
ax = axes[-1]
ax.set_box_aspect(1)
for s in SCALES:
    ax.plot(sampled[s]["p"].ravel(), sampled[s]["frequency"].ravel(), ".", ms=2, label=f"s={s}")
ax.plot([0, 1], [0, 1], "k:", lw=0.8)
ax.set(xlabel="softmax(window / s)", ylabel=f"share of {SAMPLES} samples")
ax.legend(fontsize=7, markerscale=4)
fig.savefig(FIGURES / "gumbel_unpooling.png", dpi=120)
print("wrote", FIGURES / "gumbel_unpooling.png")
print(f"figures written to {FIGURES}")
print(f"total run time {time.perf_counter() - START:.0f} s")

# %% [markdown]
# ## Conclusion
#
# The cell below states the conclusion from this run's results (the data set found, the
# size, the one seed), so that it can never disagree with the tables above.

# %%
hot, cold = TEMPERATURES[0], TEMPERATURES[-1]
warm = 0.1
first, last = soft_numbers[hot], soft_numbers[cold]
mse = {name: results[name]["mse"] for name in VARIANTS}
coarse, fine = SCALES[0], SCALES[-1]
lines = [
    f"On {DATASET} ({len(train_x)} training images, {STEPS} steps of {BATCH}, one seed):",
    f"Soft: as t falls from {hot} to {cold}, soft_pool moves from "
    f"{first['|soft_pool - mean|']:.3f} from the window's mean to "
    f"{last['|soft_pool - max_pool|']:.4f} from its maximum, the window softmax from "
    f"{first['|p - one-hot|_1']:.2f} to {last['|p - one-hot|_1']:.4f} from the one-hot "
    f"(L1; uniform is 1.5), and the soft unpooling from {first['MSE to max_unpool']:.4f} to "
    f"{last['MSE to max_unpool']:.4f} from max_unpool's (MSE): "
    f"{float(unique.mean()):.0%} of the windows shown have a unique maximum, and the soft "
    f"answer splits a tied one. At t = {warm} the soft unpooling is "
    f"{'closer to' if soft_numbers[warm]['MSE to the image'] < exact_mse else 'farther from'}"
    f" the image than the exact one (MSE {soft_numbers[warm]['MSE to the image']:.3f} "
    f"against {exact_mse:.3f}).",
    f"Argmax plus reconstruction: held-out MSE {', '.join(f'{n} {mse[n]:.4f}' for n in VARIANTS)}"
    f" (the mean training image: {mean_image_mse:.4f}); best: {best}, "
    f"max_unpool's error {mse['max_unpool'] / mse['repeat']:.2f} times repeating's, with "
    f"{indices} indices per image beside its {code_size}-number code.",
    f"Stochastic: hard Gumbel-softmax samples hit the winner as often as the softmax says "
    f"({sampled[coarse]['P(hit) sampled']:.3f} against {sampled[coarse]['P(hit) softmax']:.3f} "
    f"at scale {coarse}, {sampled[fine]['P(hit) sampled']:.4f} against "
    f"{sampled[fine]['P(hit) softmax']:.4f} at {fine}; the largest deviation of a position's "
    f"frequency, {max(sampled[s]['max |mean - p| / s.e.'] for s in SCALES):.1f} standard "
    "errors): the stochastic answer is the soft one, drawn.",
]
print("conclusion:")
for line in lines:
    print(" ", line)
