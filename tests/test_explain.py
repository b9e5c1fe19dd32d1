"""Explanations (LIME, Grad-CAM, occlusion), their stability and cache, `cityclf explain`'s
function, uploads, and looking inside trained networks."""
import io
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from cityclf import config, explain, inspect_model
from cityclf.explain import (METHODS, Explanation, explain_cached, explain_file, explain_lime,
                             jaccard, segment, stability)
from cityclf.images import ImageError, load_rgb
from cityclf.inference import load_predictor, predict_files
from cityclf.runs import list_runs

SUPPORT = (slice(8, 24), slice(40, 56))  # a patch whose texture raises class 1
OPPOSE = (slice(40, 56), slice(8, 24))   # a patch whose texture lowers it


def planted_image() -> np.ndarray:
    """A smooth 64×64 gradient with two high-contrast checkerboard patches.

    The model keys on texture, not brightness: LIME hides a superpixel by filling it with its
    mean colour, which keeps a patch's brightness but wipes out its texture.
    """
    y, x = np.mgrid[:64, :64]
    image = np.stack([60 + 2 * x, 90 + y, np.full_like(x, 120)], -1).astype(np.float32)
    checker = np.where((y // 2 + x // 2) % 2, 250.0, 10.0)[..., None]
    for patch in (SUPPORT, OPPOSE):
        image[patch] = checker[patch]
    return image


class PatchModel:
    """P(class 1) rises with the texture in SUPPORT and falls with the texture in OPPOSE."""

    def __init__(self):
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        texture = [batch[(slice(None), *patch)].std(axis=(1, 2, 3)) for patch in (SUPPORT, OPPOSE)]
        p = 1 / (1 + np.exp(-(texture[0] - texture[1]) / 20))
        return np.stack([1 - p, p], axis=1)


def test_explanation_finds_the_planted_patches():
    image = planted_image()
    explanation = explain_lime(image, PatchModel(), label=1)  # our fast settings
    assert explanation.label == 1
    assert explanation.segments.shape == (64, 64)
    assert len(explanation.weights) == explanation.segments.max() + 1
    top_support, top_oppose = explanation.supporting(1), explanation.opposing(1)
    assert np.isin(explanation.segments[SUPPORT], top_support).any()
    assert np.isin(explanation.segments[OPPOSE], top_oppose).any()
    mask = explanation.mask(3)
    assert mask.shape == (64, 64)
    assert (mask[SUPPORT] == 1).mean() > 0.5
    assert (mask[OPPOSE] == -1).mean() > 0.5


def test_overlay_is_an_rgb_image_with_green_support_and_red_opposition():
    image = planted_image()
    explanation = explain_lime(image, PatchModel(), label=1, num_samples=150, segmentation="slic")
    overlay = explanation.overlay(image)
    assert overlay.shape == (64, 64, 3) and overlay.dtype == np.uint8
    enlarged = explanation.overlay(image, width=256)
    assert enlarged.shape == (256, 256, 3)
    red, green = enlarged[..., 0].astype(int), enlarged[..., 1].astype(int)
    support = (slice(4 * 8, 4 * 24), slice(4 * 40, 4 * 56))
    oppose = (slice(4 * 40, 4 * 56), slice(4 * 8, 4 * 24))
    assert (green[support] > red[support]).mean() > 0.5
    assert (red[oppose] > green[oppose]).mean() > 0.5


@pytest.mark.parametrize("segmentation", ["quickshift", "slic"])
def test_superpixels_are_numbered_without_gaps(segmentation):
    labels = segment(planted_image(), segmentation)
    assert labels.shape == (64, 64) and labels.min() == 0
    assert np.array_equal(np.unique(labels), np.arange(labels.max() + 1))
    with pytest.raises(ValueError, match="unknown segmentation"):
        segment(planted_image(), "watershed")


def test_supporting_and_opposing_keep_only_their_sign():
    explanation = Explanation(0, np.array([[0, 1, 2]]), np.array([0.3, 0.1, 0.0]), 1.0, 0.0)
    assert explanation.supporting().tolist() == [0, 1]
    assert explanation.opposing().tolist() == []
    assert explanation.mask().tolist() == [[1, 1, 0]]
    assert explanation.overlay(np.zeros((1, 3, 3)), width=6).shape == (2, 6, 3)  # keeps the aspect


def test_without_a_label_lime_explains_the_top_label():
    image = planted_image()
    image[OPPOSE] = 120  # only the supporting texture is left: class 1 wins...
    model = lambda batch: PatchModel()(batch)[:, ::-1]  # noqa: E731 - ...so here class 0 does
    explanation = explain_lime(image, model, num_samples=60, segmentation="quickshift")
    assert explanation.label == 0
    assert explanation.mask().shape == image.shape[:2]


def test_progress_reaches_the_end():
    seen = []
    explain_lime(planted_image(), PatchModel(), num_samples=40, segmentation="slic",
                 batch_size=10, progress=seen.append)
    assert seen == [0.25, 0.5, 0.75, 1.0]


def test_the_cache_answers_the_same_request_without_the_model():
    image, model = planted_image(), PatchModel()
    settings = {"num_samples": 60, "segmentation": "slic"}
    first = explain_cached("run-a", image, model, label=1, **settings)
    calls = model.calls
    assert calls > 0 and not first.cached
    assert list((config.cache_dir() / "explanations" / "run-a").glob("*.npz"))
    again = explain_cached("run-a", image, model, label=1, **settings)
    assert model.calls == calls and again.cached
    np.testing.assert_array_equal(again.segments, first.segments)
    np.testing.assert_array_equal(again.weights, first.weights)
    assert (again.label, again.score) == (first.label, first.score)
    explain_cached("run-b", image, model, label=1, **settings)  # another run: computed anew
    assert model.calls > calls
    calls = model.calls
    explain_cached("run-a", image, model, label=1, num_samples=80, segmentation="slic")
    assert model.calls > calls


def test_a_damaged_cache_file_is_recomputed():
    image, model = planted_image(), PatchModel()
    explain_cached("run-a", image, model, label=1, num_samples=40, segmentation="slic")
    for path in (config.cache_dir() / "explanations" / "run-a").glob("*.npz"):
        path.write_bytes(b"not a zip")
    calls = model.calls
    assert not explain_cached("run-a", image, model, label=1, num_samples=40,
                              segmentation="slic").cached
    assert model.calls > calls


def one_patch_image() -> np.ndarray:
    """The planted image with only the supporting patch left: the one thing to point at."""
    image = planted_image()
    image[OPPOSE] = 120
    return image


@pytest.fixture(scope="module")
def texture_network() -> keras.Model:
    """A hand-set CNN (no training): a Laplacian feature map, then P(class 1) rises with the
    texture inside SUPPORT and nowhere else."""
    inputs = keras.Input((64, 64, 3))
    features = keras.layers.Conv2D(1, 3, activation="relu", use_bias=False, name="features")
    head = keras.layers.Dense(2)
    model = keras.Model(inputs, keras.layers.Softmax()(head(keras.layers.Flatten()(
        features(inputs)))))
    laplacian = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32)
    features.set_weights([np.repeat(laplacian[:, :, None, None], 3, axis=2) / 3])
    inside = np.zeros((62, 62), np.float32)  # the 3x3 "valid" conv's map is 2 px smaller
    inside[SUPPORT[0].start - 1:SUPPORT[0].stop - 1, SUPPORT[1].start - 1:SUPPORT[1].stop - 1] = 1
    weights = np.stack([np.zeros(inside.size), inside.ravel() / 20_000], axis=1)
    head.set_weights([weights.astype(np.float32), np.array([0, -1.5], np.float32)])
    assert model.predict(one_patch_image()[None], verbose=0).argmax() == 1, "the patch decides"
    assert model.predict(np.full((1, 64, 64, 3), 120.0), verbose=0).argmax() == 0
    return model


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_points_at_the_planted_patch(texture_network, method):
    image = one_patch_image()
    predict = lambda batch: texture_network.predict(batch, verbose=0)  # noqa: E731
    result = explain.explain(image, predict, method=method, keras_model=texture_network)
    assert result.label == 1 and result.seconds > 0
    picture = (result.mask(3) == 1).astype(float) if method == "lime" else result.values
    assert picture.shape == image.shape[:2]
    inside = np.zeros(picture.shape, bool)
    inside[SUPPORT] = True
    assert picture[inside].mean() > 3 * max(picture[~inside].mean(), 0.01)
    assert result.overlay(image, width=128).shape == (128, 128, 3)


def test_grad_cam_needs_a_network_and_methods_are_checked():
    with pytest.raises(ValueError, match="not a neural network"):
        explain.explain(planted_image(), PatchModel(), method="gradcam")
    with pytest.raises(ValueError, match="unknown method 'shap'"):
        explain.explain(planted_image(), PatchModel(), method="shap")


def test_jaccard():
    assert jaccard({1, 2, 3, 4, 5}, [1, 2, 3, 6, 7]) == pytest.approx(3 / 7)
    assert jaccard([], []) == 1.0 and jaccard([1], [2]) == 0.0


def test_stability_is_the_mean_overlap_of_the_top_supporting_superpixels(monkeypatch):
    # Crafted: each seed's LIME weights are given, so the expected overlap is known.
    weights = {0: [5, 4, 3, 2, 1, 0, 0, 0, 0, 0, -9],   # top 5: {0, 1, 2, 3, 4}
               1: [5, 4, 3, 2, 0, 1, 0, 0, 0, 0, -9],   # {0, 1, 2, 3, 5}
               2: [0, 0, 0, 0, 0, 5, 4, 3, 2, 1, -9]}   # {5, 6, 7, 8, 9}
    monkeypatch.setattr(explain, "explain_lime", lambda image, predict_fn, seed, **settings:
                        Explanation(0, np.zeros((2, 2), int), np.array(weights[seed], float),
                                    1.0, 0.0))
    assert stability(None, None, seeds=(0, 1)) == pytest.approx(4 / 6)
    assert stability(None, None, seeds=(0, 1, 2)) == pytest.approx((4 / 6 + 0 + 1 / 9) / 3)


def test_stability_of_real_lime_runs():
    image, settings = planted_image(), {"label": 1, "num_samples": 100}
    assert stability(image, PatchModel(), seeds=(3, 3), **settings) == 1.0
    noise = np.random.default_rng(0)

    def guess(batch):  # answers at random: which superpixels LIME picks is down to chance
        p = noise.random(len(batch))
        return np.stack([1 - p, p], axis=1)
    assert stability(image, guess, seeds=(0, 1, 2), **settings) < 0.5


def test_heatmaps_are_cached_too():
    image, model = one_patch_image(), PatchModel()
    first = explain_cached("run-a", image, model, label=1, method="occlusion")
    calls = model.calls
    again = explain_cached("run-a", image, model, label=1, method="occlusion")
    assert again.cached and not first.cached and model.calls == calls
    np.testing.assert_array_equal(again.values, first.values)
    assert (again.label, again.seconds) == (first.label, first.seconds)
    assert not explain_cached("run-a", image, model, label=1).cached  # LIME: another entry


def test_explain_file_writes_the_photo_beside_its_explanation(trained_home, cityclf_home,
                                                             monkeypatch, tmp_path):
    monkeypatch.setenv("CITYCLF_HOME", str(trained_home))
    runs = {run.info["model"]: run for run in list_runs()}
    monkeypatch.setenv("CITYCLF_HOME", str(cityclf_home))  # the cache: here, not the shared home
    run = runs["mobilenet_v2"]
    photo = run.predictions()["path"].iloc[0]
    out = tmp_path / "pictures" / "why.png"
    result = explain_file(run, photo, "occlusion", out=out)
    assert result["city"] == predict_files(run, [photo])[0]["top"][0][0]
    assert result["city"] == run.classes[result["label"]] and result["method"] == "occlusion"
    assert result["out"] == str(out) and result["seconds"] > 0 and not result["cached"]
    with Image.open(out) as png:  # a title over the input and its overlay, PNG_WIDTH px each
        assert (png.format, png.size) == ("PNG", (2 * explain.PNG_WIDTH,
                                                  explain.PNG_WIDTH + explain.PNG_TITLE_PX))
        title = np.asarray(png.convert("L"))[:explain.PNG_TITLE_PX]
        assert (title < 128).any() and (title > 128).mean() > 0.8  # dark text on white
    assert explain_file(run, photo, "occlusion", out=out)["cached"]
    monkeypatch.chdir(tmp_path)
    assert explain_file(run, photo, num_samples=50)["out"] == f"{Path(photo).stem}.lime.png"
    assert (tmp_path / f"{Path(photo).stem}.lime.png").is_file()
    with pytest.raises(ValueError, match="not a neural network"):
        explain_file(runs["random_forest"], photo, "gradcam")
    other = next(city for city in run.classes if city != result["city"])
    asked = explain_file(run, photo, "occlusion", out=out, city=other)
    assert (asked["city"], asked["label"]) == (other, run.classes.index(other))
    assert not asked["cached"]  # another label, another explanation
    with pytest.raises(ValueError, match="knows no city 'atlantis'; it knows: "):
        explain_file(run, photo, city="atlantis")


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((30, 40, 3), 200, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(name: str, data: bytes) -> io.BytesIO:
    """What a browser upload looks like to the app: an open file that knows its name."""
    file = io.BytesIO(data)
    file.name = name
    return file


def test_uploads_are_read_or_refused_in_one_line():
    assert load_rgb(upload("street.png", png_bytes())).shape == (30, 40, 3)
    with pytest.raises(ImageError, match="notes.jpg: not a readable image"):
        load_rgb(upload("notes.jpg", b"hello, this is text"))
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8)).save(
        buffer, format="JPEG")
    with pytest.raises(ImageError, match="cut.jpg"):
        load_rgb(upload("cut.jpg", buffer.getvalue()[:2000]))


@pytest.fixture
def trained(use_trained_home):
    return {run.info["model"]: load_predictor(run) for run in list_runs()}


def test_conv_layers_go_shallow_to_deep_into_the_nested_backbone(trained):
    model = trained["mobilenet_v2"].model
    layers = inspect_model.conv_layers(model)
    names = [name for name, _ in layers]
    assert names[0] == "backbone.stem.conv" and names[-1] == "backbone.head.conv"
    assert len(names) == 52  # stem + 17 inverted-residual blocks (2 or 3 convs each) + head
    assert names.index("backbone.block1.expand.conv") < names.index("backbone.block16.project.conv")
    sizes = [shape[0] for _, shape in layers]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == 32  # 64 px input, stride 2
    assert layers[0][1] == (32, 32, 32) and layers[-1][1] == (2, 2, 1280)


def test_feature_maps_and_kernels_of_nested_and_flat_networks(trained):
    mobilenet, lenet = trained["mobilenet_v2"].model, trained["lenet"].model
    image = planted_image()  # 64 px, as the mobilenet run takes
    for name, shape in (("backbone.stem.conv", (32, 32, 32)), ("backbone.head.conv", (2, 2, 1280))):
        maps = inspect_model.feature_maps(mobilenet, name, image)
        assert maps.shape == shape and np.isfinite(maps).all()
    stem = inspect_model.feature_maps(mobilenet, "backbone.stem.conv", image)
    assert not np.allclose(stem, inspect_model.feature_maps(mobilenet, "backbone.stem.conv",
                                                            image[::-1]))
    last_lenet = inspect_model.conv_layers(lenet)[-1][0]
    assert inspect_model.feature_maps(lenet, last_lenet, image[:32, :32]).shape == (10, 10, 16)
    assert inspect_model.kernels(mobilenet, "backbone.stem.conv").shape == (3, 3, 3, 32)
    assert inspect_model.kernels(mobilenet, "backbone.block0.depthwise.conv").shape == (3, 3, 32, 1)
    with pytest.raises(ValueError, match="no convolutional layer"):
        inspect_model.kernels(mobilenet, "head")


def test_display_images(trained):
    """What the "inside the model" page draws: the most active channels' feature maps, and their
    kernels as pictures or, for a 1×1 convolution, as mixing weights."""
    maps = np.zeros((4, 4, 12), np.float32)
    maps[..., 2], maps[..., 9], maps[..., 0] = 5.0, 8.0, -1.0
    maps[0, 0, 5] = 100.0  # one bright pixel: the highest peak, but a mean of only 6.25
    active = inspect_model.most_active(maps, 3)
    assert active.tolist() == [9, 5, 2] and np.issubdtype(active.dtype, np.integer)
    assert sorted(inspect_model.most_active(maps, 50).tolist()) == list(range(12))

    maps[..., 3] = 10 + 2 * np.arange(16, dtype=np.float32).reshape(4, 4)  # 10..40
    tiles = inspect_model.feature_map_tiles(maps, [3, 5, 2], tile=16)
    assert [(t.shape, t.dtype) for t in tiles] == [((16, 16), np.uint8)] * 3
    ramp = tiles[0][::4, ::4]  # back to one pixel per activation
    np.testing.assert_array_equal(ramp, np.round((maps[..., 3] - 10) / 30 * 255))
    assert (ramp.min(), ramp.max()) == (0, 255)
    assert (tiles[1].min(), tiles[1].max()) == (0, 255) and (tiles[1] == 0).mean() == 15 / 16
    assert not tiles[2].any()  # a flat channel has nothing to stretch: black, not NaN

    mobilenet, lenet = trained["mobilenet_v2"].model, trained["lenet"].model
    stem = inspect_model.feature_maps(mobilenet, "backbone.stem.conv", planted_image())
    active = inspect_model.most_active(stem, 8)
    means = stem.mean(axis=(0, 1))
    assert np.all(np.diff(means[active]) <= 0)
    assert means[active[-1]] >= np.delete(means, active).max()  # none left out is more active
    shown = inspect_model.feature_map_tiles(stem, active, tile=64)  # 32 px maps, doubled
    assert len(shown) == 8 and all(t.shape == (64, 64) and t.dtype == np.uint8 for t in shown)

    pointwise, three = "backbone.block1.expand.conv", "backbone.stem.conv"
    depthwise = "backbone.block0.depthwise.conv"
    assert inspect_model.is_pointwise(mobilenet, pointwise)
    assert not inspect_model.is_pointwise(mobilenet, three)
    assert not inspect_model.is_pointwise(mobilenet, depthwise)
    weights = inspect_model.kernels(mobilenet, pointwise)
    mixing = inspect_model.mixing_weights(mobilenet, pointwise, [5, 0, 7])
    assert mixing.shape == (3, weights.shape[2]) and mixing.dtype == np.float32
    np.testing.assert_array_equal(mixing[0], weights[0, 0, :, 5])
    np.testing.assert_array_equal(mixing[2], weights[0, 0, :, 7])
    for layer in (three, depthwise):
        with pytest.raises(ValueError, match="not a 1×1 convolution"):
            inspect_model.mixing_weights(mobilenet, layer, [0])

    rgb = inspect_model.kernel_images(mobilenet, three, [0, 31, 4], tile=48)  # 3×3, 16 times
    assert [(k.shape, k.dtype) for k in rgb] == [((48, 48, 3), np.uint8)] * 3
    stem_kernels = inspect_model.kernels(mobilenet, three)
    for image, f in zip(rgb, [0, 31, 4]):  # scaled to the filter's own largest weight
        kernel = stem_kernels[..., f]
        expected = np.round((0.5 + kernel / (2 * np.abs(kernel).max())) * 255)
        np.testing.assert_array_equal(image[::16, ::16], expected)
        assert image.min() == 0 or image.max() == 255
    grey = inspect_model.kernel_images(mobilenet, depthwise, range(5), tile=48)
    assert [(k.shape, k.dtype) for k in grey] == [((48, 48), np.uint8)] * 5
    # lenet's second layer, (5, 5, 6, 16): a grid of a 5×5 tile per input channel, 4 to a row
    second = inspect_model.conv_layers(lenet)[1][0]
    grids = inspect_model.kernel_images(lenet, second, [0, 15], tile=5)
    gap = inspect_model.GAP
    assert [(k.shape, k.dtype) for k in grids] == [((2 * 5 + gap, 4 * 5 + 3 * gap), np.uint8)] * 2


def test_the_forest_is_not_a_neural_network(trained):
    assert "not a neural network" in inspect_model.not_a_network(trained["random_forest"])
    assert inspect_model.not_a_network(trained["mobilenet_v2"]) is None
