import numpy as np
import pytest
from PIL import Image

from cityclf.pipeline import Augment, Preprocess, load_images, make_dataset


def striped(path, width=80, height=60):
    """Left half red, right half blue; bottom quarter white (a 'dashboard')."""
    a = np.zeros((height, width, 3), np.uint8)
    a[:, : width // 2] = (255, 0, 0)
    a[:, width // 2:] = (0, 0, 255)
    a[height * 3 // 4:] = 255
    Image.fromarray(a).save(path)
    return path


@pytest.fixture
def files(tmp_path):
    return [striped(tmp_path / f"{i}.png") for i in range(5)]


def test_shapes_and_range(files):
    images, rows = load_images(files, Preprocess(img_size=32))
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.float32
    assert rows.tolist() == [0, 1, 2, 3, 4]
    assert 0 <= images.min() and images.max() <= 255 and images.max() > 200


def test_crop_bottom_removes_the_dashboard(files):
    full, _ = load_images(files[:1], Preprocess(img_size=32))
    cropped, _ = load_images(files[:1], Preprocess(img_size=32, crop_bottom=0.25))
    assert full[0, -2:].min() > 240  # white dashboard at the bottom
    assert cropped[0, -2:, :, 1].max() < 20  # gone: only red/blue remain (no green)


def test_grayscale_has_three_equal_channels(files):
    grey, _ = load_images(files[:1], Preprocess(img_size=16, grayscale=True))
    assert np.allclose(grey[..., 0], grey[..., 1]) and np.allclose(grey[..., 1], grey[..., 2])
    colour, _ = load_images(files[:1], Preprocess(img_size=16))
    assert not np.allclose(colour[..., 0], colour[..., 2])


def test_augmentation_never_flips_by_default(files):
    ds = make_dataset(files, [0] * 5, Preprocess(img_size=32), batch_size=5,
                      augmentation=Augment(), seed=0)
    for _ in range(3):  # several epochs of random augmentations
        batch, _ = next(iter(ds))
        red_left = batch[:, :, :8, 0].numpy().mean()
        red_right = batch[:, :, -8:, 0].numpy().mean()
        assert red_left > red_right + 100


def test_augmentation_changes_pixels_and_flip_on_request(files):
    plain, _ = load_images(files, Preprocess(img_size=32))
    ds = make_dataset(files, [0] * 5, Preprocess(img_size=32), batch_size=5,
                      augmentation=Augment(zoom=0, brightness=0.2, contrast=0, flip=True), seed=1)
    batch = next(iter(ds))[0].numpy()
    assert not np.allclose(batch, plain)
    flipped = batch[:, :, :8, 0].mean(axis=(1, 2)) < batch[:, :, -8:, 0].mean(axis=(1, 2))
    assert flipped.any()


def test_undecodable_image_is_skipped_not_fatal(files, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really")
    images, rows = load_images([files[0], bad, files[1]], Preprocess(img_size=16))
    assert rows.tolist() == [0, 2] and len(images) == 2


def test_targets_follow_images_and_bad_settings_are_refused(files):
    batch, targets = next(iter(make_dataset(files, [7, 8, 9, 10, 11], Preprocess(16))))
    assert targets.numpy().tolist() == [7, 8, 9, 10, 11]
    with pytest.raises(ValueError):
        Preprocess(crop_bottom=1.0)
    with pytest.raises(ValueError, match="targets"):
        make_dataset(files, [1, 2])


def test_preprocess_key_changes_with_settings():
    assert Preprocess(224).key() == Preprocess(224).key()
    assert Preprocess(224).key() != Preprocess(224, grayscale=True).key()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_training_and_prediction_see_the_same_pixels(tmp_path, fmt):
    """Training decodes in TensorFlow, prediction in PIL: a JPEG must give both the same pixels
    (TensorFlow's default fast DCT did not, and moved predictions by several points)."""
    from cityclf.images import load_rgb
    from cityclf.inference import prepare_image
    rng = np.random.default_rng(0)
    smooth = np.linspace(0, 255, 320 * 240 * 3).reshape(240, 320, 3)
    pixels = np.clip(smooth + rng.normal(0, 40, smooth.shape), 0, 255).astype(np.uint8)
    path = tmp_path / f"street.{fmt.lower()}"
    Image.fromarray(pixels).save(path, format=fmt, quality=85)
    pre = Preprocess(img_size=96, crop_bottom=0.25)
    trained_on, _ = load_images([path], pre)
    predicted_on = prepare_image(load_rgb(path), pre)
    np.testing.assert_allclose(trained_on[0], predicted_on, atol=0.5 + 1e-3)  # the cache's rounding


@pytest.mark.parametrize("suffix", ["jpg", "png"])
def test_a_panorama_is_seen_by_its_forward_view_not_squashed(tmp_path, suffix):
    """A 2:1 equirectangular frame: its middle 90° about the horizon, not the rig's footer."""
    from cityclf.pipeline import Preprocess, load_images
    pano = np.zeros((512, 1024, 3), np.uint8)
    pano[:, :] = (0, 0, 255)                         # blue all around and on the footer...
    pano[256 - 96:256 + 96, 512 - 128:512 + 128] = (255, 0, 0)  # ...red straight ahead
    path = tmp_path / f"pano.{suffix}"
    Image.fromarray(pano).save(path, quality=95)
    ordinary = tmp_path / f"wide.{suffix}"
    Image.fromarray(pano[:, :900]).save(ordinary, quality=95)  # 1.76:1 is not a panorama
    images, _ = load_images([path, ordinary], Preprocess(32, crop_bottom=0.25))
    assert images[0, ..., 0].min() > 200 and images[0, ..., 2].max() < 60
    assert images[1, ..., 2].mean() > 100  # the ordinary frame keeps its blue surroundings
