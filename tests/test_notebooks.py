"""The committed notebooks, and the experiment glue they (and the benchmarks) call.

The notebooks themselves run through nbval in smoke mode (pytest's testpaths include
notebooks/); here they are checked as files: clean (no outputs, no execution counts), with a
Colab badge, and with one parameters cell that goes through ``configure`` (so ``ADVSEG_SMOKE``
reaches them). The rest tests advseg_utils.experiment on tiny networks and the bundled sample.
"""
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import keras
import nbformat
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from advseg_utils.datasets import sample_dataset
from advseg_utils import (
    ExperimentConfig,
    HistoryLog,
    Segmenter,
    build_model,
    configure,
    evaluate,
    examples,
    image_to_segment,
    network_summary,
    project_dir,
    recalibrate_on_training_crops,
    run_experiment,
    split_ids,
    train_model,
    training_stream,
)
from advseg_utils.file_utils import DatasetError, load_img, load_mask, save_split
from advseg_utils.method import Adversarial
from advseg_utils.models import build_discriminator, build_generator
from advseg_utils.models.efficientnet_lite import VARIANTS as EFFICIENTNET_LITE

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = ("01_baseline", "02_adversarial", "03_semi_supervised")


# --- the committed notebooks ------------------------------------------------------------------


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_carries_no_outputs_and_no_execution_counts(name):
    notebook = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    nbformat.validate(notebook)
    dirty = [
        f"cell {index}: {len(cell.outputs)} outputs, execution_count {cell.execution_count}"
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, f"{name}.ipynb was committed executed; clear its outputs: {dirty}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_opens_in_colab_and_has_one_parameters_cell_through_configure(name):
    notebook = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    badge = f"https://colab.research.google.com/github/advseg/advseg/blob/main/notebooks/{name}.ipynb"
    assert badge in notebook.cells[0].source
    assert notebook.metadata.kernelspec.name == "python3"
    code = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    assert sum("configure(ExperimentConfig(" in source for source in code) == 1
    assert sum("ExperimentConfig(" in source for source in code) == 1  # no second, unswitched config


# --- configuration ------------------------------------------------------------------------------


def test_smoke_shrinks_the_run_and_keeps_the_method():
    config = ExperimentConfig(method="semi", labeled_fraction=0.25, lambda_semi=0.3, t_semi=0.3, discriminator="small")
    smoke = config.smoke()
    assert (smoke.dataset, smoke.crop_size, smoke.batch_size, smoke.weights, smoke.precision) == (
        "sample", 64, 2, None, "float32"
    )
    assert smoke.steps <= 10
    assert 0 < smoke.semi_start < smoke.steps  # the pseudo-label loss runs in part of the smoke run
    assert smoke.steps % smoke.checkpoint_every == 0 and smoke.steps // smoke.checkpoint_every == 2
    kept = ("method", "labeled_fraction", "lambda_semi", "t_semi", "discriminator", "seed")
    assert [getattr(smoke, knob) for knob in kept] == [getattr(config, knob) for knob in kept]


def test_demo_trains_the_offline_imagenet_generator_on_the_sample_and_keeps_the_method():
    config = ExperimentConfig(method="semi", labeled_fraction=0.25, lambda_semi=0.3, t_semi=0.3, weights=None)
    demo = config.demo()
    assert (demo.dataset, demo.weights, demo.precision) == ("sample", "imagenet", "float32")
    assert demo.backbone in EFFICIENTNET_LITE  # its weights come with a package: nothing to download
    assert demo.semi_start == demo.steps // 4  # the paper's quarter of the run
    assert demo.steps // demo.checkpoint_every == 2  # two points on the loss curves
    assert demo.recalibrate_batchnorm > 0  # the head's batch norms re-estimated: 60 steps leave them at init
    kept = ("method", "labeled_fraction", "lambda_semi", "t_semi", "discriminator", "seed")
    assert [getattr(demo, knob) for knob in kept] == [getattr(config, knob) for knob in kept]


def test_configure_switches_to_demo_and_smoke_wins_over_it(monkeypatch):
    config = ExperimentConfig(name="nb", method="baseline", labeled_fraction=1.0, checkpoint_dir="runs/nb")
    monkeypatch.delenv("ADVSEG_SMOKE", raising=False)
    monkeypatch.setenv("ADVSEG_DEMO", "1")
    demo = configure(config)
    assert demo.replace(checkpoint_dir=None, split_file=None) == config.demo().replace(checkpoint_dir=None)
    assert Path(tempfile.gettempdir()).resolve() in demo.run_dir.resolve().parents
    monkeypatch.setenv("ADVSEG_SMOKE", "1")
    assert configure(config).replace(checkpoint_dir=None, split_file=None) == config.smoke().replace(checkpoint_dir=None)


def test_the_default_generator_never_downloads(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError(f"the default configuration tried to download {args or kwargs}")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", no_network)
    config = ExperimentConfig()
    generator = build_generator(21, config.backbone, config.head, config.weights, config.output_stride)
    assert generator(np.zeros((1, 64, 64, 3), "float32")).shape == (1, 64, 64, 21)


def test_recalibration_sets_batchnorm_statistics_to_those_of_the_first_training_crops():
    images = np.arange(5 * 2 * 2 * 3, dtype="float32").reshape(5, 2, 2, 3)
    stream = lambda step: tf.data.Dataset.from_tensor_slices({"image": images[step:]}).batch(2)  # noqa: E731
    generator = keras.Sequential([keras.Input((2, 2, 3)), keras.layers.BatchNormalization()])
    recalibrate_on_training_crops(generator, stream, crops=3)  # 2 batches of 2, the first 3 crops
    batchnorm = generator.layers[0]
    np.testing.assert_allclose(batchnorm.moving_mean.numpy(), images[:3].mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(batchnorm.moving_variance.numpy(), images[:3].var(axis=(0, 1, 2)), rtol=1e-4)
    assert batchnorm.momentum == 0.99  # restored


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_configure_switches_to_smoke_in_a_fresh_temporary_folder(monkeypatch, value):
    monkeypatch.setenv("ADVSEG_SMOKE", value)
    config = ExperimentConfig(name="nb", method="semi", labeled_fraction=0.5, checkpoint_dir="runs/nb")
    first, second = configure(config), configure(config)
    assert first.replace(checkpoint_dir=None, split_file=None) == config.smoke().replace(checkpoint_dir=None)
    temp = Path(tempfile.gettempdir()).resolve()
    assert temp in first.run_dir.resolve().parents and temp in first.split_path.resolve().parents
    assert first.run_dir != second.run_dir  # runs never resume each other's checkpoints
    assert not first.run_dir.exists()  # nothing written until training


@pytest.mark.skipif(os.name != "posix", reason="stale folders are found with os.kill(pid, 0)")
def test_configure_removes_smoke_folders_of_processes_that_are_gone(monkeypatch, tmp_path):
    monkeypatch.setenv("ADVSEG_SMOKE", "1")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    gone = tmp_path / f"advseg-smoke-nb-abc-{finished.pid}"
    running = tmp_path / f"advseg-smoke-nb-def-{os.getpid()}"
    for folder in (gone, running):
        (folder / "run").mkdir(parents=True)
    config = configure(ExperimentConfig(name="nb"))
    assert not gone.exists() and running.exists()
    assert config.run_dir.parent.name.endswith(f"-{os.getpid()}") and config.run_dir.parent.parent == tmp_path


@pytest.mark.parametrize("value", [None, "", "0", "false"])
def test_configure_leaves_the_config_alone_without_smoke(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("ADVSEG_SMOKE", raising=False)
    else:
        monkeypatch.setenv("ADVSEG_SMOKE", value)
    config = ExperimentConfig(name="nb", checkpoint_dir="runs/nb")
    assert configure(config) == config


@pytest.mark.parametrize(("replicas", "accumulation", "expected"), [(1, 1, 10), (8, 1, 16), (4, 2, 16), (2, 1, 10)])
def test_configure_rounds_the_batch_up_to_split_over_replicas(monkeypatch, replicas, accumulation, expected):
    monkeypatch.delenv("ADVSEG_SMOKE", raising=False)
    strategy = SimpleNamespace(num_replicas_in_sync=replicas)
    config = ExperimentConfig(batch_size=10, accumulation_steps=accumulation)
    assert configure(config, strategy).batch_size == expected


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"method": "gan"}, "'gan'"),
        ({"dataset": "coco"}, "'coco'"),
        ({"labeled_fraction": 0.0}, "labeled_fraction=0.0"),
        ({"method": "semi", "labeled_fraction": 1.0}, "labeled_fraction < 1"),
        ({"steps": 0}, "steps=0"),
        ({"discriminator_input": "logits"}, "discriminator_input='logits'"),
    ],
)
def test_bad_settings_are_refused_by_name(changes, named):
    with pytest.raises(ValueError, match=named.replace("(", r"\(")):
        ExperimentConfig(**changes)


def test_default_split_file_is_one_per_dataset_fraction_and_seed():
    config = ExperimentConfig(dataset="camvid", data_dir="read-only/camvid", labeled_fraction=1 / 8, seed=3)
    assert config.split_path == project_dir() / "data" / "splits" / "camvid_labeled0.125_seed3.txt"
    assert config.replace(split_file="mine.txt").split_path == Path("mine.txt")
    assert config.replace(checkpoint_dir=None, name="x").run_dir == Path("checkpoints/x")


# --- data -----------------------------------------------------------------------------------------


def test_split_is_written_then_reused_from_its_file(tmp_path):
    train_set = sample_dataset("train")
    config = ExperimentConfig(dataset="sample", method="semi", labeled_fraction=0.25, split_file=str(tmp_path / "split.txt"))
    labeled, unlabeled = split_ids(config, train_set)
    assert config.split_path.is_file()
    assert len(labeled) == 6 and sorted(labeled + unlabeled) == sorted(train_set.ids)

    # Whatever the file says wins: a reused split is read back, not drawn again.
    other = sorted(train_set.ids)
    save_split(config.split_path, other[:6], other[6:], fraction=0.25, seed=0)
    assert split_ids(config, train_set) == (other[:6], other[6:])

    with pytest.raises(DatasetError, match="seed"):
        split_ids(config.replace(seed=1), train_set)


def test_all_labels_need_no_split_file(tmp_path):
    train_set = sample_dataset("train")
    config = ExperimentConfig(
        dataset="sample", method="adversarial", labeled_fraction=1.0, split_file=str(tmp_path / "split.txt")
    )
    assert split_ids(config, train_set) == (list(train_set.ids), [])
    assert not (tmp_path / "split.txt").exists()


def test_examples_are_spread_over_the_dataset_with_their_masks():
    val_set = sample_dataset("val")
    images, masks = examples(val_set, 3)
    np.testing.assert_array_equal(images[0], load_img(val_set.image_paths[0]))
    np.testing.assert_array_equal(masks[-1], load_mask(val_set.mask_paths[-1]))
    assert [m.shape for m in masks] == [i.shape[:2] for i in images] and len(images) == 3


@pytest.mark.parametrize(
    ("method", "keys"),
    [
        ("baseline", {"image", "label"}),
        ("adversarial", {"image", "label", "d_label"}),
        # the sample data's unlabeled images have masks: their labels come along, for diagnostics only
        ("semi", {"image", "label", "d_label", "unlabeled_image", "unlabeled_label"}),
    ],
)
def test_training_stream_gives_each_method_its_batches(method, keys):
    train_set = sample_dataset("train")
    config = ExperimentConfig(method=method, labeled_fraction=0.5).smoke()
    ids = sorted(train_set.ids)
    batch = next(iter(training_stream(config, train_set, ids[:12], ids[12:])(0)))
    assert set(batch) == keys
    for key in keys:
        assert batch[key].shape[:3] == (2, 64, 64), key


# --- training history -------------------------------------------------------------------------------


def test_history_log_keeps_the_whole_run_across_restarts(tmp_path):
    path = tmp_path / "run" / "history.json"
    model = SimpleNamespace(iteration=tf.Variable(0, dtype=tf.int64), distribute_strategy=tf.distribute.get_strategy())

    def epoch_ends(log, iteration, loss, **extra):
        model.iteration.assign(iteration)
        log.on_epoch_end(iteration // 4 - 1, {"loss": loss, **extra})

    first = HistoryLog(path)
    first.set_model(model)
    epoch_ends(first, 4, 3.0)
    epoch_ends(first, 8, 2.0)  # then the runtime disconnects before checkpoint 8 is saved
    resumed = HistoryLog(path)  # a new process resumes from checkpoint 4
    resumed.set_model(model)
    epoch_ends(resumed, 8, 2.5, val_mean_iou=0.4)
    epoch_ends(resumed, 12, 1.5)
    history = HistoryLog(path).history()
    assert history["loss"] == [3.0, 2.5, 1.5]
    assert math.isnan(history["val_mean_iou"][0]) and history["val_mean_iou"][1:2] == [0.4]


# --- inference and evaluation -----------------------------------------------------------------------


def constant_generator(num_classes: int, winner: int) -> keras.Model:
    """Logits that always make ``winner`` the predicted class (and are not all equal)."""
    images = keras.Input((None, None, 3))
    bias = np.linspace(0.0, 1.0, num_classes).astype("float32")
    bias[winner] = 5.0
    layer = keras.layers.Conv2D(num_classes, 1, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(bias))
    return keras.Model(images, layer(images))


def test_segmenter_gives_labels_and_d_confidence_at_each_images_own_size():
    keras.utils.set_random_seed(0)
    images = keras.Input((None, None, 3))
    generator = keras.Model(images, keras.layers.Conv2D(3, 1)(keras.layers.Rescaling(1 / 255)(images)))
    maps = keras.Input((None, None, 3))
    discriminator = keras.Model(maps, keras.layers.Conv2D(1, 1, bias_initializer="ones")(maps))
    segmenter = Segmenter(generator, discriminator)
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((5, 7), (9, 4))]
    prediction = segmenter.predict(pictures)
    for picture, labels, confidence in zip(pictures, prediction.labels, prediction.confidence):
        logits = generator(picture[None].astype("float32"))
        probabilities = tf.nn.softmax(logits)
        np.testing.assert_array_equal(labels, np.argmax(logits[0], axis=-1))
        np.testing.assert_allclose(confidence, tf.sigmoid(discriminator(probabilities))[0, ..., 0], rtol=1e-6)
        assert labels.dtype == np.uint8 and labels.shape == confidence.shape == picture.shape[:2]
    assert Segmenter(generator).predict(pictures).confidence is None
    with pytest.raises(ValueError, match="no discriminator"):
        Segmenter(generator).confidence(pictures[0])


def test_evaluation_matches_a_hand_count_for_an_all_background_generator():
    val_set = sample_dataset("val")
    result = evaluate(Segmenter(constant_generator(val_set.num_classes, winner=0)), val_set, progress=False)

    truth = np.concatenate([load_mask(path).ravel() for path in val_set.mask_paths])
    truth = truth[truth != 255]
    objects = np.unique(truth[truth != 0])
    background_iou = np.mean(truth == 0)  # TP = background pixels; FP = every object pixel; FN = 0
    assert result.per_class_iou[0] == pytest.approx(background_iou)
    assert all(result.per_class_iou[k] == 0.0 for k in objects)  # present, never predicted
    assert np.isnan(np.delete(result.per_class_iou, [0, *objects])).all()  # absent classes do not count
    assert result.mean_iou == pytest.approx(background_iou / (1 + len(objects)))
    assert result.pixel_accuracy == pytest.approx(background_iou)
    assert "| **mean**" in result.table()
    as_dict = json.loads(json.dumps(result.as_dict()))
    assert as_dict["per_class_iou"]["bicycle"] is None and as_dict["per_class_iou"]["background"] == pytest.approx(background_iou)


def test_image_to_segment_reads_a_path_and_shrinks_big_images(monkeypatch, tmp_path):
    val_set = sample_dataset("val")
    monkeypatch.setenv("ADVSEG_SMOKE", "1")
    image, source = image_to_segment("ignored-in-smoke-mode.jpg", val_set)
    np.testing.assert_array_equal(image, load_img(val_set.image_paths[0]))
    monkeypatch.setenv("ADVSEG_SMOKE", "0")
    Image.new("RGB", (2000, 1000), (10, 200, 30)).save(tmp_path / "wide.png")
    image, source = image_to_segment(tmp_path / "wide.png", val_set)
    assert image.shape == (512, 1024, 3) and "wide.png" in source
    assert (image == (10, 200, 30)).all()


# --- networks and the whole experiment -------------------------------------------------------------


def test_build_model_follows_the_config():
    config = ExperimentConfig(method="adversarial", discriminator="small").smoke()
    model = build_model(config, sample_dataset("train"))
    assert model.discriminator.name == "discriminator_small"
    assert isinstance(model.g_optimizer, keras.optimizers.SGD) and isinstance(model.d_optimizer, keras.optimizers.Adam)
    rows = {line.rsplit(None, 2)[0].strip(): line.split() for line in network_summary(model).splitlines()[1:]}
    count = lambda label, column: int(rows[label][column].replace(",", ""))  # noqa: E731
    generator = f"G: {model.generator.name}"  # deeplabv3plus_<the config's backbone>
    assert generator == f"G: {config.head}_{config.backbone}"
    assert count("backbone", -1) + count("head", -1) == count(generator, -1)
    assert count(generator, -2) == model.generator.count_params()


def test_build_model_and_train_model_use_the_classes_and_builders_a_notebook_defines(tmp_path):
    """A notebook passes the method class and the network builders its cells define: an edited
    cell is what trains (its losses, its batches, its D), not the package's copy."""
    calls = []

    class EditedAdversarial(Adversarial):
        def losses(self, batch):
            calls.append("losses")
            return super().losses(batch)

        @classmethod
        def training_batches(cls, data, labeled_ids, unlabeled=None):
            calls.append("training_batches")
            return super().training_batches(data, labeled_ids, unlabeled)

    def edited_discriminator(num_classes, variant):
        return build_discriminator(num_classes, "small")

    config = ExperimentConfig(method="adversarial").smoke().replace(checkpoint_dir=str(tmp_path / "run"), tensorboard=False)
    train_set = sample_dataset("train")
    model = build_model(config, train_set, method=EditedAdversarial, make_discriminator=edited_discriminator)
    assert type(model) is EditedAdversarial and model.discriminator.name == "discriminator_small"
    assert config.discriminator == "paper"  # the config asked for the paper's D; the edited builder won
    train_model(model, config, train_set, sorted(train_set.ids))
    assert calls[0] == "training_batches" and "losses" in calls


def test_run_experiment_on_the_sample_data_and_again_after_it_finished(tmp_path):
    # The baseline keeps this quick; the notebooks run the adversarial and semi-supervised paths.
    config = ExperimentConfig(
        name="tiny", method="baseline", labeled_fraction=0.25, checkpoint_dir=str(tmp_path / "run"), split_file=str(tmp_path / "split.txt")
    ).smoke().replace(steps=2, checkpoint_every=1, crop_size=32)
    result = run_experiment(config)
    assert result["iteration"] == 2 and (result["labeled_images"], result["unlabeled_images"]) == (6, 18)
    assert len(result["history"]["loss"]) == 2 and np.isfinite(result["final_logs"]["loss"])
    assert 0.0 <= result["mean_iou"] <= 1.0
    assert set(result["per_class_iou"]) == set(sample_dataset("val").class_names)
    json.dumps(result)

    again = run_experiment(config)  # nothing left to train: resumes, evaluates, keeps the history
    assert again["history"] == result["history"] and again["mean_iou"] == pytest.approx(result["mean_iou"])
