"""The classifier head on backbone embeddings: a multinomial logistic regression, solved exactly.

The head used to be a Keras Dense layer trained with Adam (lr 1e-3, dropout 0.2) and early
stopping on validation loss. On real photos it lost 2.5 points of top-1 to scikit-learn's
``LogisticRegression`` on the very same embeddings. Both are the same model (a linear softmax on
the embedding), so the gap is the fitting: early stopping ended Adam after a few epochs, long
before the convex problem was solved (on the demo: 11 epochs, 0.570 top-1; the same head run
300 epochs: 0.591; solved: 0.61 — bench/head.py), with dropout and an L2 strength nobody chose.
Here the problem is solved to its optimum by L-BFGS and the L2 strength is chosen on the
validation split's log-loss. (Refitting the chosen head on train + validation did not help on
the demo: 0.575 against 0.610, within its noise, so the head keeps the training split.) Features are centred, not standardised: centring leaves the solution unchanged (the
intercept is not penalised) but makes L-BFGS converge 10-30x faster, whereas standardising
would change what L2 prefers, blowing up the many near-silent ReLU6 channels. The result is put
into the Keras head (the centring folded into the bias), so a run remains one Keras model with a
verified fast path.

Training rows too many for memory (MSLS: 1.6 M x 1280) go to ``fit_head_streaming``: C is chosen
as above on a seeded subsample, then the full split is solved at that C by L-BFGS whose loss and
gradient are summed chunk by chunk over the stored float16 rows.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.utils.class_weight import compute_sample_weight

from .embedstore import as_array

# Inverse L2 strengths tried (on centred features), weakest regularisation last: wide enough
# for a hundred images of 3 cities (small C) and ten thousand real photos of 2 (larger C).
C_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0)
MAX_ITER = 1000
ABSENT_CLASS_LOGIT = -30.0  # a class with no training image can never win
SOLVER = "logistic regression (L-BFGS, centred features)"
# Above this many bytes of float32 training rows, callers should use fit_head_streaming:
# fit_head holds the rows as float64 plus a centred copy, four times as much.
IN_MEMORY_LIMIT_BYTES = 2 << 30
SUBSAMPLE_ROWS = 100_000  # rows of each split that fit_head_streaming chooses C on
CHUNK_ROWS = 8192         # rows per streamed chunk: 40 MB of float32 at 1280-d


@dataclass
class HeadFit:
    """A fitted head as Dense weights (embedding → logits), and how it was chosen."""

    kernel: np.ndarray  # (embedding size, n_classes)
    bias: np.ndarray    # (n_classes,)
    C: float
    search: list[dict] = field(default_factory=list)  # one row per C: val loss and accuracy
    solver: str = SOLVER

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        logits = x @ self.kernel + self.bias
        logits -= logits.max(1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(1, keepdims=True)

    @property
    def chosen(self) -> dict:
        """The search row of the chosen C: its training and validation loss and accuracy."""
        return next(row for row in self.search if row["C"] == self.C)

    def summary(self) -> dict:
        return {"solver": self.solver, "C": self.C, "search": self.search}


def _fit(x, y, C: float, mean, model: LogisticRegression | None = None,
         balanced: bool = False) -> LogisticRegression:
    """Fit on centred features (or refit ``model`` from where it stands: the grid warm-starts
    along C)."""
    model = model or LogisticRegression(max_iter=MAX_ITER, warm_start=True,
                                        class_weight="balanced" if balanced else None)
    with warnings.catch_warnings():  # max_iter reached is still close to the optimum
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.set_params(C=C).fit(x - mean, y)


def _as_dense(model: LogisticRegression, mean, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense weights on raw embeddings: the centring folded in, every class a column."""
    coef, intercept = model.coef_, model.intercept_
    if len(model.classes_) == 2:  # scikit-learn's binary form: softmax([0, z]) = sigmoid(z)
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.r_[0.0, intercept]
    kernel = np.zeros((len(mean), n_classes))
    bias = np.full(n_classes, ABSENT_CLASS_LOGIT)
    kernel[:, model.classes_] = coef.T
    bias[model.classes_] = intercept - coef @ mean
    return kernel.astype(np.float32), bias.astype(np.float32)


def fit_head(train_x, train_y, val_x, val_y, n_classes: int, grid=C_GRID,
             balanced: bool = False, start: HeadFit | None = None) -> HeadFit:
    """Fit on the training embeddings for each C of ``grid``; keep the lowest validation
    log-loss. ``balanced`` weighs every city alike, in the fit and in that log-loss, however
    many images each has. ``start``, a head fitted on similar data (a run's, before a few
    labels were added), is where L-BFGS starts: the same optimum, reached several times
    sooner."""
    train_x, val_x = np.asarray(train_x, np.float64), np.asarray(val_x, np.float64)
    train_y, val_y = np.asarray(train_y), np.asarray(val_y)
    if len(np.unique(train_y)) < 2:
        raise ValueError("the training split needs images of at least two cities")
    mean = train_x.mean(0)
    search, best, model = [], None, _started(start, mean, np.unique(train_y), balanced)
    for C in grid:
        model = _fit(train_x, train_y, C, mean, model, balanced)
        kernel, bias = _as_dense(model, mean, n_classes)
        fit = HeadFit(kernel, bias, C)
        row = {"C": C, **_scores(fit, train_x, train_y, "train_", balanced),
               **_scores(fit, val_x, val_y, "val_", balanced)}
        search.append(row)
        if best is None or row["val_loss"] < best[1]["val_loss"]:
            best = (fit, row)
    best[0].search = search
    return best[0]


def _started(start: HeadFit | None, mean, classes, balanced: bool) -> LogisticRegression | None:
    """A LogisticRegression that warm-starts from ``start`` (on features centred at ``mean``);
    None without a start, or for two classes (scikit-learn's binary form has one vector)."""
    if start is None or len(classes) < 3:
        return None
    model = LogisticRegression(max_iter=MAX_ITER, warm_start=True,
                               class_weight="balanced" if balanced else None)
    kernel = start.kernel.astype(np.float64)[:, classes]
    model.coef_ = kernel.T.copy()
    model.intercept_ = start.bias.astype(np.float64)[classes] + mean @ kernel
    return model


def _scores(fit: HeadFit, x, y, prefix: str, balanced: bool = False,
            chunk_rows: int = CHUNK_ROWS) -> dict:
    """Log-loss (as sklearn's: probabilities clipped at eps) and accuracy, chunk by chunk so
    that ``x`` may be a row source too large for memory."""
    if not len(y):
        return {f"{prefix}loss": float("nan"), f"{prefix}accuracy": float("nan")}
    weights = compute_sample_weight("balanced", y) if balanced else np.ones(len(y))
    loss = right = 0.0
    for start, chunk in _chunks(x, chunk_rows):
        probs = fit.probabilities(chunk)
        s, t = weights[start:start + len(chunk)], y[start:start + len(chunk)]
        eps = np.finfo(probs.dtype).eps
        loss -= s @ np.log(np.clip(probs[np.arange(len(t)), t], eps, 1 - eps))
        right += s @ (probs.argmax(1) == t)
    return {f"{prefix}loss": round(float(loss / weights.sum()), 5),
            f"{prefix}accuracy": round(float(right / weights.sum()), 5)}


def needs_streaming(n_rows: int, dim: int) -> bool:
    """Whether training rows should go to fit_head_streaming rather than fit_head."""
    return n_rows * dim * 4 > IN_MEMORY_LIMIT_BYTES


def fit_head_streaming(train, train_y, val, val_y, n_classes: int, grid=C_GRID,
                       balanced: bool = False, subsample: int = SUBSAMPLE_ROWS, seed: int = 0,
                       chunk_rows: int = CHUNK_ROWS) -> HeadFit:
    """``fit_head`` for more training rows than memory holds. ``train`` and ``val`` are row
    sources (cityclf.embedstore.StoredRows: ``len``, ``[index]``, ``chunks()``, ``read()``) or
    arrays.

    C is chosen by ``fit_head`` on a seeded subsample of ``subsample`` rows of each split; the
    full training split is then solved at that C, warm-started from the subsample's solution,
    so memory is bounded by the subsample and one chunk, not by the number of rows. Its search
    row for the chosen C holds the full fit's scores; the other rows are the subsample's.
    """
    train_y, val_y = np.asarray(train_y), np.asarray(val_y)
    began = time.perf_counter()
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.permutation(len(train_y))[:subsample])
    val_pick = np.sort(rng.permutation(len(val_y))[:subsample])
    small = fit_head(as_array(train[pick]), train_y[pick], as_array(val[val_pick]),
                     val_y[val_pick], n_classes, grid, balanced)
    chosen = time.perf_counter()
    classes = np.unique(train_y)
    mean = np.zeros(small.kernel.shape[0])
    for _, chunk in _chunks(train, chunk_rows):
        mean += chunk.sum(0, dtype=np.float64)
    mean /= len(train_y)
    # scikit-learn fits two classes as one logistic vector: softmax reaches its optimum at half C
    C = small.C / 2 if len(classes) == 2 else small.C
    weights = compute_sample_weight("balanced", train_y) if balanced else np.ones(len(train_y))
    kernel = small.kernel[:, classes].astype(np.float64)
    start = np.concatenate([kernel.ravel(), small.bias[classes] + mean @ kernel])  # centred
    data = (train, np.searchsorted(classes, train_y), weights, mean, C, chunk_rows)
    result = minimize(_loss_and_gradient, start, args=data, method="L-BFGS-B", jac=True,
                      options={"maxiter": MAX_ITER, "maxls": 50, "gtol": 1e-4,
                               "ftol": 64 * np.finfo(float).eps})  # as scikit-learn's
    coef = result.x[:kernel.size].reshape(kernel.shape)
    kernel = np.zeros((len(mean), n_classes))
    bias = np.full(n_classes, ABSENT_CLASS_LOGIT)
    kernel[:, classes], bias[classes] = coef, result.x[coef.size:] - mean @ coef
    fit = HeadFit(kernel.astype(np.float32), bias.astype(np.float32), small.C,
                  solver=f"{SOLVER}, streamed over {len(train_y)} rows, C chosen on "
                         f"{len(pick)}")
    row = {"C": small.C, "train_rows": len(train_y), "iterations": int(result.nit),
           "choose_C_seconds": round(chosen - began, 1),
           "fit_seconds": round(time.perf_counter() - chosen, 1),
           **_scores(fit, train, train_y, "train_", balanced, chunk_rows),
           **_scores(fit, val, val_y, "val_", balanced, chunk_rows)}
    fit.search = [row if old["C"] == small.C else {**old, "train_rows": len(pick)}
                  for old in small.search]
    return fit


def _loss_and_gradient(theta, train, target, weights, mean, C, chunk_rows):
    """scikit-learn's objective, (sum of weighted log-losses + |W|² / 2C) / sum of weights, on
    centred rows, and its gradient. The centring is applied to the products, not the rows
    ((x - m) W = x W - m W), which spares a copy of every chunk; products are float32 (the rows
    are float16), sums float64."""
    dim, n = len(mean), len(theta) // (len(mean) + 1)
    W, b = theta[:dim * n].reshape(dim, n), theta[dim * n:]
    W32, shift = W.astype(np.float32), b - mean @ W
    loss, grad_W, grad_b = 0.0, np.zeros_like(W), np.zeros_like(b)
    for start, x in _chunks(train, chunk_rows):
        logits = (x @ W32).astype(np.float64) + shift
        logits -= logits.max(1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        rows = np.arange(len(x))
        t, s = target[start:start + len(x)], weights[start:start + len(x)]
        loss -= s @ log_p[rows, t]
        g = np.exp(log_p)
        g[rows, t] -= 1
        g *= s[:, None]
        grad_W += x.T @ g.astype(x.dtype)
        grad_b += g.sum(0)
    grad_W -= np.outer(mean, grad_b)
    total = weights.sum()
    return ((loss + (W * W).sum() / (2 * C)) / total,
            np.concatenate([((grad_W + W / C) / total).ravel(), grad_b / total]))


def _chunks(rows, chunk_rows: int):
    """(first row, rows) chunks of a row source or an array."""
    if hasattr(rows, "chunks"):
        start = 0
        for chunk in rows.chunks(chunk_rows):
            yield start, chunk
            start += len(chunk)
    else:
        for start in range(0, len(rows), chunk_rows):
            yield start, np.asarray(rows[start:start + chunk_rows])


def set_head_weights(head, fit: HeadFit) -> None:
    """Put a fitted head into the Keras head model's softmax Dense layer."""
    import keras
    dense = [layer for layer in head.layers if isinstance(layer, keras.layers.Dense)][-1]
    dense.set_weights([fit.kernel, fit.bias])
