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
# # A tour of jaxrelax in pictures
#
# Every relaxation in the library drawn against the hard operation it relaxes, as the
# temperature varies: soft one-hots on the simplex, smooth maxima, sparse maps, soft
# (spatial) argmax, straight-through estimators and Gumbel samples. Each section also checks
# a few facts about what it draws.
#
# Run it as a script (`python notebooks/01_tour.py`) or open it in Jupyter with jupytext.
# Figures are saved under `figures/tour` (or `$JAXRELAX_FIGURES`); `JAXRELAX_SMOKE=1` draws
# them on coarse grids. Each section computes its arrays in one `jax.jit`-compiled function
# and does the rest in NumPy: a few compilations are much quicker than running JAX eagerly, op
# by op, on many small shapes.

# %%
import math
import os
import shutil
import sys
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxrelax

if "ipykernel" not in sys.modules:
    import matplotlib

    matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.lines import Line2D

SMOKE = os.environ.get("JAXRELAX_SMOKE") == "1"
INTERACTIVE = "ipykernel" in sys.modules
FIGURES = Path(os.environ.get("JAXRELAX_FIGURES", "figures/tour"))
FIGURES.mkdir(parents=True, exist_ok=True)
print(f"jaxrelax {jaxrelax.__version__} on jax {jax.__version__} ({jax.default_backend()})")

plt.rcParams.update({"axes.spines.top": False, "axes.spines.right": False, "font.size": 10})
TEMPERATURES = [2.0, 1.0, 0.5, 0.25, 0.1]
COLOR = dict(
    zip(TEMPERATURES, plt.cm.viridis(np.linspace(0.0, 0.85, len(TEMPERATURES))), strict=True)
)
HARD = {"color": "crimson", "zorder": 5}  # the hard operation is drawn in red throughout


def at_temperatures(f, temperatures=TEMPERATURES):  # f(t) for each t, stacked on a new axis 0
    return jax.vmap(f)(jnp.asarray(temperatures))


def save(fig, name, *copies):
    fig.savefig(FIGURES / name, dpi=70 if SMOKE else 110, bbox_inches="tight")
    for path in [FIGURES / name, *(FIGURES / copy for copy in copies)]:
        if path.name != name:
            shutil.copyfile(FIGURES / name, path)
        print(f"saved {path}")
    if not INTERACTIVE:
        plt.close(fig)


def as_tuple(x):
    return "(" + ", ".join(f"{v:g}" for v in np.asarray(x)) + ")"


# The probability simplex of three classes, drawn as a triangle: barycentric -> plane.
CORNERS = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])


def on_triangle(p):
    return np.asarray(p) @ CORNERS


def draw_simplex(ax, title):
    ax.plot(*CORNERS[[0, 1, 2, 0]].T, color="0.3", lw=0.8)
    offsets = [(-10, -4), (10, -4), (0, 8)]  # in points, away from each corner
    for k, (corner, offset) in enumerate(zip(CORNERS, offsets, strict=True)):
        ha = {-10: "right", 10: "left", 0: "center"}[offset[0]]
        ax.annotate(f"class {k}", corner, xytext=offset, textcoords="offset points", ha=ha)
    ax.set_title(title, pad=18)
    ax.set_aspect("equal")
    ax.axis("off")


# %% [markdown]
# ## 1. Soft one-hots on the simplex
#
# A score vector `x` of three classes is mapped to a point of the simplex. `hardmax(x)` is a
# vertex; `softmax(x / t)` is a point strictly inside that slides to the vertex as `t -> 0`
# and to the centre as `t -> inf`. Below, the scores go round a circle,
# `x_k = cos(theta - 2 pi k / 3) / 2`, so each map draws a closed curve, one per temperature;
# the dots follow one score vector and the star is its hardmax. Softmax never reaches the
# edges; the sparse maps of section 3 (`entmax15`, `sparsemax`) reach edges and vertices at
# finite temperatures: exact zeros. (At `t = 2` sparsemax is still affine on this path, so the
# circle of scores stays a circle.)

# %%
theta = np.linspace(0.0, 2 * np.pi, 120 if SMOKE else 720)
phases = 2 * np.pi * np.arange(3) / 3
circle = np.cos(theta[:, None] - phases) / 2  # (points, 3): a path of score vectors
x0 = np.cos(0.4 - phases) / 2  # the score vector followed by the dots
simplex_maps = {
    "softmax": jaxrelax.softmax,
    "entmax15": jaxrelax.entmax15,
    "sparsemax": jaxrelax.sparsemax,
}


@jax.jit
def on_simplex(scores):  # {map: (temperatures, *scores.shape)}, and the hardmax
    soft = {
        name: at_temperatures(lambda t, relax=relax: relax(scores, temperature=t))
        for name, relax in simplex_maps.items()
    }
    return soft, jaxrelax.hardmax(scores)


soft, hard = jax.device_get(on_simplex(np.vstack([circle, x0])))  # x0 is the last row
paths = {name: p[:, :-1] for name, p in soft.items()}
dots = {name: p[:, -1] for name, p in soft.items()}
hard0 = hard[-1]

fig, axes = plt.subplots(1, 3, figsize=(13, 4.1), layout="constrained")
for ax, name in zip(axes, simplex_maps, strict=True):
    draw_simplex(ax, f"{name}(x / t) vs hardmax(x)")
    for i, t in enumerate(TEMPERATURES):
        ax.plot(*on_triangle(paths[name][i]).T, color=COLOR[t], lw=1.5, label=f"t = {t}")
        ax.scatter(*on_triangle(dots[name][i]), color=COLOR[t], s=30, edgecolor="k", zorder=4)
    ax.scatter(*on_triangle(hard0), marker="*", s=250, label="hardmax", **HARD)
axes[0].legend(loc="upper left", frameon=False)
save(fig, "01_simplex.png", "tour.png")

for i, t in enumerate(TEMPERATURES):
    smallest = paths["softmax"][i].min()
    on_edge = np.mean(np.any(paths["sparsemax"][i] == 0, axis=-1))
    print(f"t={t:<4}  softmax smallest entry {smallest:.1e}  sparsemax on an edge {on_edge:4.0%}")
    assert smallest > 0
distance = np.abs(dots["softmax"][-1] - hard0).max()
print(f"softmax(x0 / {TEMPERATURES[-1]}) is within {distance:.1e} of hardmax(x0)")
assert distance < 0.01

# %% [markdown]
# ## 2. Smooth maxima
#
# `smooth_max` relaxes `max(x)` itself. With `method="logsumexp"` it is `t log sum exp(x / t)`,
# an upper bound within `t log n`; with `method="softmax"` it is the softmax-weighted mean
# `softmax(x / t) . x`, a lower bound (and above the mean). Left and centre: slices of two
# scores `x = (d, 0)` against the hard `max(d, 0)`. Right: the level set at height 1 in the
# `(x1, x2)` plane: the hard max's is a sharp corner, which the logsumexp curves (solid) round
# off from inside and the softmax-weighted ones (dotted) from outside.

# %%
d = np.linspace(-3.0, 3.0, 121 if SMOKE else 601)
pairs = np.stack([d, np.zeros_like(d)], axis=-1)
g = np.linspace(-2.0, 2.0, 81 if SMOKE else 401)
grid = np.stack(np.meshgrid(g, g), axis=-1)  # grid[i, j] = (x1, x2) = (g[j], g[i])
hard_grid = grid.max(axis=-1)


@jax.jit
def smooth_maxima(x):  # {method: (temperatures, *x.shape[:-1])}
    return {
        method: at_temperatures(lambda t, m=method: jaxrelax.smooth_max(x, temperature=t, method=m))
        for method in ["logsumexp", "softmax"]
    }


slices, surfaces = jax.device_get((smooth_maxima(pairs), smooth_maxima(grid)))
fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), layout="constrained")
for i, t in enumerate(TEMPERATURES):
    axes[0].plot(d, slices["logsumexp"][i], color=COLOR[t], label=f"t = {t}")
    axes[1].plot(d, slices["softmax"][i], color=COLOR[t])
    for method, style in [("logsumexp", "solid"), ("softmax", "dotted")]:
        level = surfaces[method][i]
        axes[2].contour(g, g, level, levels=[1.0], colors=[COLOR[t]], linestyles=style)
for ax, title in zip(axes[:2], ["t logsumexp(x / t)", "softmax(x / t) . x"], strict=True):
    ax.plot(d, np.maximum(d, 0.0), ls="--", label="max(x)", **HARD)
    ax.set(title=f"{title}, x = (d, 0)", xlabel="d = x1 - x2")
axes[0].legend(frameon=False)
axes[2].contour(g, g, hard_grid, levels=[1.0], colors=[HARD["color"]], linestyles="dashed")
axes[2].legend(
    [Line2D([], [], color="k"), Line2D([], [], color="k", ls=":"), Line2D([], [], ls="--", **HARD)],
    ["logsumexp", "softmax-weighted", "max"],
    loc="lower left",
    frameon=False,
)
axes[2].set(title="level set {smooth max = 1}", xlabel="x1", ylabel="x2", aspect="equal")
save(fig, "02_smooth_max.png")

tol = 1e-5  # float32 rounding
for i, t in enumerate(TEMPERATURES):
    lse, weighted = surfaces["logsumexp"][i], surfaces["softmax"][i]
    assert np.all(weighted <= hard_grid + tol) and np.all(hard_grid <= lse + tol)
    assert np.all(lse <= hard_grid + t * math.log(2) + tol)
    gap = (lse - hard_grid).max()  # attained on the diagonal x1 = x2
    print(f"t={t:<4}  max(logsumexp - max) = {gap:.4f}   t log 2 = {t * math.log(2):.4f}")
    assert abs(gap - t * math.log(2)) < 1e-4
print("on the grid: softmax-weighted <= max <= logsumexp <= max + t log 2")

# %% [markdown]
# ## 3. Sparse maps: sparsemax and entmax
#
# `sparsemax` is the Euclidean projection onto the simplex; `entmax(x, alpha=alpha)` interpolates:
# softmax at `alpha = 1`, `entmax15` at 1.5, sparsemax at 2, sparser beyond. For two scores
# `x = (d, 0)` the probability of the first is a sigmoid for softmax, but for `alpha > 1` it
# saturates: once the gap `|d|` passes `t / (alpha - 1)` (the dots) the lower score gets
# exactly 0 and the map agrees with hardmax. On six classes, the larger `alpha`, the fewer
# classes keep any mass.

# %%
gaps = np.linspace(-5.0, 5.0, 201 if SMOKE else 1001)
two = np.stack([gaps, np.zeros_like(gaps)], axis=-1)
scores = np.array([2.0, 1.7, 1.1, 0.8, 0.0, -1.0])
sparse_maps = {  # name: (alpha, function)
    "softmax": (1.0, jaxrelax.softmax),
    "entmax α = 1.25": (1.25, partial(jaxrelax.entmax, alpha=1.25)),
    "entmax15": (1.5, jaxrelax.entmax15),
    "sparsemax": (2.0, jaxrelax.sparsemax),
    "entmax α = 3": (3.0, partial(jaxrelax.entmax, alpha=3.0)),
    "hardmax": (math.inf, jaxrelax.hardmax),
}


@jax.jit
def sparse_probs(x):  # {name: probabilities of x's shape}
    return {name: relax(x) for name, (_, relax) in sparse_maps.items()}


on_two, on_six = jax.device_get((sparse_probs(two), sparse_probs(scores)))
colors = [*plt.cm.plasma(np.linspace(0.0, 0.8, len(sparse_maps) - 1)), HARD["color"]]
bar = 0.8 / len(sparse_maps)
positions = np.arange(len(scores))

fig, axes = plt.subplots(1, 2, figsize=(14, 4.4), layout="constrained")
for i, (color, (name, (alpha, _))) in enumerate(zip(colors, sparse_maps.items(), strict=True)):
    style = {"ls": "--", "zorder": 5} if name == "hardmax" else {}
    axes[0].plot(gaps, on_two[name][:, 0], color=color, label=name, **style)
    support = int(np.sum(on_six[name] > 0))
    label = f"{name} ({support} nonzero)"
    axes[1].bar(positions + i * bar, on_six[name], bar, color=color, label=label)
    print(f"{name:16} {on_six[name].round(3)}  classes with mass: {support}")
    if 1 < alpha < math.inf:
        edge = 1 / (alpha - 1)  # the two-class saturation gap at t = 1
        axes[0].scatter([-edge, edge], [0.0, 1.0], color=color, s=25, zorder=4)
        # exact zeros beyond the saturation gap, none within it (0.05 of margin for rounding)
        loser = on_two[name].min(axis=-1)
        assert np.all(loser[np.abs(gaps) > edge + 0.05] == 0.0)
        assert np.all(loser[np.abs(gaps) < edge - 0.05] > 0.0)
axes[0].set(title="first coordinate for x = (d, 0), t = 1", xlabel="d", ylabel="probability")
axes[0].legend(frameon=False)
axes[1].set_xticks(positions + 0.4 - bar / 2, [f"{s:g}" for s in scores])
axes[1].set(title="six classes, t = 1", xlabel="score", ylabel="probability")
axes[1].legend(frameon=False)
save(fig, "03_sparse.png")

assert np.all(on_two["softmax"] > 0)
assert np.any(on_six["sparsemax"] == 0) and np.all(on_six["softmax"] > 0)
print("sparsemax has exact zeros where softmax has none")

# %% [markdown]
# ## 4. Soft argmax: the expected index and the expected keypoint
#
# `soft_argmax` is the expected index `sum_i i softmax(x / t)_i`: the mean index as `t -> inf`,
# the argmax as `t -> 0`, and in between a compromise between competing maxima (it can land on
# an index that is no maximum at all). `st_argmax` keeps the exact argmax forward and uses this
# gradient backward. `spatial_soft_argmax` does the same over a heatmap, returning the expected
# (row, column): below, two Gaussian bumps of heights 1 and 0.85. As `t` falls the soft
# keypoint leaves the image centre, may be drawn towards the broader bump (it holds more
# mass; the temperatures where it lies nearer that bump are printed below) and settles on
# the higher bump's peak, the hard argmax (asserted).

# %%
line = np.array([0.2, 0.9, 2.0, 0.3, 0.5, 0.1, 0.6, 1.8, 0.4, 0.0])
height, width = (24, 32) if SMOKE else (60, 80)
rows, cols = np.mgrid[:height, :width]


def bump(row, col, peak, spread):
    return peak * np.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * spread**2))


peaks = [
    (round(0.3 * height), round(0.7 * width), 1.0),
    (round(0.65 * height), round(0.25 * width), 0.85),
]
heatmap = bump(*peaks[0], 0.1 * height) + bump(*peaks[1], 0.2 * height)
hard_point = np.unravel_index(np.argmax(heatmap), heatmap.shape)


@jax.jit
def soft_points(ts):  # per temperature: soft and straight-through index of `line`, keypoint
    lines = jnp.broadcast_to(line, (len(ts), len(line)))
    maps = jnp.broadcast_to(heatmap, (len(ts), height, width))
    return (
        jaxrelax.soft_argmax(lines, temperature=ts[:, None]),
        jaxrelax.st_argmax(lines, temperature=ts[:, None]),
        jaxrelax.spatial_soft_argmax(
            maps, temperature=ts[:, None, None], normalized=False, channel_axis=None
        ),
    )


dot_ts = [1.0, 0.3, 0.1, 0.03, 0.01]
ts = np.unique(np.concatenate([np.logspace(-3, 1.5, 80 if SMOKE else 400), dot_ts]))
expected, hard_index, keypoints = jax.device_get(soft_points(ts))
dot_points = keypoints[np.isin(ts, dot_ts)][::-1]  # in the order of dot_ts
miss = np.linalg.norm(keypoints - hard_point, axis=-1)

fig, axes = plt.subplots(1, 3, figsize=(16, 4.4), layout="constrained")
axes[0].semilogx(ts, expected, color="k", label="soft_argmax(x / t)")
axes[0].semilogx(ts, hard_index, ls="--", label="argmax = st_argmax forward", **HARD)
axes[0].axhline((len(line) - 1) / 2, color="0.6", ls=":", label="mean index (t -> inf)")
axes[0].set(title="soft_argmax vs argmax", xlabel="temperature t", ylabel="index")
axes[0].text(
    0.98, 0.1, f"x = {as_tuple(line)}", transform=axes[0].transAxes, ha="right", fontsize=8
)
axes[0].legend(loc="center right", frameon=False)
axes[1].imshow(heatmap, cmap="Greys")
for row, col, peak in peaks:
    label = f"peak {peak:g}"
    box = {"boxstyle": "round", "fc": "white", "alpha": 0.8}
    axes[1].annotate(
        label, (col, row), xytext=(0, 24), textcoords="offset points", ha="center", bbox=box
    )
axes[1].plot(keypoints[:, 1], keypoints[:, 0], color="0.5", lw=1)
for t, color, (row, col) in zip(dot_ts, COLOR.values(), dot_points, strict=True):
    axes[1].scatter(col, row, color=color, s=40, edgecolor="k", zorder=4, label=f"t = {t}")
axes[1].scatter(hard_point[1], hard_point[0], marker="*", s=250, label="hard argmax", **HARD)
axes[1].set(title="spatial_soft_argmax on a heatmap", xticks=[], yticks=[])
axes[1].legend(loc="lower right", fontsize=8)
axes[2].semilogx(ts, miss, color="k")
axes[2].set(
    title="soft keypoint's distance to the hard argmax", xlabel="temperature t", ylabel="pixels"
)
save(fig, "04_soft_argmax.png")

print(f"soft_argmax at t={ts[0]:.0e}: {expected[0]:.4f}, argmax {np.argmax(line)}")
print(
    f"soft keypoint at t={ts[0]:.0e}: {as_tuple(keypoints[0])}, hard argmax {as_tuple(hard_point)}"
)
to_broad, to_high = (np.linalg.norm(keypoints - peak[:2], axis=-1) for peak in peaks[::-1])
drawn = ts[to_broad < to_high]
print(
    f"nearer the broader bump than the higher one at t = {drawn.min():.2g} to {drawn.max():.2g}"
    if drawn.size
    else "never nearer the broader bump than the higher one"
)
assert np.all(hard_index == np.argmax(line))
assert abs(expected[0] - np.argmax(line)) < 1e-3 and miss[0] < 0.05

# %% [markdown]
# ## 5. Straight-through: exact forward, soft backward
#
# `st_hardmax` returns the exact one-hot, like `hardmax` (whose gradient is zero), and
# back-propagates the vector-Jacobian product of `softmax(x / t)`. For the loss
# `sum(w * y)` the gradient is the VJP of `w`, so it is exactly the softmax's,
# `p * (w - p . w) / t`, although the forward value is the one-hot, which the softmax only
# reaches as `t -> 0`.
# Right: that gradient as the temperature varies, spread over all classes when warm and
# vanishing when cold.

# %%
x = np.array([1.0, 2.2, 1.9, 0.3, -0.5], np.float32)
w = np.array([0.5, -1.0, 2.0, 0.0, 1.0], np.float32)
t_st = 0.5


def hardmax_with_t(x, temperature):  # hardmax takes no temperature
    return jaxrelax.hardmax(x)


relaxations = {
    "hardmax": hardmax_with_t,
    "st_hardmax": jaxrelax.st_hardmax,
    "softmax": jaxrelax.softmax,
}


@jax.jit
@jax.vmap
def forward_backward(t):  # {name: (y, the gradient of sum(w * y): the VJP of w)} for each t
    results = {}
    for name, relax in relaxations.items():
        y, vjp = jax.vjp(lambda x, relax=relax: relax(x, temperature=t), x)
        results[name] = y, vjp(w)[0]
    return results


@jax.jit
def straight_through_pairs(t):  # value and gradient of st_max, st_argmax and their smooth ops
    ops = {
        "max": (jaxrelax.st_max, jaxrelax.smooth_max),
        "argmax": (jaxrelax.st_argmax, jaxrelax.soft_argmax),
    }
    return {name: [jax.value_and_grad(f)(x, temperature=t) for f in fs] for name, fs in ops.items()}


many_ts = np.unique(np.append(np.logspace(-1.5, 1, 40 if SMOKE else 200), t_st))
results, st_pairs = jax.device_get((forward_backward(many_ts), straight_through_pairs(t_st)))
at = np.flatnonzero(many_ts == t_st)[0]
forward = {name: y[at] for name, (y, _) in results.items()}
backward = {name: grad[at] for name, (_, grad) in results.items()}
st_grads = results["st_hardmax"][1]
assert np.array_equal(forward["st_hardmax"], forward["hardmax"])
assert np.allclose(backward["st_hardmax"], backward["softmax"], atol=1e-6)
assert np.all(backward["hardmax"] == 0)

classes = np.arange(len(x))
fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), layout="constrained")
for i, (name, color) in enumerate(
    zip(relaxations, [HARD["color"], "tab:blue", "0.6"], strict=True)
):
    label = name + (" (gradient 0)" if name == "hardmax" else "")
    axes[0].bar(classes + (i - 1) * 0.27, forward[name], 0.27, color=color, label=name)
    axes[1].bar(classes + (i - 1) * 0.27, backward[name], 0.27, color=color, label=label)
axes[0].set(title=f"forward y, t = {t_st}, x = {as_tuple(x)}", xlabel="class", ylabel="y")
axes[1].set(title=f"gradient of sum(w * y), w = {as_tuple(w)}", xlabel="class", ylabel="dL / dx")
axes[1].axhline(0.0, color="k", lw=0.5)
for ax in axes[:2]:
    ax.legend(frameon=False)
    ax.set_xticks(classes)
for k in classes:
    axes[2].semilogx(many_ts, st_grads[:, k], label=f"class {k}")
axes[2].axvline(t_st, color="0.6", ls=":")
axes[2].set(title="st_hardmax gradient vs temperature", xlabel="temperature t", ylabel="dL / dx")
axes[2].legend(frameon=False)
save(fig, "05_straight_through.png")

print(f"st_hardmax forward {forward['st_hardmax']}  gradient {backward['st_hardmax'].round(4)}")
print(f"softmax    forward {forward['softmax'].round(4)}  gradient {backward['softmax'].round(4)}")
# st_max and st_argmax: the exact max and argmax forward, smooth_max's and soft_argmax's
# gradients backward.
(st_max, st_max_grad), (_, smooth_max_grad) = st_pairs["max"]
(st_argmax, st_argmax_grad), (_, soft_argmax_grad) = st_pairs["argmax"]
assert st_max == x.max() and st_argmax == np.argmax(x)
assert np.allclose(st_max_grad, smooth_max_grad) and np.allclose(st_argmax_grad, soft_argmax_grad)
print(f"st_max {st_max:g}, st_argmax {st_argmax:g}: exact forward, smooth gradients backward")

# %% [markdown]
# ## 6. Gumbel-softmax and binary Concrete samples
#
# `gumbel_softmax(key, logits, temperature=t)` is `softmax((logits + g) / t)` with Gumbel
# noise `g`: a random point of the simplex. The same noise is used at every temperature, so
# each sample slides towards the vertex of `argmax(logits + g)`, an exact sample of
# `softmax(logits)` (and the forward value with `hard=True`; the colours show it). The star is
# `softmax(logits)`, the mean of the hard samples. `binary_concrete` is the two-class case:
# its samples pile up at 0 and 1 as `t -> 0`, in proportion `sigmoid(logit)`.

# %%
num_samples = 500 if SMOKE else 4000
probs = np.array([0.2, 0.5, 0.3])
logits = np.broadcast_to(np.log(probs), (num_samples, 3))
binary_logits = np.full(num_samples, math.log(0.3 / 0.7))
gumbel_ts = [2.0, 1.0, 0.5, 0.1]


@jax.jit
def samples(key):  # soft samples per temperature, then the hard ones, from the same noise
    key_categorical, key_binary = jax.random.split(key)
    soft = at_temperatures(
        lambda t: jaxrelax.gumbel_softmax(key_categorical, logits, temperature=t), gumbel_ts
    )
    binary = at_temperatures(
        lambda t: jaxrelax.binary_concrete(key_binary, binary_logits, temperature=t), gumbel_ts
    )
    hard = jaxrelax.gumbel_softmax(key_categorical, logits, hard=True)
    return soft, binary, hard, jaxrelax.binary_concrete(key_binary, binary_logits, hard=True)


soft_samples, binary_samples, hard_samples, bernoulli = jax.device_get(samples(jax.random.key(0)))
classes_drawn = np.argmax(hard_samples, axis=-1)
class_colors = np.array(["tab:blue", "tab:orange", "tab:green"])[classes_drawn]

fig, axes = plt.subplots(1, len(gumbel_ts) + 1, figsize=(20, 4.4), layout="constrained")
for ax, t, sample in zip(axes[:-1], gumbel_ts, soft_samples, strict=True):
    assert np.array_equal(np.argmax(sample, axis=-1), classes_drawn)
    draw_simplex(ax, f"gumbel_softmax, t = {t}")
    ax.scatter(*on_triangle(sample).T, s=6, c=class_colors, alpha=0.5, linewidths=0)
    ax.scatter(
        *on_triangle(probs), marker="*", s=250, edgecolor="k", label="softmax(logits)", **HARD
    )
axes[0].legend(loc="upper left", frameon=False)
for t, sample in zip(gumbel_ts, binary_samples, strict=True):
    axes[-1].hist(
        sample, bins=25, range=(0, 1), histtype="step", color=COLOR[t], lw=1.5, label=f"t = {t}"
    )
axes[-1].set(title="binary_concrete, sigmoid(logit) = 0.3", xlabel="sample", ylabel="count")
axes[-1].legend(loc="upper center", frameon=False)
save(fig, "06_gumbel.png")

# Hard samples are exact draws: each frequency within 5 standard errors (a false alarm about
# once in 10^6 keys; the key is fixed, so this run either passes or fails every time).
frequency = hard_samples.mean(axis=0)
standard_error = np.sqrt(probs * (1 - probs) / num_samples)
print(f"hard sample frequencies {as_tuple(frequency)}  vs softmax(logits) {as_tuple(probs)}")
assert np.all(np.abs(frequency - probs) < 5 * standard_error)
print(f"binary_concrete hard frequency {bernoulli.mean():.3f}  vs sigmoid(logit) 0.3")
assert abs(bernoulli.mean() - 0.3) < 5 * math.sqrt(0.3 * 0.7 / num_samples)

print(f"tour figures written to {FIGURES}")
