"""Plain reference implementations: the oracles the tests compare against.

``np_*`` are float64 NumPy loops over slices that spell out the documented semantics,
limits included (masked and -inf entries take no part, +inf entries share the mass, NaN
poisons its slice). ``jax_*`` are the textbook JAX formulas on finite, unmasked inputs,
whose autodiff gives the reference gradients. ``np_*_vjp`` are closed-form vector-Jacobian
products in float64, on slices whose unmasked entries are finite or -inf (see
:func:`slice_kinds`; elsewhere they return NaN, or zeros for empty slices).

``axis`` is an int, a tuple of ints or None (all axes, as in ``jax.nn.softmax``); a 0-d
input with ``axis=None`` is one slice of one entry, and a size-0 slice is empty.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _quiet(fn):
    """Runs a reference without NumPy's overflow warnings: differences of huge values
    overflow to -inf and exponentials underflow to 0, which are the limits intended."""

    @functools.wraps(fn)
    def quiet(*args, **kwargs):
        with np.errstate(over="ignore", under="ignore", divide="ignore"):
            return fn(*args, **kwargs)

    return quiet


# Slice kinds (see slice_kinds).
FINITE, EMPTY, POSINF, NAN_SLICE = 0, 1, 2, 3


def _axes(ndim, axis):
    if axis is None:
        return tuple(range(ndim))
    return tuple(sorted(a % ndim for a in np.atleast_1d(axis)))


class _Rows:
    """The slices of ``x`` over ``axis`` as rows, and back: the reduced axes moved last and
    flattened. Every oracle of slices reshapes through this one class.

    ``x`` (float64), ``axes`` (sorted, non-negative), ``batch`` (x's shape without the axes),
    ``values`` and ``mask`` (x and ``where`` as rows: one row per slice, one column per entry).
    """

    def __init__(self, x, axis, where=None):
        self.x = np.asarray(x, np.float64)
        self.axes = _axes(self.x.ndim, axis)
        rest = [a for a in range(self.x.ndim) if a not in self.axes]
        self.order = rest + list(self.axes)
        self.batch = [self.x.shape[a] for a in rest]
        self.n = int(np.prod([self.x.shape[a] for a in self.axes]))
        self.values = self.rows(self.x)
        self.mask = self.rows(True if where is None else where, bool)

    def rows(self, a, dtype=np.float64):
        """An array of x's shape (or one that broadcasts to it) as rows."""
        a = np.broadcast_to(np.asarray(a, dtype), self.x.shape)
        return np.transpose(a, self.order).reshape(int(np.prod(self.batch)), self.n)

    def unrows(self, rows):
        """Rows, one value per entry, back in x's shape."""
        shape = self.batch + [self.x.shape[a] for a in self.axes]
        return np.transpose(np.reshape(rows, shape), np.argsort(self.order))

    def per_row(self, value):
        """A scalar or per-slice parameter (size 1 along the axes) as one float64 per row."""
        keep = [1 if a in self.axes else n for a, n in enumerate(self.x.shape)]
        value = np.broadcast_to(np.asarray(value, np.float64), keep)
        return np.transpose(value, self.order).reshape(-1)

    def per_slice(self, values):
        """One value per row back in the shape of a reduction (x's without the axes)."""
        return np.reshape(values, self.batch)


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


def _per_row(rows, fn, scalar=False):
    """``fn(row, mask, i)`` of every row i of a _Rows: rows of results (one per row if
    ``scalar``)."""
    out = [fn(r, m, i) for i, (r, m) in enumerate(zip(rows.values, rows.mask, strict=True))]
    if out:
        return np.stack(out)
    return np.zeros((0,) if scalar else (0, rows.n))  # no slices at all


def _index_positions(shape, axis):
    """(positions, axes): each element's row-major position in its slice over ``axis`` (an int
    or None, the flat index), broadcastable to ``shape``."""
    if axis is None:
        return np.arange(int(np.prod(shape))).reshape(shape), tuple(range(len(shape)))
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return np.arange(shape[axis]).reshape(view), axis


@_quiet
def slice_kinds(x, axis=-1, where=None):
    """The kind of each slice, shaped like ``x`` without ``axis``: NAN_SLICE (an unmasked NaN),
    EMPTY (no unmasked entry above -inf, or size 0), POSINF (an unmasked +inf) or FINITE."""
    rows = _Rows(x, axis, where)
    flat, mask = rows.values, rows.mask
    nan = (np.isnan(flat) & mask).any(1)
    empty = ~(mask & (flat > -np.inf)).any(1)
    posinf = (np.isposinf(flat) & mask).any(1)
    kinds = np.select([nan, empty, posinf], [NAN_SLICE, EMPTY, POSINF], FINITE)
    return rows.per_slice(kinds)


@_quiet
def np_softmax(x, axis=-1, temperature=1.0, where=None):
    rows = _Rows(x, axis, where)
    ts = rows.per_row(temperature)
    return rows.unrows(_per_row(rows, lambda r, m, i: _row_weights(r, m, ts[i], None)))


@_quiet
def np_hardmax(x, axis=-1, where=None, ties="first"):
    rows = _Rows(x, axis, where)
    return rows.unrows(_per_row(rows, lambda r, m, i: _row_weights(r, m, 1.0, ties)))


@_quiet
def np_smooth_max(x, axis=-1, temperature=1.0, where=None, method="logsumexp"):
    rows = _Rows(x, axis, where)
    ts = rows.per_row(temperature)

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

    return rows.per_slice(_per_row(rows, row_value, scalar=True))


@_quiet
def np_soft_argmax(x, axis=-1, temperature=1.0, where=None):
    """The expected index; with ``axis=None`` the flat row-major one."""
    p = np_softmax(x, axis, temperature, where)
    positions, axes = _index_positions(p.shape, axis)
    return (p * positions).sum(axes)


@_quiet
def np_argmax(x, axis=-1, where=None):
    """Index of the first unmasked maximum; 0 for an empty slice; NaN for a NaN slice; with
    ``axis=None`` the flat row-major index."""
    onehot = np_hardmax(x, axis, where, "first")
    positions, axes = _index_positions(onehot.shape, axis)
    return (onehot * positions).sum(axes)


@_quiet
def np_max(x, axis=-1, where=None):
    """The exact maximum of the unmasked entries: -inf for an empty slice, NaN for a NaN one."""
    rows = _Rows(x, axis, where)
    out = _per_row(
        rows,
        lambda r, m, i: np.nan if np.isnan(r[m]).any() else np.max(r[m], initial=-np.inf),
        scalar=True,
    )
    return rows.per_slice(out)


@_quiet
def np_spatial_soft_argmax(h, temperature=1.0, normalized=True):
    p = np_softmax(h, (-2, -1), temperature)
    rows, cols = _spatial_coordinates(p.shape, normalized)
    return np.stack([(p * rows[:, None]).sum((-2, -1)), (p * cols).sum((-2, -1))], -1)


def _spatial_coordinates(shape, normalized):
    return (
        np.linspace(-1, 1, n) if normalized else np.arange(n, dtype=np.float64) for n in shape[-2:]
    )


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
    """Applies ``row_fn(z, i)`` to the unmasked finite scores z = x / t of each slice i
    (float64)."""
    rows = _Rows(x, axis, where)
    ts = rows.per_row(temperature)

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
        # Shifted before dividing, as the scores are only defined up to a constant: a finite
        # entry whose gap to the maximum overflows is infinitely far below it (p = 0).
        z = (row - row[valid].max()) / ts[i]
        near = valid & (z > -np.inf)
        out[near] = row_fn(z[near], i)
        return out

    return rows.unrows(_per_row(rows, one))


def _np_sparsemax_row(z):
    z = z - z.max()  # exact for huge ranges too (the unshifted cumulative sums lose 1 + z)
    descending = np.sort(z)[::-1]
    k = np.arange(1, len(z) + 1)
    cumulative = np.cumsum(descending)
    support = k[1 + k * descending > cumulative].max()
    return np.maximum(z - (cumulative[support - 1] - 1) / support, 0)


def _np_entmax15_row(z):
    # Peters, Niculae & Martins 2019, Algorithm 2 (sort-based), on max-shifted scores.
    z = (z - z.max()) / 2
    descending = np.sort(z)[::-1]
    k = np.arange(1, len(z) + 1)
    mean = np.cumsum(descending) / k
    mean_sq = np.cumsum(descending**2) / k
    delta = np.maximum((1 - k * (mean_sq - mean**2)) / k, 0)
    tau = mean - np.sqrt(delta)
    support = np.sum(tau <= descending)
    return np.maximum(z - tau[support - 1], 0) ** 2


def _np_softmax_row(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _np_entmax_bisect_row(z, alpha):
    """alpha-entmax of finite scores by bisection, in the log domain so that it stays exact
    as alpha -> 1 (where ``beta = 1 / (alpha - 1)`` is huge).

    ``p_i = [(alpha - 1)(z_i - max z) + theta]_+ ** beta`` with ``theta`` in
    ``[n ** -(1 / beta), 1]``; writing ``u = beta log theta`` (in ``[-log n, 0]``),
    ``log p_i = u + beta log1p((alpha - 1)(z_i - max z) / theta)``, which tends to
    ``z_i - max z`` (softmax) as alpha -> 1 without cancellation.
    """
    if alpha == 1:
        return _np_softmax_row(z)
    eps = alpha - 1
    beta = 1 / eps
    w = z - z.max()

    def log_mass(u):
        ratio = eps * w * np.exp(-u / beta)
        inside = ratio > -1
        out = np.full(z.shape, -np.inf)
        out[inside] = u + beta * np.log1p(ratio[inside])
        return out

    lo, hi = -np.log(len(z)), 0.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (lo, mid) if np.exp(log_mass(mid)).sum() >= 1 else (mid, hi)
    p = np.exp(log_mass(hi))
    return p / p.sum()


@_quiet
def np_sparsemax(x, axis=-1, temperature=1.0, where=None):
    return _sparse_rows(x, axis, temperature, where, lambda z, i: _np_sparsemax_row(z))


@_quiet
def np_entmax15(x, axis=-1, temperature=1.0, where=None):
    return _sparse_rows(x, axis, temperature, where, lambda z, i: _np_entmax15_row(z))


@_quiet
def np_entmax(x, alpha, axis=-1, temperature=1.0, where=None):
    """alpha-entmax; ``alpha`` is a scalar or one per slice (size 1 along ``axis``); 1 is
    softmax."""
    if np.ndim(alpha) == 0 and alpha == 1:
        return np_softmax(x, axis, temperature, where)
    alphas = _Rows(x, axis, where).per_row(alpha)
    return _sparse_rows(
        x, axis, temperature, where, lambda z, i: _np_entmax_bisect_row(z, alphas[i])
    )


@_quiet
def np_tsallis(q, alpha, axis=-1):
    q = np.asarray(q, np.float64)
    if alpha == 1:
        return np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1)), 0), axis)
    return (np.sum(q**alpha, axis) - 1) / (alpha * (alpha - 1))


@_quiet
def np_entmax_loss(x, labels, alpha, axis=-1, temperature=1.0):
    """The Fenchel-Young loss from its definition (finite, unmasked scores)."""
    z = np.asarray(x, np.float64) / temperature
    p = np_entmax(x, alpha, axis, temperature)
    y = np.asarray(labels, np.float64)
    return np_tsallis(y, alpha, axis) - np_tsallis(p, alpha, axis) + np.sum(z * (p - y), axis)


# --- closed-form VJPs (float64), on slices of kind FINITE or EMPTY ---
#
# Each returns the cotangent of x (x's shape) and of the temperature per slice (x's shape
# without axis; the caller sums it to the temperature's shape). Empty slices give zeros;
# slices with NaN or +inf give NaN (their gradients are checked for other properties).


def _expand(per_slice, x, axes):
    """A per-slice array (x's shape without ``axes``) broadcast back to x's shape."""
    return np.broadcast_to(np.expand_dims(per_slice, axes), x.shape)


def _vjp_rows(x, axis, where, row_fn, outputs=2):
    """Runs ``row_fn(row, valid, i) -> (dx_valid, *per_slice)`` on FINITE rows (``valid``:
    unmasked and above -inf) and returns (dx, *per_slice arrays)."""
    rows = _Rows(x, axis, where)
    kinds = slice_kinds(x, axis, where).reshape(-1)
    dx = np.zeros(rows.values.shape)
    extra = np.zeros((outputs - 1, rows.values.shape[0]))
    for i, (row, m) in enumerate(zip(rows.values, rows.mask, strict=True)):
        if kinds[i] in (NAN_SLICE, POSINF):
            dx[i], extra[:, i] = np.nan, np.nan
        elif kinds[i] == FINITE:
            valid = m & (row > -np.inf)
            dx[i, valid], *rest = row_fn(row, valid, i)
            extra[:, i] = rest
    return (rows.unrows(dx), *(rows.per_slice(e) for e in extra))


def _softmax_row_vjp(z, cotangent, t):
    """(p, dx, dt) for p = softmax(z), z = x / t (shifted; -inf where the gap to the maximum
    overflows), cotangent on p (ignored where p = 0)."""
    p = _np_softmax_row(z)
    cotangent = np.where(p > 0, cotangent, 0)
    dx = p * (cotangent - np.sum(cotangent * p)) / t
    return p, dx, -np.sum(dx * np.where(p > 0, z, 0))


def _family_vjp(x, cotangent_of_p, axis, temperature, where, extra=None):
    """VJP of a functional of p = softmax(x / t), given the cotangent on p (x's shape) as
    a function ``cotangent_of_p(row, valid, i)`` of the row; ``extra(p, row, valid, i)``
    adds direct terms (dx, dt)."""
    ts = _Rows(x, axis, where).per_row(temperature)

    def row_fn(row, valid, i):
        z = (row[valid] - row[valid].max()) / ts[i]
        p, dx, dt = _softmax_row_vjp(z, cotangent_of_p(row, valid, i), ts[i])
        if extra is not None:
            more_dx, more_dt = extra(p, z, row, valid, i)
            dx, dt = dx + more_dx, dt + more_dt
        return dx, dt

    return _vjp_rows(x, axis, where, row_fn)


def _flat_cotangent(cotangent, x, axis, where, per_slice):
    """The cotangent as rows (per-slice cotangents broadcast along the slice)."""
    rows = _Rows(x, axis, where)
    g = np.asarray(cotangent, np.float64)
    return rows.rows(_expand(g, rows.x, rows.axes) if per_slice else g)


@_quiet
def np_softmax_vjp(x, cotangent, axis=-1, temperature=1.0, where=None):
    """(dx, dt) of softmax(x / t) (also the backward pass of st_hardmax and Gumbel-softmax)."""
    g = _flat_cotangent(cotangent, x, axis, where, False)
    return _family_vjp(x, lambda row, valid, i: g[i, valid], axis, temperature, where)


@_quiet
def np_soft_argmax_vjp(x, cotangent, axis=-1, temperature=1.0, where=None):
    """(dx, dt) of the expected index (flat with ``axis=None``), also st_argmax's."""
    x = np.asarray(x, np.float64)
    positions, _ = _index_positions(x.shape, axis)
    positions = _Rows(x, axis).rows(positions)
    g = _flat_cotangent(cotangent, x, axis, where, True)
    return _family_vjp(
        x, lambda row, valid, i: g[i, valid] * positions[i, valid], axis, temperature, where
    )


@_quiet
def np_smooth_max_vjp(x, cotangent, axis=-1, temperature=1.0, where=None, method="logsumexp"):
    """(dx, dt) of smooth_max (also st_max's backward pass)."""
    ts = _Rows(x, axis, where).per_row(temperature)
    g = _flat_cotangent(cotangent, x, axis, where, True)
    if method == "logsumexp":
        # d/dx = p, d/dt = the entropy of p.
        def row_fn(row, valid, i):
            z = (row[valid] - row[valid].max()) / ts[i]
            p = _np_softmax_row(z)
            log_p = z - np.log(np.sum(np.exp(z)))
            return g[i, valid] * p, -g[i, 0] * np.sum(p * np.where(p > 0, log_p, 0))

        return _vjp_rows(x, axis, where, row_fn)

    # <p, x>: the softmax VJP with cotangent g x (shifted: p's VJP ignores constants), plus g p.
    def cotangent_of_p(row, valid, i):
        return g[i, valid] * (row[valid] - row[valid].max())  # -inf only where p = 0

    def direct(p, z, row, valid, i):
        return g[i, valid] * p, 0.0

    return _family_vjp(x, cotangent_of_p, axis, temperature, where, direct)


@_quiet
def np_spatial_soft_argmax_vjp(h, cotangent, temperature=1.0, normalized=True):
    """(dx, dt) of spatial_soft_argmax; ``cotangent`` has shape (..., 2)."""
    h = np.asarray(h, np.float64)
    rows, cols = _spatial_coordinates(h.shape, normalized)
    g = np.asarray(cotangent, np.float64)
    weights = g[..., 0, None, None] * rows[:, None] + g[..., 1, None, None] * cols
    weights = _Rows(h, (-2, -1)).rows(weights)
    return _family_vjp(h, lambda row, valid, i: weights[i, valid], (-2, -1), temperature, None)


@_quiet
def np_entmax_vjp(x, cotangent, alpha, axis=-1, temperature=1.0, where=None, p=None):
    """(dx, dt, dalpha) of alpha-entmax, alpha > 1 or = 1 (softmax; dalpha is then the limit
    alpha -> 1+), scalar or per slice; dalpha per slice.

    On the support S of p, with s = p ** (2 - alpha) and g_hat = sum(s g) / sum(s):
    dx = s (g - g_hat) / t, dt = -beta sum(p (g - g_hat)) / t, and from implicit
    differentiation of p_i = [(alpha - 1) z_i - tau]_+ ** beta with sum(p) = 1:
    dalpha = beta (sum((g - g_hat) s z) - sum((g - g_hat) p log p)); as alpha -> 1,
    dp/dalpha -> -p (log(p)**2 - <p, log(p)**2>) / 2.

    ``p`` (x's shape) replaces the reference output when given (for alpha > 2, whose
    gradient magnifies the rounding of p at the support's edge without bound).
    """
    rows = _Rows(x, axis, where)
    ts, alphas = rows.per_row(temperature), rows.per_row(alpha)
    g = _flat_cotangent(cotangent, x, axis, where, False)
    given = None if p is None else rows.rows(p)

    def row_fn(row, valid, i):
        t, a, gv = ts[i], alphas[i], g[i, valid]
        z = (row[valid] - row[valid].max()) / t
        if a == 1:
            q, dx, dt = _softmax_row_vjp(z, gv, t)
            log_q = np.where(q > 0, z - np.log(np.sum(np.exp(z))), 0)
            sq = log_q**2
            return dx, dt, -0.5 * np.sum(gv * q * (sq - np.sum(q * sq)))
        if given is not None:
            q = given[i, valid]
        else:
            q = np.zeros_like(z)
            q[z > -np.inf] = _np_entmax_bisect_row(z[z > -np.inf], a)
        support = q > 0
        s = np.zeros_like(q)
        s[support] = q[support] ** (2 - a)
        centred = gv - np.sum(s * gv) / np.sum(s)
        beta = 1 / (a - 1)
        q_log_q = np.where(support, q * np.log(np.where(support, q, 1)), 0)
        s_z = s * np.where(support, z, 0)
        dalpha = beta * (np.sum(centred * s_z) - np.sum(centred * q_log_q))
        return s * centred / t, -beta * np.sum(q * centred) / t, dalpha

    return _vjp_rows(x, axis, where, row_fn, outputs=3)


# --- Fenchel-Young losses, with masks ---


def _omega(q, alpha):
    """Omega_alpha(q) = (sum q**alpha - 1) / (alpha (alpha - 1)); sum q log q at alpha = 1."""
    if alpha == 1:
        return np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1)), 0))
    return (np.sum(q**alpha) - 1) / (alpha * (alpha - 1))


def _omega_dalpha(q, alpha):
    """d Omega_alpha(q) / d alpha (at alpha = 1, its limit)."""
    log_q = np.log(np.where(q > 0, q, 1))
    if alpha == 1:
        return np.sum(q * log_q**2) / 2 - np.sum(q * log_q)
    d = alpha * (alpha - 1)
    return np.sum(q**alpha * log_q) / d - (np.sum(q**alpha) - 1) * (2 * alpha - 1) / d**2


@_quiet
def np_fenchel_young_loss(x, labels, alpha, axis=-1, temperature=1.0, where=None):
    """The alpha-entmax loss per slice, with the semantics of masks and infinities.

    Label mass on masked entries and on -inf entries is ignored (they take no part); an
    empty slice gives 0; an unmasked NaN gives NaN; a slice with an unmasked +inf gives NaN
    here (not specified: the caller checks it otherwise).
    """
    return _loss_rows(x, labels, alpha, axis, temperature, where, None)[0]


@_quiet
def np_fenchel_young_loss_vjp(x, labels, cotangent, alpha, axis=-1, temperature=1.0, where=None):
    """(dx, dlabels, dt, dalpha) of np_fenchel_young_loss: dx = g (p - y) / t,
    dlabels = g (grad Omega(y) - z), dt = -g <z, p - y> / t, dalpha = g (dOmega(y) - dOmega(p))
    (envelope theorem). dlabels is NaN (unspecified) where the label is 0 and alpha = 1, and
    at unmasked -inf entries."""
    return _loss_rows(x, labels, alpha, axis, temperature, where, cotangent)[1:]


def _loss_rows(x, labels, alpha, axis, temperature, where, cotangent):
    rows = _Rows(x, axis, where)
    flat, mask = rows.values, rows.mask
    y = rows.rows(labels)
    ts, alphas = rows.per_row(temperature), rows.per_row(alpha)
    kinds = slice_kinds(rows.x, rows.axes, where).reshape(-1)
    g = np.zeros(len(ts)) if cotangent is None else np.asarray(cotangent, np.float64).reshape(-1)
    loss = np.zeros(len(ts))
    dx, dlabels = np.zeros(flat.shape), np.zeros(flat.shape)
    dt, dalpha = np.zeros(len(ts)), np.zeros(len(ts))
    for i, (row, m) in enumerate(zip(flat, mask, strict=True)):
        if kinds[i] in (NAN_SLICE, POSINF):
            loss[i] = dt[i] = dalpha[i] = np.nan
            dx[i] = dlabels[i] = np.nan
            continue
        dlabels[i, m & np.isneginf(row)] = np.nan
        if kinds[i] == EMPTY:
            continue
        valid = m & (row > -np.inf)
        t, a = ts[i], alphas[i]
        x_valid = row[valid]
        shifted = (x_valid - x_valid.max()) / t
        q = np.zeros_like(shifted)
        near = shifted > -np.inf
        q[near] = _np_entmax_bisect_row(shifted[near], a)
        yv = y[i, valid]
        linear = _dot_over(x_valid, q - yv, t)  # <z, p - y>, without overflowing z = x / t
        loss[i] = _omega(yv, a) - _omega(q, a) + linear
        if cotangent is None:
            continue
        dx[i, valid] = g[i] * (q - yv) / t
        dt[i] = -g[i] * linear / t
        dalpha[i] = g[i] * (_omega_dalpha(yv, a) - _omega_dalpha(q, a))
        with np.errstate(divide="ignore"):
            grad_omega = np.log(yv) + 1 if a == 1 else yv ** (a - 1) / (a - 1)
        z = x_valid / t
        with np.errstate(invalid="ignore"):
            d = g[i] * (grad_omega - z)
        dlabels[i, valid] = np.where(np.isfinite(grad_omega), d, np.nan)
    return (
        rows.per_slice(loss),
        rows.unrows(dx),
        rows.unrows(dlabels),
        rows.per_slice(dt),
        rows.per_slice(dalpha),
    )


def _dot_over(x, d, t):
    """sum(x d) / t in float64, scaled by a power of two where x d could overflow."""
    big = np.max(np.abs(x), initial=0) > 1e300
    scale = 2.0**-600 if big else 1.0
    return np.sum((x * scale) * d) / t / scale


# --- samplers: the noise is given (drawn with jax.random, as the functions document) ---


@_quiet
def sampler_perturbed(logits, noise, axis=-1, where=None):
    """The perturbed logits ``logits + g`` of a Gumbel sampler, exactly (float64), shifted by
    each slice's maximum (which changes neither the sample nor its softmax, and keeps the
    noise of huge logits); in slices with an unmasked +inf, the +inf logits are 0 and all
    others -inf (the limit of equal huge logits, so that the noise still chooses among
    them). Masked entries are -inf."""
    x = np.asarray(logits, np.float64)
    axes = _axes(x.ndim, axis)
    mask = np.ones(x.shape, bool) if where is None else np.broadcast_to(where, x.shape)
    kinds = _expand(slice_kinds(x, axes, where), x, axes)
    valid = mask & (x > -np.inf)
    top = np.max(np.where(valid, x, -np.inf), axis=axes, keepdims=True, initial=-np.inf)
    top = np.where(np.isfinite(top), top, 0)
    shifted = np.where(mask, x - top, -np.inf)
    limit = np.where(mask & np.isposinf(x), 0, -np.inf)
    return np.where(kinds == POSINF, limit, shifted) + np.asarray(noise, np.float64)


@_quiet
def np_gumbel_softmax(logits, noise, axis=-1, temperature=1.0, where=None, hard=False):
    """softmax((logits + g) / t), or the one-hot of the first argmax of logits + g (exact: see
    sampler_perturbed)."""
    perturbed = sampler_perturbed(logits, noise, axis, where)
    if hard:
        return np_hardmax(perturbed, axis, where, "first")
    return np_softmax(perturbed, axis, temperature, where)


@_quiet
def np_binary_concrete(logits, noise, temperature=1.0, hard=False):
    """sigmoid((logits + L) / t), or [logits + L > 0] (NaN stays NaN); the sum in the compute
    dtype (that of ``noise``)."""
    z = (np.asarray(logits).astype(noise.dtype) + noise).astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        if hard:
            return np.where(np.isnan(z), np.nan, (z > 0).astype(np.float64))
        return 1 / (1 + np.exp(-z / np.asarray(temperature, np.float64)))


@_quiet
def np_binary_concrete_vjp(logits, noise, cotangent, temperature=1.0):
    """(dlogits, dt) elementwise (dt not yet summed to the temperature's shape): g y (1 - y) / t
    and -g y (1 - y) z / t**2, zero where z = logits + L is infinite."""
    z = (np.asarray(logits).astype(noise.dtype) + noise).astype(np.float64)
    t = np.asarray(temperature, np.float64)
    y = np_binary_concrete(logits, noise, temperature)
    slope = np.asarray(cotangent, np.float64) * y * (1 - y)
    finite = np.isfinite(z)
    return slope / t, np.where(finite, -slope * np.where(finite, z, 0) / t**2, 0)


# --- top-k: the exact mask by a stable sort, the relaxations by bisection (float64) ---


def _topk_row_ends(row, valid, k):
    """(nan, competing, top, capacity) of one row: NaN poisons it; +inf entries come first."""
    if np.isnan(row[valid]).any():
        return True, None, None, None
    competing = valid & (row > -np.inf)
    top = competing & np.isposinf(row)
    return False, competing, top, min(k, competing.sum())


@_quiet
def np_topk_mask(x, k, axis=-1, where=None, ties="first"):
    """1 on the k largest unmasked entries above -inf (all of them when fewer), ties at the
    k-th value broken by the lowest index ("first") or shared ("uniform"); -0.0 ties with 0.0."""

    def row_fn(row, valid, i):
        nan, competing, _, capacity = _topk_row_ends(row, valid, k)
        if nan:
            return np.full(row.shape, np.nan)
        out = np.zeros(row.shape)
        if capacity == 0:
            return out
        order = np.flatnonzero(competing)[np.argsort(-row[competing], kind="stable")]
        if ties == "first":
            out[order[:capacity]] = 1.0
            return out
        kth = row[order[capacity - 1]]
        above = competing & (row > kth)
        tied = competing & (row == kth)
        out[above] = 1.0
        out[tied] = (capacity - above.sum()) / tied.sum()
        return out

    rows = _Rows(x, axis, where)
    return rows.unrows(_per_row(rows, row_fn))


def _bisect_threshold(z, capacity, mass):
    """tau with sum mass(z - tau) = capacity, by bisection (float64)."""
    finite = z[np.isfinite(z)]  # z = -inf (an overflowed distance) has no mass
    lo, hi = finite.min() - 60.0, finite.max() + 60.0
    for _ in range(3000):
        mid = _midpoint(lo, hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if mass(z - mid).sum() >= capacity else (lo, mid)
    return _midpoint(lo, hi)


def _midpoint(lo, hi):
    mid = (lo + hi) / 2
    return mid if np.isfinite(mid) else lo / 2 + hi / 2  # (lo + hi overflowed: both near max)


def _sigmoid(d):
    return np.where(
        d >= 0, 1 / (1 + np.exp(-np.abs(d))), np.exp(-np.abs(d)) / (1 + np.exp(-np.abs(d)))
    )


TOPK_MASSES = {"soft": _sigmoid, "sparse": lambda d: np.clip(d, 0, 1)}


@_quiet
def np_relaxed_topk(x, k, axis=-1, temperature=1.0, where=None, kind="soft", compute=np.float32):
    """soft_topk (sigmoid) or sparse_topk (clip) with the documented limits: +inf entries take
    one unit each first (or share k when more than k); ``k`` is a scalar or one per slice.
    The scores' halved distances to the finite maximum are rounded in the ``compute`` dtype,
    as the library does, unless it solves again on exact differences (a large maximum: see
    ``jaxrelax._topk.coarse_shift``); where no threshold in float64 meets the total (an extreme
    temperature), the t -> 0 limit: 1 above the ceil(k)-th largest score, the rest shared by
    the entries equal to it."""
    rows = _Rows(x, axis, where)
    ts, ks = rows.per_row(temperature), rows.per_row(k)
    mass = TOPK_MASSES[kind]

    def row_fn(row, valid, i):
        nan, competing, top, capacity = _topk_row_ends(row, valid, ks[i])
        if nan:
            return np.full(row.shape, np.nan)
        out = np.zeros(row.shape)
        n_top = top.sum()
        if capacity <= n_top:
            out[top] = capacity / max(n_top, 1)
            return out
        out[top] = 1.0
        left = capacity - n_top
        finite = competing & ~top
        if left >= finite.sum():
            out[finite] = 1.0
            return out
        half = (row[finite] / 2).astype(compute)
        top, scale = 2 * np.float64(half.max()), 2 / ts[i]
        info = np.finfo(compute)
        coarse = abs(top) <= info.max / 4 and abs(top) * scale > 1e3
        v = (half - half.max()).astype(np.float64)  # the library's halves, rounded alike
        z = v * (2 / ts[i])
        if coarse:  # the library solves again on exact differences (see coarse_shift)
            v, z = row[finite] / 2, row[finite] / ts[i]  # not shifted: nothing rounded away
        tau = _bisect_threshold(z, left, mass)
        p = mass(z - tau)
        if abs(p.sum() - left) > 1e-6 * left:
            needed = int(np.ceil(left))
            kth = np.sort(v)[::-1][needed - 1]
            above = v > kth
            p = above + (v == kth) * (left - above.sum()) / (v == kth).sum()
        out[finite] = p
        return out

    return rows.unrows(_per_row(rows, row_fn))


def relaxed_topk_slope(p, kind):
    """(s, z) of a relaxation's output ``p``: the mass's slope (``p (1 - p)``, or the free
    set's indicator) and the scores less the threshold, over t (``logit(p)``, or ``p``), both 0
    where ``s`` is."""
    p = np.asarray(p, np.float64)
    if kind == "soft":
        s = p * (1 - p)
        z = np.where(s > 0, np.log(np.where(s > 0, p, 1)) - np.log(np.where(s > 0, 1 - p, 1)), 0)
        return s, z
    s = ((p > 0) & (p < 1)).astype(np.float64)
    return s, p * s


@_quiet
def np_relaxed_topk_vjp(p, cotangent, k, axis=-1, temperature=1.0, kind="soft"):
    """(dx, dk, dt) per slice of the relaxation from its output ``p`` (float64): with
    ``s = p (1 - p)`` (soft) or the free set's indicator (sparse), ``g_hat = sum(s g) / sum(s)``:
    ``dx = s (g - g_hat) / t``, ``dk = g_hat``, ``dt = -sum(s (g - g_hat) z) / t`` with
    ``z = logit(p)`` (soft) or ``p`` (sparse) (the scores less the threshold, over t)."""
    p = np.asarray(p, np.float64)
    axes = _axes(p.ndim, axis)
    g = np.asarray(cotangent, np.float64)
    t = np.asarray(temperature, np.float64)
    s, z = relaxed_topk_slope(p, kind)
    total = s.sum(axes, keepdims=True)
    g_hat = np.where(total > 0, (s * g).sum(axes, keepdims=True) / np.where(total > 0, total, 1), 0)
    c = s * (g - g_hat)
    dt = -(c * z).sum(axes, keepdims=True) / t
    return c / t, np.squeeze(g_hat, axes), np.squeeze(dt, axes)


# --- pooling: float64 oracles from explicitly extracted windows ---


def np_windows(x, window, strides, padding, dilation=None):
    """Every window of channels-last ``x`` as an explicit patch tensor: (patches, positions),
    ``patches`` of shape (*batch, *pooled, features, window size) with -inf at padded
    positions, and ``positions`` of shape (*pooled, window size): each entry's flat
    row-major index within the spatial plane, -1 where it is padding. ``padding`` is a
    sequence of (low, high) pairs; ``dilation`` (None: ones) the step between a window's
    entries, as in lax.reduce_window's window_dilation."""
    x = np.asarray(x, np.float64)
    d = len(window)
    dilation = (1,) * d if dilation is None else tuple(dilation)
    first = x.ndim - 1 - d
    spatial = x.shape[first:-1]
    pooled = [
        (n + lo + hi - (w - 1) * r - 1) // s + 1
        for n, w, s, (lo, hi), r in zip(spatial, window, strides, padding, dilation, strict=True)
    ]
    batch = x.shape[:first]
    patches = np.full((*batch, *pooled, x.shape[-1], int(np.prod(window))), -np.inf)
    positions = np.full((*pooled, int(np.prod(window))), -1, np.int64)
    for out in np.ndindex(*pooled):
        for k, offset in enumerate(np.ndindex(*window)):
            coords = [
                o * s - lo + w * r
                for o, s, (lo, _), w, r in zip(out, strides, padding, offset, dilation, strict=True)
            ]
            if all(0 <= c < n for c, n in zip(coords, spatial, strict=True)):
                index = (Ellipsis, *coords, slice(None))
                patches[(Ellipsis, *out, slice(None), k)] = x[index]
                positions[(*out, k)] = np.ravel_multi_index(coords, spatial)
    return patches, positions


def np_max_pool(x, window, strides, padding, dilation=None):
    """(values, indices) with the documented semantics: the first maximum in row-major
    window order; a NaN window gives NaN and the index of its last NaN; a window whose real
    entries are all -inf, -inf and the index of its first real entry."""
    patches, positions = np_windows(x, window, strides, padding, dilation)
    real = positions >= 0  # (*pooled, K), broadcast over batch and features
    real = np.broadcast_to(real[..., None, :], patches.shape)
    nan = np.isnan(patches)
    values = np.max(np.where(nan, -np.inf, patches), axis=-1)
    size = patches.shape[-1]
    first_max = np.argmax(real & (patches == values[..., None]), axis=-1)
    first_real = np.argmax(real, axis=-1)
    last_nan = size - 1 - np.argmax(nan[..., ::-1], axis=-1)
    any_nan = nan.any(-1)
    chosen = np.where(any_nan, last_nan, np.where(values == -np.inf, first_real, first_max))
    values = np.where(any_nan, np.nan, values)
    flat_positions = np.broadcast_to(positions[..., None, :], patches.shape)
    indices = np.take_along_axis(flat_positions, chosen[..., None], -1)[..., 0]
    return values, indices.astype(np.int32)


def np_scatter_to_plane(x_shape, d, indices, updates, combine="add"):
    """Scatters ``updates`` at plane ``indices`` (shape (*batch, *pooled, features)) into an
    array of ``x_shape`` (``d`` spatial dimensions before the features), adding them, or
    with ``combine="max"`` taking the largest of the values that name one position (NaN if
    any is NaN); positions nothing names are 0."""
    first = len(x_shape) - 1 - d
    batch = int(np.prod(x_shape[:first]))
    features = x_shape[-1]
    out = np.zeros((batch, int(np.prod(x_shape[first:-1])), features))
    touched = np.zeros(out.shape, bool)
    pooled = int(np.prod(np.shape(indices)[first:-1]))  # -1 cannot be inferred at batch 0
    idx = np.asarray(indices).reshape(batch, pooled, features)
    upd = np.asarray(updates, np.float64).reshape(batch, pooled, features)
    for (b, q, f), u in np.ndenumerate(upd):
        i = idx[b, q, f]
        if combine == "add":
            out[b, i, f] += u
        elif not touched[b, i, f]:
            out[b, i, f] = u
        else:
            held = out[b, i, f]
            out[b, i, f] = np.nan if np.isnan(u) or np.isnan(held) else max(held, u)
        touched[b, i, f] = True
    return out.reshape(x_shape)


def pool_temperature(temperature, ndim):
    """A pooling temperature (a scalar, or one per batch element and feature) with ``ndim``
    dimensions, as it broadcasts against the pooled output."""
    t = np.asarray(temperature, np.float64)
    return t.reshape((1,) * (ndim - t.ndim) + t.shape)


@_quiet
def np_smooth_pool(x, window, strides, padding, temperature=1.0, kind="soft", dilation=None):
    """soft_pool (``kind="soft"``: the softmax-weighted mean) or lse_pool (``"lse"``: t
    log-sum-exp) of every window, in float64: padding and -inf entries take no part (a
    window of nothing but them gives -inf), +inf entries win (+inf), NaN poisons."""
    patches, _ = np_windows(x, window, strides, padding, dilation)
    t = pool_temperature(temperature, np.ndim(x))[..., None]
    with np.errstate(invalid="ignore"):
        m = np.max(np.where(np.isnan(patches), -np.inf, patches), -1, keepdims=True)
        finite_m = np.where(np.isfinite(m), m, 0.0)
        e = np.where(patches > -np.inf, np.exp((patches - finite_m) / t), 0.0)
        den = e.sum(-1, keepdims=True)
        gap = np.where(e > 0, patches - finite_m, 0.0)
        if kind == "soft":
            value = finite_m + (e * gap).sum(-1, keepdims=True) / den
        else:
            value = finite_m + t * np.log(den)
    value = np.where(m == -np.inf, -np.inf, value)
    value = np.where(m == np.inf, np.inf, value)
    value = np.where(np.isnan(patches).any(-1, keepdims=True), np.nan, value)
    return value[..., 0]


@np.errstate(invalid="ignore")  # NaN windows give NaN, as they should
@_quiet
def np_smooth_pool_vjp(
    x, cotangent, window, strides, padding, temperature=1.0, kind="soft", dilation=None
):
    """(dx, dt per window) of :func:`np_smooth_pool` in closed form, on inputs without NaN:
    ``p (1 + (x - y) / t)`` and ``-Var_p(x) / t^2`` for soft, ``p`` and the softmax's
    entropy for lse; a window holding +inf shares its cotangent equally among its c +inf
    entries (the limit of equal, ever larger entries), with temperature gradient 0 for soft
    and log c for lse; -inf and padding entries get 0. dt has the
    pooled shape (sum it to the temperature's shape)."""
    x = np.asarray(x, np.float64)
    d = len(window)
    patches, positions = np_windows(x, window, strides, padding, dilation)
    t = pool_temperature(temperature, x.ndim)[..., None]
    g = np.asarray(cotangent, np.float64)[..., None]
    m = np.max(patches, -1, keepdims=True)
    posinf = m == np.inf
    finite_m = np.where(np.isfinite(m), m, 0.0)
    e = np.where(patches > -np.inf, np.exp((patches - finite_m) / t), 0.0)
    e = np.where(posinf, (patches == np.inf).astype(float), e)
    den = e.sum(-1, keepdims=True)
    p = e / np.where(den > 0, den, 1.0)
    u = np.where(p > 0, (patches - finite_m) / t, 0.0)
    u = np.where(posinf, 0.0, u)
    mean_u = (p * u).sum(-1, keepdims=True)
    if kind == "soft":
        slope = p * (1 + u - mean_u)
        dt = -(p * (u - mean_u) ** 2).sum(-1, keepdims=True)
    else:
        slope = p
        dt = np.where(den > 0, np.log(np.where(den > 0, den, 1.0)) - mean_u, 0.0)
    contributions = g * slope  # (*batch, *pooled, F, K)
    dx = np.zeros(x.shape)
    first = x.ndim - 1 - d
    spatial = x.shape[first:-1]
    flat_dx = dx.reshape(*x.shape[:first], int(np.prod(spatial)), x.shape[-1])
    pooled = positions.shape[:-1]
    for out in np.ndindex(*pooled):
        for k in range(positions.shape[-1]):
            q = positions[(*out, k)]
            if q >= 0:
                flat_dx[..., q, :] += contributions[(Ellipsis, *out, slice(None), k)]
    del spatial
    return flat_dx.reshape(x.shape), (g * dt)[..., 0]
