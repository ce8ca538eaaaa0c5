"""Unlabeled images from anywhere: folders of plain images (and video frames) for the
semi-supervised method, their decoding, validation, the split file's record of them, and a run
on ten labeled images and a folder of mixed formats that trains, resumes equal and reports the
kept share."""
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from advseg_utils.config import ExperimentConfig
from advseg_utils.datasets import validate_dataset
from advseg_utils.experiment import (
    build_model,
    load_datasets,
    load_unlabeled,
    run_experiment,
    split_ids,
    train_model,
    training_stream,
)
from advseg_utils.file_utils import (
    DatasetError,
    UnlabeledSources,
    get_or_create_split,
    load_img,
    load_split,
    load_unlabeled_sources,
    save_split,
)
from advseg_utils.unlabeled import merge_unlabeled, unlabeled_folder_dataset
from advseg_utils.video import sample_frames
from advseg_utils.voc_gen import VOCGen

C = 3  # classes of the labeled test dataset
RNG = np.random.default_rng(0)


def noise(height: int, width: int, channels: int = 3, dtype=np.uint8) -> np.ndarray:
    top = np.iinfo(dtype).max + 1
    return RNG.integers(0, top, (height, width, channels), dtype=dtype).squeeze()


def write_mixed_formats(folder: Path) -> dict[str, Path]:
    """One image of each kind a user's folder may hold, of different sizes, in sub-folders."""
    files = {
        "jpeg": folder / "phone" / "IMG_0001.JPG",
        "cmyk": folder / "phone" / "print.jpeg",
        "grey": folder / "scans" / "grey.png",
        "palette": folder / "scans" / "palette.png",
        "rgba": folder / "web" / "cutout.png",
        "grey16": folder / "web" / "deep" / "depth16.png",
        "rgb16": folder / "web" / "deep" / "colour16.png",
        "tiff": folder / "web" / "scan.tif",
    }
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(noise(40, 52)).save(files["jpeg"], quality=90)
    Image.fromarray(noise(36, 30)).convert("CMYK").save(files["cmyk"], quality=90)
    Image.fromarray(noise(33, 47, 1)).save(files["grey"])
    Image.fromarray(noise(30, 44)).convert("P", palette=Image.ADAPTIVE, colors=12).save(files["palette"])
    Image.fromarray(noise(45, 38, 4)).save(files["rgba"])
    Image.fromarray(noise(31, 41, 1, np.uint16)).save(files["grey16"])
    tf.io.write_file(str(files["rgb16"]), tf.io.encode_png(noise(29, 35, 3, np.uint16)))
    Image.fromarray(noise(34, 34)).save(files["tiff"])
    return files


# --- the folder dataset --------------------------------------------------------------------------


def test_folders_become_one_sorted_dataset_with_unique_ids(tmp_path):
    for folder in ("a/photos", "b/photos"):
        (tmp_path / folder / "sub").mkdir(parents=True)
        Image.fromarray(noise(8, 8)).save(tmp_path / folder / "sub" / "x.png")
        Image.fromarray(noise(8, 8)).save(tmp_path / folder / "b.jpg")
    (tmp_path / "a/photos/.thumbnails").mkdir()
    Image.fromarray(noise(8, 8)).save(tmp_path / "a/photos/.thumbnails/x.png")  # hidden: left out silently
    (tmp_path / "a/photos/notes.txt").write_text("not an image")

    with pytest.warns(UserWarning, match=r"(?s)left out 1 files that are not images.*notes\.txt"):
        dataset = unlabeled_folder_dataset(tmp_path / "a/photos", tmp_path / "b/photos")
    assert dataset.ids == ("photos-2/b.jpg", "photos-2/sub/x.png", "photos/b.jpg", "photos/sub/x.png")
    assert dataset.image_paths[0] == tmp_path / "b/photos/b.jpg" and dataset.mask_paths is None


def test_a_missing_or_empty_folder_is_named(tmp_path):
    with pytest.raises(DatasetError, match="nowhere: unlabeled image folder not found"):
        unlabeled_folder_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty: no images"):
        unlabeled_folder_dataset(tmp_path / "empty")


def test_merged_unlabeled_images_keep_masks_only_when_all_have_them(tmp_path):
    (tmp_path / "u").mkdir()
    Image.fromarray(noise(8, 8)).save(tmp_path / "u" / "a.png")
    extra = unlabeled_folder_dataset(tmp_path / "u")
    assert merge_unlabeled(extra) is extra
    both = merge_unlabeled(extra, extra.__class__("l", ["k"], [extra.image_paths[0]], [extra.image_paths[0]], 2))
    assert both.ids == ("u/a.png", "k") and both.mask_paths is None
    with pytest.raises(DatasetError, match="share ids"):
        merge_unlabeled(extra, extra)


# --- decoding: the pipeline gives load_img's pixels ---------------------------------------------


def test_load_img_keeps_the_high_byte_of_16_bit_grey(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(np.array([[0x1234, 0xFFFF, 0x00FF]], np.uint16)).save(path)
    np.testing.assert_array_equal(load_img(path)[0], [[0x12] * 3, [0xFF] * 3, [0x00] * 3])


def test_training_crops_of_every_format_are_load_imgs_pixels(tmp_path):
    files = write_mixed_formats(tmp_path / "mixed")
    dataset = unlabeled_folder_dataset(tmp_path / "mixed")
    assert len(dataset) == len(files)
    for path in dataset.image_paths:
        expected = load_img(path)
        one = dataset._take([dataset.image_paths.index(path)])
        # no scaling, no flip, a crop the image's size: the crop is the decoded image itself
        data = VOCGen(one, crop_size=expected.shape[:2], batch_size=1, scale_range=(1, 1), random_flip=False)
        crop = next(iter(data.unlabeled()))["image"][0].numpy()
        np.testing.assert_array_equal(crop, expected.astype(np.float32), err_msg=str(path))


# --- videos ------------------------------------------------------------------------------------


def write_video(path: Path, levels: list[int], size=(32, 48)) -> Path:
    """An MPEG-4 video whose frame i is uniformly grey at levels[i]."""
    av = pytest.importorskip("av")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.height, stream.width, stream.pix_fmt = *size, "yuv420p"
        stream.options = {"qscale": "1"}
        for level in levels:
            frame = av.VideoFrame.from_ndarray(np.full((*size, 3), level, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def test_video_frames_are_sampled_every_n_capped_and_written_once(tmp_path, monkeypatch):
    video = write_video(tmp_path / "clip.mp4", [20 * i for i in range(10)])
    frames = sample_frames(video, tmp_path / "cache", every=3, max_frames=3)
    assert [frame.name for frame in frames] == ["frame000000.png", "frame000003.png", "frame000006.png"]
    np.testing.assert_allclose([load_img(frame).mean() for frame in frames], [0, 60, 120], atol=3)

    import advseg_utils.video as video_module

    monkeypatch.setattr(video_module, "_decode", lambda *args: pytest.fail("decoded again"))
    assert sample_frames(video, tmp_path / "cache", every=3, max_frames=3) == frames
    monkeypatch.undo()
    assert len(sample_frames(video, tmp_path / "cache", every=4, max_frames=None)) == 3  # 0, 4, 8


def test_a_broken_video_and_a_missing_reader_name_the_file(tmp_path, monkeypatch):
    pytest.importorskip("av")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    with pytest.raises(DatasetError, match="broken.mp4: cannot decode the video"):
        sample_frames(broken, tmp_path / "cache", every=1, max_frames=None)
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ImportError, match="broken.mp4: reading frames from videos needs PyAV: pip install av"):
        sample_frames(broken, tmp_path / "cache", every=1, max_frames=None)


# --- the split file ----------------------------------------------------------------------------


SOURCES = UnlabeledSources(folders=("data/unlabeled",), video_every=15, video_max_frames=None, ids=("u/a.jpg", "u/v.mp4#000015"))


def test_the_split_file_records_the_unlabeled_sources_and_refuses_other_ones(tmp_path):
    path, names = tmp_path / "split.txt", [f"n{i}" for i in range(10)]
    assert get_or_create_split(path, names, 1.0, 0, SOURCES) == (sorted(names), [])
    assert load_unlabeled_sources(path) == SOURCES and load_split(path) == (sorted(names), [])
    assert get_or_create_split(path, names, 1.0, 0, SOURCES) == (sorted(names), [])
    changes = {
        "folders": (dict(folders=("elsewhere",)), r"unlabeled folders \['data/unlabeled'\], not \['elsewhere'\]"),
        "sampling": (dict(video_every=5), "video_every=15, not video_every=5"),
        "images": (dict(ids=("u/a.jpg", "u/b.jpg")), r"hold 1 images it does not list \(e.g. \['u/b.jpg'\]\) and lack 1"),
        "none": (dict(folders=(), ids=()), r"unlabeled folders \['data/unlabeled'\], not \[\]"),
    }
    for change, message in changes.values():
        with pytest.raises(DatasetError, match=message):
            get_or_create_split(path, names, 1.0, 0, UnlabeledSources(**{**SOURCES.__dict__, **change}))
    assert get_or_create_split(path, names, 1.0, 0) == (sorted(names), [])  # a run that does not ask


def test_a_split_file_written_before_the_record_still_loads(tmp_path):
    old = tmp_path / "old.txt"  # the format as it was: no sources
    old.write_text("# advseg labeled/unlabeled split\n# fraction: 0.5\n# seed: 0\n[labeled]\na\n[unlabeled]\nb\n")
    assert load_split(old) == (["a"], ["b"]) and load_unlabeled_sources(old) == UnlabeledSources()
    assert get_or_create_split(old, ["a", "b"], 0.5, 0, UnlabeledSources()) == (["a"], ["b"])
    save_split(tmp_path / "plain.txt", ["a"], ["b"], 0.5, 0, UnlabeledSources())
    assert (tmp_path / "plain.txt").read_text() == old.read_text().replace("# seed: 0\n", "# seed: 0\n# labeled: 1\n# unlabeled: 1\n")


# --- configuration -----------------------------------------------------------------------------


def test_all_labels_with_semi_need_unlabeled_folders():
    with pytest.raises(ValueError, match="labeled_fraction < 1.*unlabeled_dirs"):
        ExperimentConfig(method="semi", labeled_fraction=1)
    config = ExperimentConfig(method="semi", labeled_fraction=1, unlabeled_dirs="data/mine")
    assert config.unlabeled_dirs == ("data/mine",) and config.split_path.name.endswith("+unlabeled.txt")
    with pytest.raises(ValueError, match="only method='semi' learns from unlabeled images"):
        ExperimentConfig(method="adversarial", unlabeled_dirs=("data/mine",))


# --- ten labeled images and a folder of unlabeled ones, end to end --------------------------------


def write_labeled_folder(root: Path, count: int = 10) -> None:
    """``count`` JPEG images of several sizes with index-PNG masks (classes 0..C-1)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        height, width = (24 + 4 * (i % 3), 28 + 6 * (i % 4))
        rows = np.arange(height)[:, None] * np.ones((1, width), int)
        mask = ((rows * C) // height).astype(np.uint8)  # C horizontal bands
        image = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]], np.uint8)[mask]
        Image.fromarray(image).save(root / "images" / f"img{i}.jpg", quality=95)
        Image.fromarray(mask).save(root / "masks" / f"img{i}.png")
    (root / "val.txt").write_text("img0\n")  # validation: one image, one shape to compile for


#: Checkpoint entries that are no training state: the object graph and the count of saves.
BOOKKEEPING = ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter")


class StopAfterFirstChunk(keras.callbacks.Callback):
    """An interruption: training stops once the first checkpoint is written."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = True


def test_ten_labeled_images_and_a_folder_of_mixed_unlabeled_ones_train_and_resume_exactly(tmp_path):
    write_labeled_folder(tmp_path / "mine")
    unlabeled = tmp_path / "unlabeled"
    write_mixed_formats(unlabeled)
    if _has_av():
        write_video(unlabeled / "clips" / "walk.mp4", [40 * (i % 6) for i in range(12)])
    config = ExperimentConfig(
        name="mine",
        method="semi",
        dataset="folder",
        data_dir=str(tmp_path / "mine"),
        folder_options=dict(num_classes=C, val=dict(list_file="val.txt")),
        labeled_fraction=1,
        unlabeled_dirs=(str(unlabeled),),
        video_every=5,
        video_max_frames=2,
        split_file=str(tmp_path / "split.txt"),
        backbone="mobilenet_v2",
        weights=None,
        freeze_batchnorm=False,
        discriminator="small",
        crop_size=32,
        batch_size=2,
        steps=4,
        checkpoint_every=2,
        semi_start=0,
        t_semi=0.0,
        precision="float32",
        tensorboard=False,
        checkpoint_dir=str(tmp_path / "run"),
    )

    # A corrupt, an empty and a truncated file are all named at once, before any training.
    bad = {"corrupt": unlabeled / "web" / "notes.png", "empty": unlabeled / "phone" / "empty.jpg",
           "truncated": unlabeled / "scans" / "cut.png"}  # fmt: skip
    bad["corrupt"].write_text("not an image")
    bad["empty"].write_bytes(b"")
    Image.fromarray(noise(40, 40)).save(bad["truncated"])
    bad["truncated"].write_bytes(bad["truncated"].read_bytes()[:300])
    train_set, _ = load_datasets(config)
    split_ids(config, train_set)  # the notebook's order: the split is written before validation
    with pytest.raises(DatasetError, match="3 problems found") as error:
        validate_dataset(load_unlabeled(config))
    for path in bad.values():
        assert f"{path}: cannot decode the image" in str(error.value)
    for path in bad.values():
        path.unlink()

    extra = validate_dataset(load_unlabeled(config))
    assert len(train_set) == 10 and len(extra) == 8 + 2 * _has_av()
    labeled_ids, unlabeled_ids = split_ids(config, train_set)  # no checkpoint yet: the record follows
    assert (len(labeled_ids), unlabeled_ids) == (10, [])
    assert load_unlabeled_sources(config.split_path).ids == extra.ids
    batch = next(iter(training_stream(config, train_set, labeled_ids, unlabeled_ids)(0)))
    assert "unlabeled_label" not in batch  # no pseudo-label accuracy without true labels

    # The run a user starts from the notebook or a script, never interrupted: it trains and
    # reports the share of unlabeled pixels D's confidence keeps for the semi loss.
    uninterrupted = run_experiment(config.replace(checkpoint_dir=str(tmp_path / "other")))
    assert uninterrupted["iteration"] == 4 and uninterrupted["labeled_images"] == 10
    assert uninterrupted["extra_unlabeled_images"] == len(extra)
    kept = uninterrupted["history"]["semi_ratio"]
    assert len(kept) == 2 and all(0.0 < share <= 1.0 for share in kept)  # t_semi=0: some pixels kept
    assert "pseudo_acc_all" not in uninterrupted["history"]

    # Interrupted after the first checkpoint, then resumed into a model whose every variable
    # was overwritten (as a new process would have other ones): it ends where the other did.
    model = build_model(config, train_set)
    train_model(model, config, train_set, labeled_ids, unlabeled_ids, verbose=0, callbacks=[StopAfterFirstChunk()])
    assert int(model.iteration.numpy()) == 2
    for variable in model.variables:
        variable.assign(tf.cast(tf.random.uniform(variable.shape, 0, 3), variable.dtype))
    history = train_model(model, config, train_set, labeled_ids, unlabeled_ids, verbose=0)
    assert history == uninterrupted["history"]
    final = [tf.train.load_checkpoint(str(tmp_path / run)) for run in ("run", "other")]
    names, other_names = (sorted(n for n in f.get_variable_to_shape_map() if not n.startswith(BOOKKEEPING)) for f in final)
    assert names == other_names
    assert len(names) > 100 and final[0].get_tensor("iteration/.ATTRIBUTES/VARIABLE_VALUE") == 4
    for name in names:  # G, D, both optimisers' moments and counters
        np.testing.assert_array_equal(final[0].get_tensor(name), final[1].get_tensor(name), err_msg=name)

    # Resuming with other images in the unlabeled folder is refused, naming what changed.
    Image.fromarray(noise(20, 20)).save(unlabeled / "new.png")
    with pytest.raises(DatasetError, match=r"split.txt: existing split does not match.*'unlabeled/new.png'"):
        run_experiment(config)


def _has_av() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True
