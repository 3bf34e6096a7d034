"""Plain reference implementations: the oracles the tests compare against.

``np_*`` are float64 NumPy loops over slices that spell out the documented semantics,
limits included (masked and -inf entries take no part, +inf entries share the mass, NaN
poisons its slice). ``jax_*`` are the textbook JAX formulas on finite, unmasked inputs,
whose autodiff gives the reference gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np


def _rows(x, axes, where):
    """Moves ``axes`` last and flattens them: (batch_shape, rows of values, rows of masks)."""
    x = np.asarray(x, np.float64)
    axes = tuple(sorted(a % x.ndim for a in np.atleast_1d(axes)))
    mask = np.ones(x.shape, bool) if where is None else np.broadcast_to(where, x.shape)
    rest = [a for a in range(x.ndim) if a not in axes]
    order = rest + list(axes)
    batch = [x.shape[a] for a in rest]
    n = int(np.prod([x.shape[a] for a in axes]))
    flat = np.transpose(x, order).reshape(-1, n)
    flat_mask = np.transpose(mask, order).reshape(-1, n)
    return x, axes, order, batch, flat, flat_mask


def _unrows(values, x, axes, order, batch):
    """Inverse of _rows for per-element results."""
    shape = batch + [x.shape[a] for a in axes]
    return np.transpose(values.reshape(shape), np.argsort(order))


def _row_weights(row, valid, temperature, ties):
    """The softmax (ties=None) or hardmax weights of one row, following the limits."""
    if np.isnan(row[valid]).any():
        return np.full(row.shape, np.nan)
    valid = valid & (row > -np.inf)
    weights = np.zeros(row.shape)
    if not valid.any():
        return weights
    if ties is not None or np.isposinf(row[valid]).any():
        best = valid & (row == row[valid].max())
        if ties == "first":
            best = np.eye(len(row), dtype=bool)[np.argmax(best)]
        weights[best] = 1.0 / best.sum()
        return weights
    z = (row[valid] - row[valid].max()) / temperature
    weights[valid] = np.exp(z) / np.exp(z).sum()
    return weights


def _per_row(x, axis, where, fn):
    x, axes, order, batch, flat, flat_mask = _rows(x, axis, where)
    out = np.stack([fn(r, m, i) for i, (r, m) in enumerate(zip(flat, flat_mask, strict=True))])
    return x, axes, order, batch, out


def _row_temperature(temperature, x, axes, order):
    t = np.broadcast_to(np.asarray(temperature, np.float64), x.shape)
    return np.transpose(t, order).reshape(-1, int(np.prod([x.shape[a] for a in axes])))[:, 0]


def np_softmax(x, axis=-1, temperature=1.0, where=None):
    x0, axes, order, _, _, _ = _rows(x, axis, where)
    ts = _row_temperature(temperature, x0, axes, order)
    x, axes, order, batch, out = _per_row(
        x, axis, where, lambda r, m, i: _row_weights(r, m, ts[i], None)
    )
    return _unrows(out, x, axes, order, batch)


def np_hardmax(x, axis=-1, where=None, ties="first"):
    x, axes, order, batch, out = _per_row(
        x, axis, where, lambda r, m, i: _row_weights(r, m, 1.0, ties)
    )
    return _unrows(out, x, axes, order, batch)


def np_smooth_max(x, axis=-1, temperature=1.0, where=None, method="logsumexp"):
    x0, axes, order, _, _, _ = _rows(x, axis, where)
    ts = _row_temperature(temperature, x0, axes, order)

    def row_value(r, m, i):
        if np.isnan(r[m]).any():
            return np.nan
        valid = m & (r > -np.inf)
        if not valid.any():
            return -np.inf
        if np.isposinf(r[valid]).any():
            return np.inf
        if method == "logsumexp":
            top = r[valid].max()
            return top + ts[i] * np.log(np.exp((r[valid] - top) / ts[i]).sum())
        p = _row_weights(r, m, ts[i], None)
        return float((p[valid] * r[valid]).sum())

    x, axes, order, batch, out = _per_row(x, axis, where, row_value)
    return out.reshape(batch)


def np_soft_argmax(x, axis=-1, temperature=1.0, where=None):
    p = np_softmax(x, axis, temperature, where)
    n = p.shape[axis]
    view = [1] * p.ndim
    view[axis] = n
    return (p * np.arange(n).reshape(view)).sum(axis)


def np_argmax(x, axis=-1, where=None):
    """Index of the first unmasked maximum; 0 for an empty slice; NaN for a NaN slice."""
    onehot = np_hardmax(x, axis, where, "first")
    n = onehot.shape[axis]
    view = [1] * onehot.ndim
    view[axis] = n
    return (onehot * np.arange(n).reshape(view)).sum(axis)


def np_spatial_soft_argmax(h, temperature=1.0, normalized=True):
    p = np_softmax(h, (-2, -1), temperature)
    rows, cols = (
        np.linspace(-1, 1, n) if normalized else np.arange(n, dtype=np.float64)
        for n in p.shape[-2:]
    )
    return np.stack([(p * rows[:, None]).sum((-2, -1)), (p * cols).sum((-2, -1))], -1)


# --- adversarial slices shared by the families' tests ---

INF, NAN = np.inf, np.nan
# One slice per row, with the mask each row is tested under.
EDGE_X = np.array(
    [
        [0.5, 1e30, -2.0, INF],  # huge and infinite values, masked
        [-INF, -INF, -INF, -INF],  # nothing finite: empty
        [1.0, 2.0, 3.0, 4.0],  # fully masked: empty
        [NAN, 1.0, 2.0, -INF],  # masked NaN, unmasked -inf
        [INF, 1.0, INF, 3.0],  # +inf entries are the maxima and share the mass
        [0.0, NAN, 2.0, 0.0],  # unmasked NaN: poisons the slice
        [-INF, -3.0, -INF, -5.0],  # a finite maximum among -inf
    ],
    np.float32,
)
EDGE_WHERE = np.array(
    [
        [True, False, True, False],
        [True] * 4,
        [False] * 4,
        [False, True, True, True],
        [True] * 4,
        [True] * 4,
        [True] * 4,
    ]
)
EDGE_NAN_ROW = 5
EDGE_EMPTY_ROWS = [1, 2]


# --- textbook JAX formulas (finite inputs), for reference gradients ---


def jax_softmax(x, t, axis=-1, where=None):
    return jax.nn.softmax(x / t, axis=axis, where=where)


def jax_smooth_max(x, t, axis=-1, method="logsumexp"):
    if method == "logsumexp":
        value = t * jax.scipy.special.logsumexp(x / t, axis=axis, keepdims=True)
    else:
        value = jnp.sum(jax.nn.softmax(x / t, axis=axis) * x, axis=axis, keepdims=True)
    return jnp.squeeze(value, axis)


def jax_soft_argmax(x, t, axis=-1):
    n = x.shape[axis]
    view = [1] * x.ndim
    view[axis] = n
    return jnp.sum(jax.nn.softmax(x / t, axis=axis) * jnp.arange(n).reshape(view), axis=axis)


def jax_spatial_soft_argmax(h, t, normalized=True):
    p = jax.nn.softmax(h / t, axis=(-2, -1))
    rows, cols = (
        jnp.linspace(-1, 1, n) if normalized else jnp.arange(n, dtype=h.dtype) for n in h.shape[-2:]
    )
    return jnp.stack([(p * rows[:, None]).sum((-2, -1)), (p * cols).sum((-2, -1))], -1)


# --- sparse relaxations: sort-based (sparsemax, 1.5-entmax) and bisection (alpha-entmax) ---


def _sparse_rows(x, axis, temperature, where, row_fn):
    """Applies ``row_fn`` to the unmasked finite scores z = x / t of each slice (float64)."""
    x0, axes, order, _, _, _ = _rows(x, axis, where)
    ts = _row_temperature(temperature, x0, axes, order)

    def one(row, valid, i):
        if np.isnan(row[valid]).any():
            return np.full(row.shape, np.nan)
        valid = valid & (row > -np.inf)
        out = np.zeros(row.shape)
        if not valid.any():
            return out
        if np.isposinf(row[valid]).any():
            top = valid & np.isposinf(row)
            out[top] = 1.0 / top.sum()
            return out
        out[valid] = row_fn(row[valid] / ts[i])
        return out

    x, axes, order, batch, out = _per_row(x, axis, where, one)
    return _unrows(out, x, axes, order, batch)


def _np_sparsemax_row(z):
    descending = np.sort(z)[::-1]
    k = np.arange(1, len(z) + 1)
    cumulative = np.cumsum(descending)
    support = k[1 + k * descending > cumulative].max()
    return np.maximum(z - (cumulative[support - 1] - 1) / support, 0)


def _np_entmax15_row(z):
    # Peters, Niculae & Martins 2019, Algorithm 2 (sort-based).
    z = z / 2
    descending = np.sort(z)[::-1]
    k = np.arange(1, len(z) + 1)
    mean = np.cumsum(descending) / k
    mean_sq = np.cumsum(descending**2) / k
    delta = np.maximum((1 - k * (mean_sq - mean**2)) / k, 0)
    tau = mean - np.sqrt(delta)
    support = np.sum(tau <= descending)
    return np.maximum(z - tau[support - 1], 0) ** 2


def _np_entmax_bisect_row(z, alpha):
    a = (alpha - 1) * z
    a = a - a.max()
    beta = 1 / (alpha - 1)
    lo, hi = -1.0, 0.0
    for _ in range(300):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.sum(np.maximum(a - mid, 0) ** beta) >= 1 else (lo, mid)
    p = np.maximum(a - lo, 0) ** beta
    return p / p.sum()


def np_sparsemax(x, axis=-1, temperature=1.0, where=None):
    return _sparse_rows(x, axis, temperature, where, _np_sparsemax_row)


def np_entmax15(x, axis=-1, temperature=1.0, where=None):
    return _sparse_rows(x, axis, temperature, where, _np_entmax15_row)


def np_entmax(x, alpha, axis=-1, temperature=1.0, where=None):
    if alpha == 1:
        return np_softmax(x, axis, temperature, where)
    return _sparse_rows(x, axis, temperature, where, lambda z: _np_entmax_bisect_row(z, alpha))


def np_tsallis(q, alpha, axis=-1):
    q = np.asarray(q, np.float64)
    if alpha == 1:
        return np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1)), 0), axis)
    return (np.sum(q**alpha, axis) - 1) / (alpha * (alpha - 1))


def np_entmax_loss(x, labels, alpha, axis=-1, temperature=1.0):
    """The Fenchel-Young loss from its definition (finite, unmasked scores)."""
    z = np.asarray(x, np.float64) / temperature
    p = np_entmax(x, alpha, axis, temperature)
    y = np.asarray(labels, np.float64)
    return np_tsallis(y, alpha, axis) - np_tsallis(p, alpha, axis) + np.sum(z * (p - y), axis)
