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
# # Gradient estimators on toys with exact gradients
#
# A gradient estimator for a discrete choice is judged by how far its samples fall from the
# true gradient of the expected loss. On problems small enough to enumerate,
# `jaxrelax.diagnostics` computes that gradient exactly and measures each estimator's bias,
# variance and mean squared error against it, with standard errors. Two toys:
#
# 1. a single Bernoulli variable, the toy problem of Tucker et al. (REBAR, 2017), where the
#    bias of the relaxed estimators is tens to a hundred times the gradient itself, and an
#    optimiser that follows them settles in the wrong place;
# 2. the three-class quadratic program of Paulus, Maddison and Krause (2021), where
#    Gumbel-Rao lowers the variance of straight-through Gumbel-softmax without changing its
#    expectation.
#
# A last section puts the perturbed argmax of Berthet et al. (2020) beside them on both toys,
# as the number of perturbations grows: an unbiased estimator, with and without its control
# variate, and the biased plug-in gradient that a loss of the perturbed argmax gets.
#
# Run it as a script (`python notebooks/03_estimators.py`) or open it in Jupyter with
# jupytext. `JAXRELAX_SMOKE=1` runs it at a small size (the tests do); figures go to
# `JAXRELAX_FIGURES` (default `figures/estimators`).

# %%
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrelax
from jaxrelax import diagnostics

if "ipykernel" not in sys.modules:
    import matplotlib

    matplotlib.use("Agg")
import matplotlib.pyplot as plt

SMOKE = os.environ.get("JAXRELAX_SMOKE") == "1"
FIGURES = Path(os.environ.get("JAXRELAX_FIGURES", "figures/estimators"))
FIGURES.mkdir(parents=True, exist_ok=True)
print(f"jaxrelax {jaxrelax.__version__} on jax {jax.__version__} ({jax.default_backend()})")

NUM_SAMPLES = 2**11 if SMOKE else 2**16  # gradient samples per estimator and temperature
TEMPERATURES = np.float32([0.125, 0.5, 2.0] if SMOKE else 0.5 * 2.0 ** np.arange(-4, 4))
NUM_STEPS, NUM_RUNS, BATCH = (150, 4, 16) if SMOKE else (1000, 8, 16)
Z = 5.0  # standard errors in the assertions below


def stats_over_temperatures(estimators, key, logits, exact):
    """``estimator_stats`` of each ``estimator(key, logits, t)`` at each of ``TEMPERATURES``,
    all with the same key. One program, compiled once with the temperature traced (on a CPU
    compiling costs far more than sampling these toys) and called at each temperature:
    vmapped over the temperatures too, XLA:CPU miscompiles it at the full size (docs,
    guarantees, Known issues)."""

    def at(temperature):
        return {
            name: diagnostics.estimator_stats(
                lambda key, logits, e=estimator: e(key, logits, temperature),
                key,
                logits,
                exact,
                num_samples=NUM_SAMPLES,
                batch_size=NUM_SAMPLES,  # a single vmapped batch: small here, quick to compile
            )
            for name, estimator in estimators.items()
        }

    program = jax.jit(at)
    stats = [program(t) for t in TEMPERATURES]
    # As NumPy arrays stacked over the temperatures, in the estimators' order.
    return {
        name: jax.tree.map(lambda *v: np.stack(v), *(s[name] for s in stats)) for name in estimators
    }


def temperature_axis(ax):
    """A log-scale temperature axis ticked at TEMPERATURES (1/32, ..., 1, 2, 4)."""
    labels = [f"1/{round(1 / t)}" if t < 1 else f"{t:g}" for t in TEMPERATURES]
    ax.set(xscale="log", xlabel="temperature")
    ax.set_xticks(TEMPERATURES, labels)
    ax.set_xticks([], minor=True)


def save(figure, name):
    path = FIGURES / name
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    print("wrote", path)


# %% [markdown]
# ## A Bernoulli toy: a tiny gradient, a large bias
#
# Minimise $L(a) = \mathbb E_{b \sim \mathrm{Bernoulli}(\sigma(a))}[(b - 0.499)^2]$ over the
# logit $a$ (Tucker et al., REBAR, 2017,
# [arXiv:1703.07370](https://arxiv.org/abs/1703.07370)). Since $0.499^2 < 0.501^2$, $b = 0$
# is optimal and $\sigma(a) \to 0$ is the answer, but only just:
# $L'(a) = \sigma(a)(1 - \sigma(a))(1 - 2 \cdot 0.499)$, at most $5 \cdot 10^{-4}$.
#
# `exact_gradient` enumerates categorical variables, so the Bernoulli is the two-class
# categorical with logits $(0, a)$. The estimators of $L'(a)$:
#
# * **relaxed**: the derivative of $(y - 0.499)^2$ at a binary Concrete sample
#   $y = \sigma((a + \text{logistic noise}) / t)$ (`binary_concrete`);
# * **straight-through**: the exact sample $b$ forward, the relaxed $y$'s derivative
#   backward (`binary_concrete(..., hard=True)`);
# * **REINFORCE**: $(b - 0.499)^2 \, \partial_a \log p(b) = (b - 0.499)^2 (b - \sigma(a))$,
#   unbiased, written here in two lines as a reference (it has no temperature).

# %%
TARGET = 0.499


def bernoulli_loss(b):
    return (b - TARGET) ** 2


def exact_bernoulli_gradient(a):
    """dL/da by enumeration: Bernoulli(sigmoid(a)) is the categorical with logits (0, a)."""
    logits = jnp.stack([jnp.zeros_like(a), a])
    return diagnostics.exact_gradient(lambda z: bernoulli_loss(z[1]), logits)[1]


def concrete_gradient(hard):
    def estimator(key, a, temperature):
        def loss(a):
            return bernoulli_loss(
                jaxrelax.binary_concrete(key, a, temperature=temperature, hard=hard)
            )

        return jax.grad(loss)(a)

    return estimator


def reinforce_gradient(key, a, temperature):
    b = jax.random.bernoulli(key, jax.nn.sigmoid(a)).astype(a.dtype)
    return bernoulli_loss(b) * (b - jax.nn.sigmoid(a))  # f(b) d/da log p(b)


bernoulli_estimators = {
    "relaxed (binary Concrete)": concrete_gradient(hard=False),
    "straight-through": concrete_gradient(hard=True),
    "REINFORCE": reinforce_gradient,
}

a_probe = jnp.float32(-1.0)  # sigma(a) = 0.27: on the way to the optimum
exact_probe = float(jax.jit(exact_bernoulli_gradient)(a_probe))
sigma = 1 / (1 + np.exp(-float(a_probe)))
np.testing.assert_allclose(exact_probe, sigma * (1 - sigma) * (1 - 2 * TARGET), rtol=1e-4)
print(f"exact dL/da at a = {float(a_probe)}: {exact_probe:.3e}")

bernoulli_stats = stats_over_temperatures(
    bernoulli_estimators, jax.random.key(1), a_probe, exact_probe
)

print(f"{'estimator':26} {'t':>6} {'mean':>9} {'± s.e.':>8} {'MSE':>9} {'± s.e.':>8}")
for name, stats in bernoulli_stats.items():
    for i, t in enumerate(TEMPERATURES[:1] if name == "REINFORCE" else TEMPERATURES):
        stderr = np.sqrt(stats.variance[i] / NUM_SAMPLES)
        print(
            f"{name:26} {'any' if name == 'REINFORCE' else f'{t:.3f}':>6}"
            f" {stats.mean[i]:+9.5f} {stderr:8.5f} {stats.mse[i]:9.3e} {stats.mse_stderr[i]:8.1e}"
        )
reinforce_std = np.sqrt(bernoulli_stats["REINFORCE"].variance[0])
print(f"REINFORCE: one sample's std is {reinforce_std / exact_probe:.0f} times the gradient")
bias = [  # mean over the exact gradient, at every temperature, of the two relaxed estimators
    stats.mean[i] / exact_probe
    for name, stats in bernoulli_stats.items()
    if name != "REINFORCE"
    for i in range(len(TEMPERATURES))
]
print(
    f"relaxed and straight-through means: {min(bias):+.0f} to {max(bias):+.0f} times the "
    f"gradient at t = {min(TEMPERATURES)} to {max(TEMPERATURES)}"
)
worse = [name for name, stats in bernoulli_stats.items() if np.all(stats.mse > exact_probe**2)]
print(f"worse than always answering 0 at every temperature: {', '.join(worse) or 'none'}")

# %% [markdown]
# Left: the mean of each estimator, with standard-error bars, against the exact gradient
# (black, a hair above zero). The relaxed and straight-through estimators point the wrong
# way on average, by many times the gradient (the range is printed above): both differentiate
# $(y - 0.499)^2$ at a relaxed $y$, which pulls $y$ toward 0.499, and so $\sigma(a)$ toward
# 1/2, whichever way the discrete loss points. Cooling shrinks the bias but inflates the
# variance: on the right, their mean squared error grows as the temperature falls.
# REINFORCE's mean sits on the exact gradient, at every temperature since it has none. The
# dotted line is the error of always answering 0, the gradient squared: an estimator above
# it does worse than no gradient at all, which is what a gradient this small relative to
# the noise threatens (printed above: the estimators worse than it at every temperature).

# %%
figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
for name, stats in bernoulli_stats.items():
    stderr = np.sqrt(stats.variance / NUM_SAMPLES)
    left.errorbar(TEMPERATURES, stats.mean, stderr, marker="o", capsize=3, label=name)
    right.errorbar(TEMPERATURES, stats.mse, stats.mse_stderr, marker="o", capsize=3, label=name)
left.axhline(exact_probe, color="black", label=f"exact gradient ({exact_probe:.1e})")
right.axhline(exact_probe**2, color="black", linestyle=":", label="always 0")
left.set(ylabel="mean of the estimator")
left.set_title(f"Bernoulli toy at a = {float(a_probe)}: mean ± s.e.")
right.set(yscale="log", ylabel="mean squared error")
temperature_axis(left)
temperature_axis(right)
right.set_title(f"mean squared error ± s.e. ({NUM_SAMPLES} samples)")
left.legend(fontsize=8)
right.legend(fontsize=8, handles=right.get_lines()[-1:])
save(figure, "bernoulli_bias_mse.png")

# %% [markdown]
# ### Following each estimator with Adam
#
# From $a = 0$, each estimator drives Adam (`optax.adam(0.05)`, a mean of 16 samples per
# step, temperature 0.5) for 1000 steps (150 in smoke mode); the whole run, the step
# included, is one compiled `lax.scan`, vmapped over independent runs. Adam normalises the
# step, so the tiny exact gradient moves $a$ as fast as a large one would.

# %%
optimizer = optax.adam(0.05)


def exact_as_estimator(key, a, temperature):
    return exact_bernoulli_gradient(a)


def train(estimator, key, temperature=0.5):
    """sigma(a) after each of NUM_STEPS Adam steps from a = 0, each step fed the mean of
    BATCH samples of the estimator."""

    def step(state, key):
        a, opt_state = state
        keys = jax.random.split(key, BATCH)
        grad = jnp.mean(jax.vmap(estimator, (0, None, None))(keys, a, temperature))
        updates, opt_state = optimizer.update(grad, opt_state, a)
        a = optax.apply_updates(a, updates)
        return (a, opt_state), jax.nn.sigmoid(a)

    a = jnp.float32(0.0)
    return jax.lax.scan(step, (a, optimizer.init(a)), jax.random.split(key, NUM_STEPS))[1]


runs = {"exact gradient": exact_as_estimator, **bernoulli_estimators}
run_keys = jax.random.split(jax.random.key(2), NUM_RUNS)


@jax.jit
def train_all(keys):  # one program for all the runs: compiling dominates on a CPU
    return {
        name: jax.vmap(lambda key, e=estimator: train(e, key))(keys)
        for name, estimator in runs.items()
    }


trained = train_all(run_keys)
trajectories = {name: np.asarray(trained[name]) for name in runs}

tail = NUM_STEPS // 10
print(f"sigma(a) after {NUM_STEPS} steps (mean over {NUM_RUNS} runs; min and max; last 10%)")
for name, probs in trajectories.items():
    final = probs[:, -1]
    print(
        f"{name:26} {final.mean():.3f}  [{final.min():.3f}, {final.max():.3f}]"
        f"  last 10%: {probs[:, -tail:].mean():.3f}"
    )

# %% [markdown]
# $\sigma(a)$ over the steps: thin lines are single runs, thick lines their mean. The exact
# gradient drives $\sigma(a)$ to 0. The relaxed and straight-through estimators hold it
# near 1/2, where their pull toward $y = 0.499$ outweighs the true gradient. REINFORCE is
# unbiased, but a single sample's standard deviation is many times the gradient (the ratio
# is printed above), so with 16 samples a step its runs wander both ways. Such
# noise is what the control variates of REBAR are designed to remove.

# %%
figure, ax = plt.subplots(figsize=(7, 4))
for (name, probs), color in zip(trajectories.items(), ["black", "C0", "C1", "C2"], strict=True):
    ax.plot(probs.T, color=color, alpha=0.25, linewidth=0.8)
    ax.plot(probs.mean(0), color=color, linewidth=2.5, label=name)
ax.set(xlabel="Adam step", ylabel="sigma(a) = P(b = 1)", ylim=(0, 1))
ax.set_title("Bernoulli toy: where each estimator leads (optimum: 0)")
ax.legend()
save(figure, "bernoulli_training.png")

# %%
# The exact gradient solves the problem; the biased estimators stay near 1/2.
assert trajectories["exact gradient"][:, -1].max() < 0.1
for name in ["relaxed (binary Concrete)", "straight-through"]:
    assert 0.4 < trajectories[name][:, -tail:].mean() < 0.6, name
    # At a = -1 and t = 0.5 their bias points the wrong way, beyond Z standard errors.
    stats, i = bernoulli_stats[name], list(TEMPERATURES).index(0.5)
    assert stats.mean[i] + Z * np.sqrt(stats.variance[i] / NUM_SAMPLES) < 0 < exact_probe, name
# REINFORCE is unbiased: within Z standard errors of the exact gradient.
reinforce = bernoulli_stats["REINFORCE"]
assert np.all(np.abs(reinforce.bias) <= Z * np.sqrt(reinforce.variance / NUM_SAMPLES))

# %% [markdown]
# ## The quadratic program of Paulus et al.
#
# One categorical variable with $n = 3$ classes, one-hot $D$, and
# $f(D) = (D - c)^\top Q (D - c)$ with $Q_{ij} = e^{-2|i - j|}$ and $c = 1/3$ (Paulus,
# Maddison, Krause, Rao-Blackwellizing the Straight-Through Gumbel-Softmax Gradient
# Estimator, 2021, [arXiv:2010.04838](https://arxiv.org/abs/2010.04838)), at the logits
# $(0.5, -0.2, 0.1)$ of this project's tests. The estimators of $\nabla_\ell \mathbb E[f(D)]$:
#
# * **Gumbel-softmax**: $f$ at the relaxed sample (`gumbel_softmax`), possible here because
#   $f$ is defined on the whole simplex;
# * **straight-through Gumbel** (ST Gumbel): the exact sample forward, the relaxed gradient
#   backward (`gumbel_softmax(..., hard=True)`);
# * **Gumbel-Rao** with $K$ = 1, 4, 32 conditional noise samples (`gumbel_rao`; $K = 1$ is
#   straight-through Gumbel in distribution);
# * **st_hardmax**: the deterministic straight-through of the logits themselves, no noise.
#
# All use the same key, so the Gumbel-Rao estimators see the same samples $D$.

# %%
index = np.arange(3)
Q = jnp.asarray(np.exp(-2.0 * np.abs(index[:, None] - index[None, :])), jnp.float32)
C = jnp.full(3, 1 / 3)
LOGITS = jnp.array([0.5, -0.2, 0.1])


def quadratic(d):
    return (d - C) @ Q @ (d - C)


def gradient_of(sampler):
    def estimator(key, logits, temperature):
        return jax.grad(lambda logits: quadratic(sampler(key, logits, temperature)))(logits)

    return estimator


samplers = {
    "Gumbel-softmax": lambda k, lg, t: jaxrelax.gumbel_softmax(k, lg, temperature=t),
    "ST Gumbel": lambda k, lg, t: jaxrelax.gumbel_softmax(k, lg, temperature=t, hard=True),
    **{
        f"Gumbel-Rao K={k}": lambda key, lg, t, k=k: jaxrelax.gumbel_rao(
            key, lg, temperature=t, num_samples=k
        )
        for k in (1, 4, 32)
    },
    "st_hardmax": lambda k, lg, t: jaxrelax.st_hardmax(lg, temperature=t),
}
exact_qp = np.asarray(jax.jit(diagnostics.exact_gradient, static_argnums=0)(quadratic, LOGITS))
print("exact gradient", exact_qp, f"(squared norm {np.sum(exact_qp**2):.2e})")
qp_estimators = {name: gradient_of(sampler) for name, sampler in samplers.items()}
qp_stats = stats_over_temperatures(qp_estimators, jax.random.key(3), LOGITS, exact_qp)


def table(title, column):
    print(title)
    print(f"{'t':>6} " + " ".join(f"{name[:15]:>15}" for name in qp_stats))
    for i, t in enumerate(TEMPERATURES):
        print(f"{t:6.3f} " + " ".join(f"{column(s, i):>15}" for s in qp_stats.values()))


table("mean squared error ± s.e.", lambda s, i: f"{s.mse[i]:.3e}±{s.mse_stderr[i]:.0e}")
table("squared bias", lambda s, i: f"{np.sum(s.bias[i] ** 2):.3e}")
table("variance (summed over logits)", lambda s, i: f"{np.sum(s.variance[i]):.3e}")
sampled = [name for name in qp_stats if name != "st_hardmax"]
print("\nGumbel-Rao K=32's error over straight-through Gumbel's, and the sampled estimator of")
print("lowest error, at each temperature:")
for i, t in enumerate(TEMPERATURES):
    ratio = qp_stats["Gumbel-Rao K=32"].mse[i] / qp_stats["ST Gumbel"].mse[i]
    lowest = min(sampled, key=lambda name: qp_stats[name].mse[i])
    print(f"t = {t:6.3f}: {ratio:5.2f}   {lowest}")

# %% [markdown]
# Left: the mean squared error, with standard-error bars. Every surrogate gradient shrinks
# as the temperature grows, so at high temperature the error falls toward $\|\nabla\|^2$,
# the error of always answering 0 (dotted): a small error there is not a useful gradient. At
# low temperature the variance explodes, and Gumbel-Rao tames it: the ratios printed above
# show how much of straight-through Gumbel's error 32 conditional samples leave at each
# temperature (asserted below: less at t = 1/2, by many standard errors). The sampled
# estimator of lowest error, printed beside them, may be the relaxed Gumbel-softmax, but it
# evaluates $f$ between the vertices, which a model that needs a discrete choice forward
# cannot do. Middle: the squared bias, the same for
# straight-through Gumbel and every Gumbel-Rao (they share an expectation); below the grey
# line ($\sum \mathrm{Var} / N$ of straight-through Gumbel) a sampler's squared bias is
# within Monte-Carlo noise. `st_hardmax` has no variance (it is deterministic, so it is left
# out on the right) but a large bias at every temperature except the coldest, where its
# gradient is nearly zero and its error that of always answering 0. Right: the variance.

# %%
figure, axes = plt.subplots(1, 3, figsize=(15, 4))
for name, stats in qp_stats.items():
    style = dict(marker="o", label=name, linestyle="--" if name.endswith("K=1") else "-")
    axes[0].errorbar(TEMPERATURES, stats.mse, stats.mse_stderr, capsize=3, **style)
    axes[1].plot(TEMPERATURES, np.sum(stats.bias**2, -1), **style)
    if not name.startswith("st_hardmax"):
        axes[2].plot(TEMPERATURES, np.sum(stats.variance, -1), **style)
axes[0].axhline(np.sum(exact_qp**2), color="black", linestyle=":", label="always 0")
floor = np.sum(qp_stats["ST Gumbel"].variance, -1) / NUM_SAMPLES
axes[1].plot(TEMPERATURES, floor, color="grey", linewidth=4, alpha=0.5, label="Monte-Carlo noise")
for ax, title in zip(axes, ["mean squared error ± s.e.", "squared bias", "variance"], strict=True):
    ax.set(yscale="log", title=title)
    temperature_axis(ax)
axes[0].legend(fontsize=8)
axes[1].legend(fontsize=8, handles=axes[1].get_lines()[-1:])
save(figure, "quadratic_program.png")

# %%
i = list(TEMPERATURES).index(0.5)
one, many = qp_stats["Gumbel-Rao K=1"], qp_stats["Gumbel-Rao K=32"]
# Rao-Blackwellisation lowers the error at t = 0.5 by many standard errors ...
gap = one.mse[i] - many.mse[i]
assert gap > Z * np.hypot(one.mse_stderr[i], many.mse_stderr[i]), gap
# ... and leaves the expectation alone: K = 32 and straight-through Gumbel agree.
straight = qp_stats["ST Gumbel"]
stderr = np.sqrt((many.variance[i] + straight.variance[i]) / NUM_SAMPLES)
assert np.all(np.abs(many.mean[i] - straight.mean[i]) <= Z * stderr)
# The deterministic straight-through is far more biased than the sampled ones at t = 0.5.
hardmax_bias = np.sum(qp_stats["st_hardmax"].bias[i] ** 2)
assert hardmax_bias > 100 * np.sum(straight.bias[i] ** 2)


# %% [markdown]
# ## The perturbed argmax of Berthet et al.
#
# Berthet, Blondel, Teboul, Cuturi, Vert & Bach (Learning with Differentiable Perturbed
# Optimizers, NeurIPS 2020, [arXiv:2002.08676](https://arxiv.org/abs/2002.08676)) smooth a
# hard function $g$ by averaging it over random perturbations of its input, and differentiate
# the average with values of $g$ alone: for noise $Z$ of density $\propto e^{-\nu(z)}$,
# $\nabla_\theta \mathbb E\, g(\theta + Z) = \mathbb E\, g(\theta + Z) \nabla\nu(Z)$, with
# $\nabla\nu(z) = 1 - e^{-z}$ for Gumbel noise. With Gumbel noise of scale 1,
# $D = \mathrm{hardmax}(\theta + Z)$ is an exact sample of $\mathrm{softmax}(\theta)$, and the
# same $M$ draws $Z_m$, $D_m = \mathrm{hardmax}(\theta + Z_m)$ serve two uses, which estimate
# the gradients of two different objectives:
#
# * **perturbed**: `jaxrelax.perturbed(lambda y: f(jaxrelax.hardmax(y)), num_samples=M)`.
#   Its value is the mean of the $f(D_m)$, and its gradient
#   $\frac1M \sum_m (f(D_m) - b) \nabla\nu(Z_m)$, with $b = 0$, is an **unbiased** estimate
#   of $\nabla_\theta \mathbb E_{D \sim \mathrm{softmax}(\theta)} f(D)$, the exact gradient
#   of the sections above, at every $M$: REINFORCE on the noise $Z$ rather than on $D$;
# * **perturbed + control variate**: the same with `control_variate=True`, which takes
#   $b = f(\mathrm{hardmax}(\theta))$, $f$ at the unperturbed choice. It adds a constant
#   times $\nabla\nu(Z)$, whose expectation is 0, so the estimate stays unbiased; it removes
#   the part of $f$ that all the samples share;
# * **plug-in**: `f(jaxrelax.perturbed_argmax(key, logits, num_samples=M))`: $f$ at the
#   average $\bar y$ of the $M$ one-hots, differentiated through the perturbed argmax,
#   $\frac1M \sum_m \langle \nabla f(\bar y), D_m \rangle \nabla\nu(Z_m)$. This is how
#   Berthet et al. use the layer inside a loss. As $M$ grows, $\bar y$ tends to
#   $\mathbb E D = \mathrm{softmax}(\theta)$ and the gradient to
#   $\nabla_\theta f(\mathrm{softmax}(\theta))$, the gradient of the loss **at the expected
#   choice**, which is not $\nabla_\theta \mathbb E f(D)$ unless $f$ is linear. At finite
#   $M$ it is biased even for that limit, since $f$ is applied to an average of samples.
#
# The cost: one gradient evaluates the hard function $f \circ \mathrm{hardmax}$ at $M$
# perturbed logits in the forward pass and at the same $M$ again in the backward pass (the
# noise is drawn again from the key, not kept), and once more at $\theta$ for the control
# variate; it never differentiates $f$. The plug-in takes $2M$ hardmaxes and one evaluation
# of $f$ and its gradient. The mean of $M$ samples of a Gumbel estimator also takes $M$
# evaluations of $f$, and $M$ backward passes; its error would be its squared bias plus its
# variance over $M$, from the tables above (the dashed lines below, at temperature 1/2).
# $M$ runs over 1, 4, 16, 64 and 256, with as many gradient samples as above (in smoke mode,
# the quadratic program alone at $M = 16$: on a CPU each estimator takes about a second to
# compile).

# %%
PERTURBATIONS = (16,) if SMOKE else (1, 4, 16, 64, 256)  # M: perturbations per gradient


def perturbation_estimators(f, num_samples):
    """Estimators ``estimator(key, logits)`` of the gradient of E f(D), D ~ softmax(logits),
    from ``num_samples`` perturbations; the two perturbed ones draw the same noise."""

    def perturbed(control_variate):
        smoothed = jaxrelax.perturbed(
            lambda y: f(jaxrelax.hardmax(y)),
            num_samples=num_samples,
            control_variate=control_variate,
        )
        return lambda key, logits: jax.grad(lambda logits: smoothed(key, logits))(logits)

    def plug_in(key, logits):
        def loss(logits):
            return f(jaxrelax.perturbed_argmax(key, logits, num_samples=num_samples))

        return jax.grad(loss)(logits)

    return {
        "perturbed": perturbed(False),
        "perturbed + control variate": perturbed(True),
        "plug-in": plug_in,
    }


def exact_gradients(f, logits):
    """The gradient of E f(D), D ~ softmax(logits), and for the plug-in, its expectation at
    M = 1 (the gradient of E <grad f(D), D>) and its limit (the gradient of f(softmax))."""
    return (
        diagnostics.exact_gradient(f, logits),
        diagnostics.exact_gradient(lambda d: jax.grad(f)(d) @ d, logits),
        jax.grad(lambda logits: f(jax.nn.softmax(logits)))(logits),
    )


def stats_over_perturbations(f, key, logits, entries, exact):
    """``estimator_stats`` of the ``entries`` of each perturbation estimator's gradient at
    each M in PERTURBATIONS, all with the same key, stacked over M. One compiled program."""

    def at(num_samples):
        return {
            name: diagnostics.estimator_stats(
                lambda key, logits, e=estimator: e(key, logits)[entries],
                key,
                logits,
                exact,
                num_samples=NUM_SAMPLES,
                batch_size=NUM_SAMPLES,
            )
            for name, estimator in perturbation_estimators(f, num_samples).items()
        }

    stats = jax.jit(lambda: [at(m) for m in PERTURBATIONS])()
    return {
        name: jax.tree.map(lambda *v: np.stack(v), *(s[name] for s in stats)) for name in stats[0]
    }


# Each toy: f, its logits, the entries of the gradient judged (for the Bernoulli toy, d/da
# through the logits (0, a)) and a seed; then the Gumbel estimators at t = 1/2 to compare.
toys = {
    "Bernoulli toy": (lambda z: bernoulli_loss(z[1]), jnp.stack([0.0, a_probe]), slice(1, 2), 4),
    "quadratic program": (quadratic, LOGITS, slice(None), 5),
}
if SMOKE:
    del toys["Bernoulli toy"]
half = list(TEMPERATURES).index(0.5)
references = {
    "Bernoulli toy": {
        name: bernoulli_stats[name] for name in ["relaxed (binary Concrete)", "straight-through"]
    },
    "quadratic program": {name: qp_stats[name] for name in ["Gumbel-softmax", "ST Gumbel"]},
}
perturbation_stats, exact_of, plug_in_one, plug_in_limit = {}, {}, {}, {}
for toy, (f, logits, entries, seed) in toys.items():
    gradients = jax.jit(exact_gradients, static_argnums=0)(f, logits)
    exact_of[toy], plug_in_one[toy], plug_in_limit[toy] = (
        np.asarray(g)[entries] for g in gradients
    )
    perturbation_stats[toy] = stats_over_perturbations(
        f, jax.random.key(seed), logits, entries, exact_of[toy]
    )


def stderr(stats):
    return np.sqrt(stats.variance / NUM_SAMPLES)


def line(name, m, bias, variance, measured=True, mse_stderr=""):
    """A row of the tables, summed over the logits: the squared bias, the largest bias in
    standard errors (if measured), the variance, and the MSE, their sum."""
    z = f"{np.max(np.abs(bias) / np.sqrt(variance / NUM_SAMPLES)):.1f}" if measured else ""
    squared_bias, variance = np.sum(bias**2), np.sum(variance)
    print(
        f"{name:32} {m:4} {squared_bias:10.3e} {z:>9} {variance:10.3e}"
        f" {squared_bias + variance:10.3e} {mse_stderr:>8}"
    )


for toy, estimators in perturbation_stats.items():
    exact, limit = exact_of[toy], plug_in_limit[toy]
    print(f"{toy}: exact gradient {exact} (squared norm {np.sum(exact**2):.2e})")
    print(f"gradient of f(softmax) {limit} (squared distance {np.sum((limit - exact) ** 2):.2e})")
    print(
        f"{'estimator':32} {'M':>4} {'bias²':>10} {'|bias|/se':>9} {'variance':>10}"
        f" {'MSE':>10} {'± s.e.':>8}"
    )
    for name, stats in estimators.items():
        for j, m in enumerate(PERTURBATIONS):
            se = f"{stats.mse_stderr[j]:.1e}"
            line(name, m, stats.bias[j], stats.variance[j], mse_stderr=se)
    for name, stats in references[toy].items():  # the mean of M samples
        for m in PERTURBATIONS:
            line(f"{name}, t=1/2", m, stats.bias[half], stats.variance[half] / m, measured=False)
    plug_in = estimators["plug-in"]
    for j, m in enumerate(PERTURBATIONS):
        line("plug-in, against ∇f(softmax)", m, plug_in.mean[j] - limit, plug_in.variance[j])
    plain, cv = estimators["perturbed"], estimators["perturbed + control variate"]
    factors = np.sum(plain.variance, -1) / np.sum(cv.variance, -1)
    print(f"the control variate divides the variance by {factors.min():.0f} to {factors.max():.0f}")
    name, stats = list(references[toy].items())[-1]
    ratio = np.float32(PERTURBATIONS) / np.sum(stats.variance[half])  # 1 / (variance / M)
    print(
        f"variance over that of the mean of M {name} samples (t = 1/2):"
        f" {np.mean(ratio * np.sum(plain.variance, -1)):.2f} without the control variate,"
        f" {np.mean(ratio * np.sum(cv.variance, -1)):.1e} with it"
    )
    zero_error = np.sum(exact**2)  # the error of always answering 0
    below = np.asarray(PERTURBATIONS)[cv.mse + Z * cv.mse_stderr < zero_error]
    print(f"with the control variate, the error is below that of always 0 at M = {below}")
    squared_bias = np.sum(plug_in.bias[-1] ** 2)
    print(
        f"the plug-in's squared bias at M = {PERTURBATIONS[-1]}:"
        f" {squared_bias / zero_error:.3g} times the squared gradient\n"
    )

# %% [markdown]
# In the tables, |bias|/se is the largest bias over the logits in standard errors; the rows
# of the Gumbel estimators are for the mean of $M$ of their samples; the last rows measure
# the plug-in against its limit $\nabla f(\mathrm{softmax}(\theta))$ instead of the exact
# gradient. In the figure, left: the mean squared error, the Gumbel estimators dashed;
# middle: the squared bias, with a thick line at each estimator's noise level
# $\sum \mathrm{Var} / N$ (below it, a squared bias is within Monte-Carlo noise), and the
# plug-in against its limit dotted; right: the variance. The claims below are asserted in
# the last cell (in smoke mode, for the quadratic program at $M = 16$ only), or their
# numbers printed under each table.
#
# * **The perturbed estimator is unbiased at every $M$**, with or without the control
#   variate: its bias stays within a few standard errors of zero, and its variance falls as
#   $1/M$, so its error falls to zero with $M$, where each Gumbel estimator's levels off at
#   its squared bias (the dashed lines). Without the control variate it pays for that with
#   a large variance, of the order of one straight-through sample's at $t = 1/2$ (their
#   ratio is printed under each table), since every sample weighs the whole of $f(D)$,
#   about 0.25 and 0.6 there, by noise of unit variance.
# * **The control variate** subtracts $f(\mathrm{hardmax}(\theta))$ from every $f(D_m)$, at
#   the cost of one more evaluation of $f$. It divides the variance by the same factor at
#   every $M$ (printed under each table): more than $10^4$ on the Bernoulli toy, where
#   $f(D) - f(\mathrm{hardmax}(\theta))$ is 0 or 0.002 against $f \approx 0.25$, and more
#   than 100 on the quadratic program, where it is 0 or $-0.08$ against $f \approx 0.6$. It
#   is the baseline of REINFORCE, which the REINFORCE of the first section lacks. With it,
#   at the largest $M$ the perturbed estimator beats every Gumbel estimator averaged over as
#   many samples, and its error falls below that of always answering 0 (dotted) at the $M$
#   printed under each table.
# * **The plug-in is biased for $\nabla \mathbb E f(D)$, and stays so as $M$ grows**: it
#   tends to $\nabla f(\mathrm{softmax}(\theta))$, its squared distance to that limit
#   falling as $1/M^2$. Both toys are quadratic in $D$, and then its expectation is exactly
#   $\frac1M g_1 + (1 - \frac1M) \nabla f(\mathrm{softmax}(\theta))$, with
#   $g_1 = \nabla \mathbb E \langle \nabla f(D), D \rangle$ its expectation at $M = 1$. On
#   the quadratic program $g_1$ happens to equal $\nabla \mathbb E f(D)$ ($Q$ has a constant
#   diagonal, so $\langle \nabla f(D), D \rangle$ is $f(D)$ plus a constant on the
#   vertices): the plug-in is unbiased at $M = 1$ by luck, and at large $M$ its squared bias
#   is many times the squared gradient (printed under the table). On the Bernoulli toy
#   $\langle \nabla f(D), D \rangle = 2 (D_1 - 0.499) D_1 = 1.002 D_1$, so $g_1$ is
#   $1.002\, \sigma'(a)$, 501 times the gradient $0.002\, \sigma'(a)$; from $M = 4$ on the
#   plug-in points the wrong way, toward $\nabla (\sigma(a) - 0.499)^2$: the mistake of the
#   relaxed estimators of the first section, for the same reason, $f$ taken between the
#   vertices.
#
# In short: `perturbed` estimates $\nabla \mathbb E f(D)$ without bias; the plug-in
# estimates $\nabla f(\mathrm{softmax}(\theta))$ with a bias of order $1/M$, and does not
# estimate $\nabla \mathbb E f(D)$ at all. To minimise $\mathbb E f(D)$ over a discrete
# choice, use `perturbed` with the control variate, whose error vanishes with $M$ at a cost
# of $2M + 1$ evaluations of $f$. The plug-in fits a loss meant to be taken at the expected
# choice, as when a perturbed argmax is a layer inside a network, with $M$ large enough that
# its $1/M$ bias is below the noise; a loss linear in $\bar y$, such as the Fenchel-Young
# loss (`jaxrelax.perturbed_fy_loss`, whose gradient is $\bar y - y$), has no such bias.

# %%
figure, axes = plt.subplots(
    len(toys), 3, figsize=(16, 4 * len(toys)), squeeze=False, layout="constrained"
)
m = np.float32(PERTURBATIONS)
for row, (toy, estimators) in zip(axes, perturbation_stats.items(), strict=True):
    for (name, stats), color in zip(estimators.items(), ["C0", "C1", "C2"], strict=True):
        row[0].errorbar(m, stats.mse, stats.mse_stderr, color=color, marker="o", capsize=3)
        row[1].plot(m, np.sum(stats.bias**2, -1), color=color, marker="o", label=name)
        noise = np.sum(stats.variance, -1) / NUM_SAMPLES  # the squared bias of pure noise
        row[1].plot(m, noise, color=color, linewidth=6, alpha=0.25)
        row[2].plot(m, np.sum(stats.variance, -1), color=color, marker="o")
    gap = estimators["plug-in"].mean - plug_in_limit[toy]
    row[1].plot(m, np.sum(gap**2, -1), "C2:o", label="plug-in, against ∇f(softmax)")
    for (name, stats), color in zip(references[toy].items(), ["C3", "C4"], strict=True):
        squared_bias, variance = np.sum(stats.bias[half] ** 2), np.sum(stats.variance[half])
        row[0].plot(m, squared_bias + variance / m, "--x", color=color, label=f"{name}, t = 1/2")
    row[0].axhline(np.sum(exact_of[toy] ** 2), color="black", linestyle=":", label="always 0")
    row[0].legend(fontsize=8)
    titles = ["mean squared error ± s.e.", "squared bias (thick: noise level)", "variance"]
    for ax, title in zip(row, titles, strict=True):
        ax.set(xscale="log", yscale="log", xlabel="M, perturbations per gradient")
        ax.set_title(f"{toy}: {title}", fontsize=10)
        ax.set_xticks(m, [str(k) for k in PERTURBATIONS])
        ax.set_xticks([], minor=True)
handles, _ = axes[0, 1].get_legend_handles_labels()
figure.legend(handles=handles, loc="outside lower center", ncols=4)
save(figure, "perturbed.png")

# %%
for toy, estimators in perturbation_stats.items():
    plain, cv, plug_in = estimators.values()
    m = np.float32(PERTURBATIONS)
    for stats in (plain, cv):
        # The perturbed estimators are unbiased: within Z standard errors of the exact
        # gradient, for every logit and every M (40 comparisons at full size, each failing
        # by chance with probability 6e-7) ...
        assert np.all(np.abs(stats.bias) <= Z * stderr(stats)), toy
        # ... and their variance falls as 1/M: (M / M_0) times the error at M is the error
        # at the first M_0, within Z standard errors.
        ratio = m / m[0]
        gap = ratio * stats.mse - stats.mse[0]
        assert np.all(np.abs(gap) <= Z * np.hypot(ratio * stats.mse_stderr, stats.mse_stderr[0]))
    # The control variate divides the error by more than 10^4 (Bernoulli toy) or 100 at
    # every M, by Z standard errors.
    factor = 1e4 if toy == "Bernoulli toy" else 100
    gap = plain.mse - factor * cv.mse
    assert np.all(gap > Z * np.hypot(plain.mse_stderr, factor * cv.mse_stderr)), toy
    # At the largest M, with the control variate it beats every Gumbel estimator averaged
    # over as many samples, by Z standard errors of its own error (theirs are derived).
    for stats in references[toy].values():
        averaged = np.sum(stats.bias[half] ** 2) + np.sum(stats.variance[half]) / m[-1]
        assert cv.mse[-1] + Z * cv.mse_stderr[-1] < averaged, toy
    # The plug-in's expectation interpolates between its value at M = 1 and the gradient of
    # f(softmax) (exactly, f being quadratic): within Z standard errors at every M ...
    expected = plug_in_one[toy] / m[:, None] + (1 - 1 / m[:, None]) * plug_in_limit[toy]
    assert np.all(np.abs(plug_in.mean - expected) <= Z * stderr(plug_in)), toy
    # ... so at the largest M it is far from the exact gradient.
    assert np.max(np.abs(plug_in.bias[-1]) / stderr(plug_in)[-1]) > Z, toy
    # On the Bernoulli toy it points the wrong way from M = 4 on, beyond Z standard errors.
    if toy == "Bernoulli toy":
        assert exact_probe > 0 and np.all((plug_in.mean + Z * stderr(plug_in))[m >= 4] < 0)

print(f"estimator figures written to {FIGURES}")
