"""The head is a logistic regression solved exactly: it must match scikit-learn's on the same
embeddings, survive the trip into a Keras Dense layer, and handle two classes and absent ones."""
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from cityclf.head import C_GRID, fit_head, set_head_weights


def embeddings(n_per_class=40, n_classes=3, dim=32, seed=0):
    """Non-negative, unevenly scaled features like pooled ReLU6 activations, with a signal."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 2, (n_classes, dim)) * rng.uniform(0.05, 3, dim)
    y = np.repeat(np.arange(n_classes), n_per_class)
    x = np.clip(centres[y] + rng.normal(0, 1.0, (len(y), dim)), 0, 6)
    return x, y


def test_head_matches_a_tuned_logistic_regression_on_the_same_split():
    (xt, yt), (xv, yv) = embeddings(seed=0), embeddings(n_per_class=20, seed=1)
    fit = fit_head(xt, yt, xv, yv, n_classes=3)
    # scikit-learn tuned on the same grid and the same validation split, on the raw features
    tuned = min(log_loss(yv, LogisticRegression(C=C, max_iter=5000).fit(xt, yt).predict_proba(xv))
                for C in C_GRID)
    ours = log_loss(yv, fit.probabilities(xv))
    assert ours <= tuned + 1e-3
    assert min(row["val_loss"] for row in fit.search) == pytest.approx(ours, abs=1e-4)
    assert fit.chosen["val_loss"] == min(row["val_loss"] for row in fit.search)
    assert fit.C in C_GRID and len(fit.search) == len(C_GRID)


def test_head_in_keras_gives_the_same_probabilities():
    import keras
    (xt, yt), (xv, yv) = embeddings(), embeddings(n_per_class=10, seed=2)
    fit = fit_head(xt, yt, xv, yv, n_classes=3)
    head = keras.Sequential([keras.Input((xt.shape[1],)), keras.layers.Dropout(0.2),
                             keras.layers.Dense(3, activation="softmax")])
    set_head_weights(head, fit)
    np.testing.assert_allclose(head.predict(xv, verbose=0), fit.probabilities(xv), atol=1e-5)


def test_two_cities_and_a_city_without_training_images():
    (xt, yt), (xv, yv) = embeddings(n_classes=2), embeddings(n_classes=2, n_per_class=10, seed=3)
    fit = fit_head(xt, yt * 2, xv, yv * 2, n_classes=3)  # classes 0 and 2; 1 has no image
    probs = fit.probabilities(xv)
    assert probs.shape == (len(xv), 3) and np.allclose(probs.sum(1), 1)
    assert probs[:, 1].max() < 1e-6
    reference = LogisticRegression(C=fit.C, max_iter=5000).fit(xt - xt.mean(0), yt)
    np.testing.assert_allclose(probs[:, [0, 2]], reference.predict_proba(xv - xt.mean(0)), atol=1e-3)


def test_one_city_is_refused():
    x, y = embeddings(n_classes=1)
    with pytest.raises(ValueError, match="two cities"):
        fit_head(x, y, x, y, n_classes=1)
