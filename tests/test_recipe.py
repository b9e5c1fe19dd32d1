"""The default recipe: fusion of offline backbones, a head solved exactly, and fine-tuning on
cached features when there is enough data; every choice recorded in run.json."""
import numpy as np
import pytest

from cityclf import finetune, stages, zoo
from cityclf.inference import load_predictor
from cityclf.train import TrainConfig, train

FUSION = ["mobilenet_v2", "efficientnet_lite0"]  # the two cheapest offline backbones


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite0"])
def test_split_backbone_reproduces_it_and_shares_its_layers(name):
    backbone = zoo.build(name, 2, 64).backbone
    bottom, top = finetune.split(backbone)
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(top(bottom(images)), backbone(images), atol=1e-5)
    assert set(map(id, top.layers[1:])) <= set(map(id, backbone.layers))
    trained = finetune.make_trainable(top)
    assert trained > 5 and all(not layer.trainable for layer in top.layers
                               if layer.__class__.__name__ == "BatchNormalization")


def test_no_model_means_the_auto_recipe(tiny_dataset):
    cfg = TrainConfig(data=str(tiny_dataset))
    assert (cfg.recipe, cfg.model, cfg.img_size) == ("auto", "fusion", 260)
    fast = TrainConfig(data=str(tiny_dataset), recipe="fast")
    assert (fast.model, fast.img_size) == ("mobilenet_v2", 224)
    assert TrainConfig(data=str(tiny_dataset), model="lenet").recipe == "manual"
    with pytest.raises(ValueError, match="recipe"):
        TrainConfig(data=str(tiny_dataset), recipe="best")


def test_fusion_trains_saves_reloads_safely_and_passes_the_fast_path(tiny_dataset, monkeypatch):
    monkeypatch.setattr(stages, "MIN_FINE_TUNE_PER_CITY", 0)  # fine-tune even the tiny set
    run = train(TrainConfig(data=str(tiny_dataset), img_size=64, members=FUSION,
                            fine_tune_epochs=1), progress=False)
    recipe = run.info["recipe"]
    assert recipe["recipe"] == "auto" and recipe["backbones"] == FUSION
    assert recipe["fine_tune_part"] == 0 and "kept" in recipe["fine_tune_result"]
    assert recipe["head"]["C"] in [row["C"] for row in recipe["head"]["search"]]
    assert set(run.history()["stage"]) == {"head", "finetune"}
    assert (run.path / "fast.json").exists() and (run.path / "model.tflite").exists()
    model = load_predictor(run).model  # safe mode
    embedding = model.get_layer("mobilenet_v2_and_efficientnet_lite0").output.shape[-1]
    assert embedding == 2 * 1280
    predictions = run.predictions()
    assert len(predictions) == run.info["split"]["counts"]["test"]


def test_the_plan_fine_tunes_only_with_enough_photos_per_city(tiny_dataset):
    cfg = TrainConfig(data=str(tiny_dataset), img_size=32, members=FUSION)
    model = zoo.build("fusion", 3, 32, weights=None, members=FUSION)  # plan reads its parts only
    few = stages.plan(cfg, model, n_train=3 * (stages.MIN_FINE_TUNE_PER_CITY - 1), n_classes=3)
    assert few["fine_tune"].startswith("skipped: ") and "fine_tune_part" not in few
    enough = stages.plan(cfg, model, n_train=3 * stages.MIN_FINE_TUNE_PER_CITY, n_classes=3)
    assert enough["fine_tune_part"] == 0 and enough["backbones"] == FUSION
    manual = stages.plan(TrainConfig(data=str(tiny_dataset), model="mobilenet_v2"), model,
                           n_train=10_000, n_classes=3)
    assert manual["fine_tune"] == "not in the manual recipe"


def test_fusion_refuses_bad_members():
    with pytest.raises(ValueError, match="two or more"):
        zoo.build("fusion", 2, 64, members=["mobilenet_v2"])
    with pytest.raises(ValueError, match="unknown: vgg16"):
        zoo.build("fusion", 2, 64, members=["mobilenet_v2", "vgg16"])


def test_embeddings_through_litert_equal_keras(tiny_dataset, monkeypatch):
    from cityclf import embeddings, fast
    from cityclf.datasets import scan
    from cityclf.pipeline import Preprocess
    backbone = zoo.build("mobilenet_v2", 2, 64).backbone
    paths = scan(tiny_dataset, progress=False).manifest["path"][:12]
    pre = Preprocess(64)
    keras_vectors, _ = embeddings.embed(backbone, "keras", "tiny", paths, pre, progress=False)
    monkeypatch.setattr(embeddings, "FAST_MIN_IMAGES", 0)
    fast_vectors, ok = embeddings.embed(backbone, "mobilenet_v2", "tiny", paths, pre, progress=False)
    assert ok.all() and fast.fast_backbone(backbone, "mobilenet_v2") is not None  # cached
    np.testing.assert_allclose(fast_vectors, keras_vectors, atol=1e-3 * np.abs(keras_vectors).max())


def test_cli_train_with_only_data_on_a_folder_per_city_tree(tiny_dataset, tmp_path, capsys):
    """`cityclf train --data ROOT` on the other layout (small inputs and the cheap fusion, for
    time: the recipe is the default one)."""
    import shutil

    from cityclf.cli import main
    from cityclf.runs import list_runs
    tree = tmp_path / "photos"
    for image in sorted(tiny_dataset.glob("train_val/*/*/images/*.jpg")):
        city = image.parts[-4]
        (tree / city / "nested").mkdir(parents=True, exist_ok=True)
        shutil.copy(image, tree / city / "nested" / image.name)
    assert main(["train", "--data", str(tree), "--img-size", "64",
                 "--backbones", ",".join(FUSION)]) == 0
    assert "top-1" in capsys.readouterr().out
    run, = list_runs()
    assert run.info["recipe"]["recipe"] == "auto" and run.info["dataset"]["layout"] != "msls"
    assert run.info["ood"]["reference_images"] > 0


def test_cut_features_through_litert_equal_keras(tiny_dataset, monkeypatch):
    from cityclf import embeddings
    from cityclf.datasets import scan
    from cityclf.pipeline import Preprocess
    backbone = zoo.build("mobilenet_v2", 2, 64).parts[0][1]
    paths = scan(tiny_dataset, progress=False).manifest["path"][:8].tolist()
    keras_cut, keras_vectors, _, _ = finetune.cut_features(backbone, paths, Preprocess(64), progress=False)
    monkeypatch.setattr(embeddings, "FAST_MIN_IMAGES", 0)
    fast_cut, fast_vectors, ok, _ = finetune.cut_features(backbone, paths, Preprocess(64), progress=False)
    assert ok.all() and fast_cut.dtype == np.float16 and fast_cut.shape == keras_cut.shape
    np.testing.assert_allclose(fast_cut, keras_cut, atol=2e-3 * np.abs(keras_cut).max())
    np.testing.assert_allclose(fast_vectors, keras_vectors, atol=1e-3 * np.abs(keras_vectors).max())


def test_class_weights_on_an_unbalanced_split(tiny_dataset, monkeypatch):
    """A per-city split of an unbalanced dataset trains with every city weighed alike, for the
    exact head, the cached-feature fine-tuning and the forest."""
    from cityclf.cli import main
    from cityclf.datasets import scan
    from cityclf.splits import load_split
    assert main(["data", "split", str(tiny_dataset), "--per-city", "24", "--val", "0.25",
                 "--test", "0.25"]) == 0
    table = load_split(scan(tiny_dataset, progress=False))
    assert (table["split"] == "unused").any()
    monkeypatch.setattr(stages, "MIN_FINE_TUNE_PER_CITY", 0)
    run = train(TrainConfig(data=str(tiny_dataset), img_size=32, members=FUSION, class_weights=True,
                            fine_tune_epochs=1), progress=False)
    assert run.info["split"]["per_city"] == 24 and run.info["config"]["class_weights"]
    used = (table["split"] != "unused").sum()
    assert sum(run.info["split"]["counts"].values()) == used
    forest = train(TrainConfig(data=str(tiny_dataset), model="random_forest", img_size=32,
                               class_weights=True), progress=False)
    assert forest.metrics["n_images"] == run.metrics["n_images"]  # the split lives in this home
