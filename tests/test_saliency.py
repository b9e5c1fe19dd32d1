"""Saliency maps must point at what the model actually uses: a planted bright square."""
import keras
import numpy as np
import pytest

from cityclf import saliency
from cityclf.inference import load_predictor
from cityclf.runs import get_run

SIZE = 32
SQUARE = (slice(4, 12), slice(20, 28))  # rows, columns of the planted square


def street(rng, with_square: bool) -> np.ndarray:
    image = rng.uniform(0, 110, (SIZE, SIZE, 3)).astype(np.float32)
    if with_square:
        image[SQUARE] = 255
    return image


def inside_vs_outside(heatmap: np.ndarray) -> tuple[float, float]:
    inside = np.zeros(heatmap.shape, bool)
    inside[SQUARE] = True
    return float(heatmap[inside].mean()), float(heatmap[~inside].mean())


def tiny_cnn(nested: bool) -> keras.Model:
    """A small CNN, flat like LeNet or nested like the transfer models (backbone, then head)."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="features")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    head = keras.layers.Dense(2, activation="softmax")
    if not nested:
        return keras.Model(inputs, head(x))
    backbone = keras.Model(inputs, x, name="backbone")
    embedding = keras.Input((16,))
    head_model = keras.Model(embedding, head(embedding), name="head")
    outer = keras.Input((SIZE, SIZE, 3))
    return keras.Model(outer, head_model(backbone(outer)))


@pytest.fixture(scope="module", params=[False, True], ids=["flat", "nested"])
def square_model(request):
    """A CNN trained in a few seconds to answer 1 iff the square is there."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    labels = np.arange(400) % 2
    images = np.stack([street(rng, bool(label)) for label in labels])
    model = tiny_cnn(request.param)
    model.compile(keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=6, batch_size=32, verbose=0)
    test = np.stack([street(rng, True), street(rng, False)])
    assert model.predict(test, verbose=0).argmax(1).tolist() == [1, 0], "the model did not learn"
    return model


@pytest.fixture
def image_with_square():
    return street(np.random.default_rng(1), True)


def test_grad_cam_highlights_the_square(square_model, image_with_square):
    heatmap = saliency.grad_cam(square_model, image_with_square, label=1)
    assert heatmap.shape == (SIZE, SIZE)
    assert 0 <= heatmap.min() and heatmap.max() == pytest.approx(1)
    inside, outside = inside_vs_outside(heatmap)
    assert inside > 2 * outside


def test_grad_cam_on_a_chosen_layer(square_model, image_with_square):
    heatmap = saliency.grad_cam(square_model, image_with_square, layer="features")
    inside, outside = inside_vs_outside(heatmap)
    assert inside > 2 * outside


def test_grad_cam_rejects_unknown_and_flat_layers(square_model, image_with_square):
    with pytest.raises(ValueError, match="no layer named"):
        saliency.grad_cam(square_model, image_with_square, layer="nope")
    dense = [layer for layer in square_model.layers if isinstance(layer, keras.layers.Dense)]
    if dense:
        with pytest.raises(ValueError, match="spatial"):
            saliency.grad_cam(square_model, image_with_square, layer=dense[0].name)


def test_occlusion_highlights_the_square(square_model, image_with_square):
    heatmap = saliency.occlusion(lambda images: square_model(images).numpy(), image_with_square,
                                 patch=8, stride=4)
    assert heatmap.shape == (SIZE, SIZE)
    inside, outside = inside_vs_outside(heatmap)
    assert inside > outside + 0.05


def test_occlusion_works_with_any_predict_fn():
    """A model-free 'classifier': class 1's probability is the brightness of one region."""
    def brightness(images):
        p = images[:, 10:20, 5:15].mean(axis=(1, 2, 3)) / 255
        return np.stack([1 - p, p], axis=1)

    image = np.full((30, 45, 3), 200, np.float32)
    heatmap = saliency.occlusion(brightness, image, label=1, patch=5, stride=5)
    assert heatmap.shape == (30, 45)
    assert heatmap[10:20, 5:15].min() > 0
    assert np.all(heatmap[:, 20:] == 0) and np.all(heatmap[25:] == 0)


def test_occlusion_covers_edges_the_stride_would_miss():
    def corner_brightness(images):
        p = images[:, 9, 9].mean(axis=1) / 255
        return np.stack([1 - p, p], axis=1)

    # patches at 0 and 4 end at row/column 8; a last patch flush with the edge must reach 9
    heatmap = saliency.occlusion(corner_brightness, np.full((10, 10, 3), 255, np.float32),
                                 label=1, patch=4, stride=4)
    assert heatmap[9, 9] > 0


def test_saliency_on_trained_zoo_runs(trained_home):
    """Real runs: LeNet (flat) and MobileNetV2 (a backbone nested in the model)."""
    for folder in sorted((trained_home / "models").iterdir()):
        if folder.name.startswith("."):
            continue
        run = get_run(folder)
        if run.info["kind"] != "keras":
            continue
        size = run.info["preprocess"]["img_size"]
        image = np.random.default_rng(0).uniform(0, 255, (size, size, 3)).astype(np.float32)
        heatmap = saliency.grad_cam(load_predictor(run).model, image)
        assert heatmap.shape == (size, size) and np.isfinite(heatmap).all()
        assert 0 <= heatmap.min() and heatmap.max() <= 1


def test_overlay_is_displayable_rgb():
    image = np.full((20, 30, 3), 100, np.float32)
    heatmap = np.zeros((5, 5))
    heatmap[0, 0] = 2.0
    shown = saliency.overlay(image, heatmap)
    assert shown.dtype == np.uint8 and shown.shape == (20, 30, 3)
    assert shown[0, 0, 0] > shown[0, 0, 2]  # hottest corner is red
    assert shown[-1, -1, 2] > shown[-1, -1, 0]  # coldest is blue
