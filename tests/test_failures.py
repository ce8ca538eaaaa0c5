"""Real-world failures: corrupt files, NaN losses, unwritable or full checkpoint folders, and
what must never happen with downloaded or user-supplied files (unpickling, evaluation).

Each failure must stop with a message naming the file or folder at fault, and must leave the
last good checkpoint (or saved generator) as it was.
"""
import builtins
import errno
import os
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers
from PIL import Image

import advseg_utils.download as download
from advseg_utils.datasets import folder_dataset, validate_dataset
from advseg_utils.file_utils import DatasetError, load_img, load_mask
from advseg_utils.runner import restore_latest, save_generator, train
from advseg_utils.method import Baseline
from advseg_utils.voc_gen import VOCGen

REPO = Path(__file__).resolve().parents[1]
C = 3  # classes
NO_SPACE = os.strerror(errno.ENOSPC)


# --- corrupt and truncated files ----------------------------------------------------------


def write_pair(root: Path, name: str, size=(32, 32)) -> tuple[Path, Path]:
    """A random JPEG image and an index-PNG mask (classes 0..C-1) under root/images, root/masks."""
    rng = np.random.default_rng(len(name))
    image_path, mask_path = root / "images" / f"{name}.jpg", root / "masks" / f"{name}.png"
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(image_path)
    Image.fromarray(rng.integers(0, C, size, dtype=np.uint8)).save(mask_path)
    return image_path, mask_path


#: How a file that cannot be read is reported (a cut JPEG may lose part of its header).
UNREADABLE = r"{path}: cannot (decode the image, it is corrupt or truncated|read the image header)"


def truncate(path: Path) -> Path:
    """Cut a file in half: the header survives, the pixel data does not."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def dataset_with_bad_files(root: Path):
    """Four items: two good, one with a truncated JPEG image, one with a truncated PNG mask."""
    for name in ("good_a", "bad_image", "bad_mask", "good_b"):
        image_path, mask_path = write_pair(root, name)
        if name == "bad_image":
            truncate(image_path)
        if name == "bad_mask":
            truncate(mask_path)
    return folder_dataset(root, num_classes=C)


@pytest.mark.parametrize(
    "loader, kind", [(load_img, "image"), (load_mask, "mask")], ids=["jpeg_image", "png_mask"]
)
def test_a_truncated_file_is_an_error_naming_it(tmp_path, loader, kind):
    image_path, mask_path = write_pair(tmp_path, "frame")
    path = truncate(image_path if kind == "image" else mask_path)
    with pytest.raises(DatasetError, match=rf"{re.escape(str(path))}: cannot decode the image, it is corrupt or truncated"):
        loader(path)


def test_validate_dataset_names_every_truncated_file(tmp_path):
    with pytest.raises(DatasetError) as raised:
        validate_dataset(dataset_with_bad_files(tmp_path))
    message = str(raised.value)
    assert "2 problems found" in message
    for path in (tmp_path / "images" / "bad_image.jpg", tmp_path / "masks" / "bad_mask.png"):
        assert re.search(UNREADABLE.format(path=re.escape(str(path))), message), message
    assert "good_a" not in message and "good_b" not in message


def test_drop_invalid_drops_exactly_the_bad_items_and_reports_them(tmp_path):
    dataset = dataset_with_bad_files(tmp_path)
    with pytest.warns(UserWarning, match=r"dropped 2 of 4 items with problems") as warned:
        kept = validate_dataset(dataset, drop_invalid=True)
    message = str(warned[0].message)
    for path in (tmp_path / "images" / "bad_image.jpg", tmp_path / "masks" / "bad_mask.png"):
        assert re.search(UNREADABLE.format(path=re.escape(str(path))), message), message
    assert dataset.ids == ("bad_image", "bad_mask", "good_a", "good_b")
    assert kept.ids == ("good_a", "good_b")
    assert kept.image_paths == (tmp_path / "images" / "good_a.jpg", tmp_path / "images" / "good_b.jpg")
    assert kept.mask_paths == (tmp_path / "masks" / "good_a.png", tmp_path / "masks" / "good_b.png")
    assert (kept.num_classes, kept.name) == (dataset.num_classes, dataset.name)
    # What is left reads end to end; the original fails on its first bad item.
    assert len(list(VOCGen(kept).evaluation())) == 2
    with pytest.raises(tf.errors.OpError):
        list(VOCGen(dataset).evaluation())


def test_drop_invalid_also_drops_missing_and_mismatched_items(tmp_path):
    for name in ("good", "missing_mask", "wrong_size"):
        write_pair(tmp_path, name, size=(32, 32))
    (tmp_path / "masks" / "missing_mask.png").unlink()
    write_pair(tmp_path / "other", "wrong_size", size=(16, 32))
    (tmp_path / "other" / "masks" / "wrong_size.png").replace(tmp_path / "masks" / "wrong_size.png")
    (tmp_path / "list.txt").write_text("good\nmissing_mask\nwrong_size\n")
    dataset = folder_dataset(tmp_path, num_classes=C, list_file="list.txt")
    with pytest.warns(UserWarning, match=r"dropped 2 of 3 items") as warned:
        assert validate_dataset(dataset, decode=False, drop_invalid=True).ids == ("good",)
    assert "missing_mask.png: file not found" in str(warned[0].message)
    assert "wrong_size.png: mask is 16x32 (HxW) but its image wrong_size.jpg is 32x32" in str(warned[0].message)


def test_drop_invalid_on_a_valid_dataset_returns_it_silently(tmp_path, recwarn):
    for name in ("a", "b"):
        write_pair(tmp_path, name)
    dataset = folder_dataset(tmp_path, num_classes=C)
    assert validate_dataset(dataset, drop_invalid=True) is dataset
    assert not recwarn.list


def test_drop_invalid_with_nothing_left_is_an_error(tmp_path):
    truncate(write_pair(tmp_path, "only")[0])
    with pytest.raises(DatasetError, match=r"1 problems found, no item left after dropping them:\s+\S*only\.jpg"):
        validate_dataset(folder_dataset(tmp_path, num_classes=C), drop_invalid=True)


# --- training failures: NaN, unwritable folder, full disk ----------------------------------


def make_model(seed: int = 0) -> Baseline:
    """A compiled Baseline on a one-convolution generator; weights depend on ``seed``."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    logits = layers.Conv2D(C, 3, padding="same")(layers.Rescaling(1 / 127.5, offset=-1)(inputs))
    model = Baseline(keras.Model(inputs, logits), num_classes=C)
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9))
    return model


def stream(bad_from: int | None = None, bad_value: float = np.nan):
    """``make_dataset(step)`` for train(): fixed random batches whose images turn into
    ``bad_value`` from iteration ``bad_from`` on."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    labels = rng.integers(0, C, (2, 8, 8)).astype("int32")

    def make_dataset(step):
        def batch_at(i):
            bad = bad_from is not None and i >= bad_from
            return {"image": tf.where(bad, bad_value, images), "label": labels}

        return tf.data.Dataset.range(step, 10**9).map(batch_at)

    return make_dataset


class WeightSnapshots(keras.callbacks.Callback):
    """G's weights at every epoch end, by iteration: what each checkpoint should hold."""

    def __init__(self):
        super().__init__()
        self.by_iteration = {}

    def on_epoch_end(self, epoch, logs=None):
        self.by_iteration[int(self.model.iteration.numpy())] = self.model.generator.get_weights()


def assert_same_weights(actual, expected):
    assert len(actual) == len(expected)
    for a, b in zip(actual, expected):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf], ids=["nan", "inf"])
def test_a_non_finite_loss_stops_training_and_the_last_good_checkpoint_restores_exactly(tmp_path, bad_value):
    run, snapshots = str(tmp_path / "run"), WeightSnapshots()
    with pytest.raises(FloatingPointError) as raised:
        train(make_model(), stream(bad_from=4, bad_value=bad_value), 8, run, checkpoint_every=2,
              callbacks=[snapshots], verbose=0)  # fmt: skip
    message = str(raised.value)
    assert re.search(r"loss\w* is (nan|inf) after iteration 5", message), message
    assert f"the newest checkpoint, {os.path.join(run, 'ckpt-4')}, is the last good state" in message
    assert tf.train.latest_checkpoint(run) == os.path.join(run, "ckpt-4")
    restored = make_model(seed=1)
    assert restore_latest(restored, run) == 4
    assert all(np.isfinite(w).all() for w in restored.generator.get_weights())
    assert_same_weights(restored.generator.get_weights(), snapshots.by_iteration[4])


def test_a_nan_loss_before_the_first_checkpoint_says_there_is_none(tmp_path):
    with pytest.raises(FloatingPointError, match="no checkpoint was written yet"):
        train(make_model(), stream(bad_from=0), 4, str(tmp_path), checkpoint_every=2, verbose=0)
    assert tf.train.latest_checkpoint(str(tmp_path)) is None


def never_called(step):
    raise AssertionError("training started")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders: chmod cannot make one")
def test_a_read_only_checkpoint_directory_fails_before_training(tmp_path):
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match=re.escape(str(read_only))):
            train(make_model(), never_called, 2, str(read_only), verbose=0)
    finally:
        read_only.chmod(0o755)


def test_a_checkpoint_directory_that_is_a_file_fails_before_training(tmp_path):
    # Unlike chmod, this fails for root too.
    not_a_folder = tmp_path / "checkpoints"
    not_a_folder.write_text("a file where the folder should be")
    model = make_model()
    with pytest.raises(PermissionError, match=rf"cannot write checkpoints to '{re.escape(str(not_a_folder))}'"):
        train(model, never_called, 2, str(not_a_folder), verbose=0)
    assert int(model.iteration.numpy()) == 0
    assert not_a_folder.read_text() == "a file where the folder should be"


def fail_data_write(monkeypatch):
    """The checkpoint's tensors start to reach the disk, which then is full (SaveV2 is the
    lowest-level write of tf.train.CheckpointManager)."""
    from tensorflow.python.ops import io_ops  # private: only this test depends on it

    def save_v2(prefix, *args, **kwargs):
        shard = Path(prefix.numpy().decode()).with_suffix(".data-00000-of-00001")
        shard.parent.mkdir(parents=True, exist_ok=True)
        shard.write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, NO_SPACE, str(shard))

    monkeypatch.setattr(io_ops, "save_v2", save_v2)


def fail_state_write(monkeypatch):
    """The checkpoint's data files are written, then the disk is full when the small state file
    naming the newest checkpoint is replaced (TensorFlow reports ENOSPC as ResourceExhausted)."""
    from tensorflow.python.checkpoint import checkpoint_management  # private: only this test depends on it

    def atomic_write_string_to_file(filename, contents, overwrite=True):
        Path(f"{filename}.tmp-interrupted").write_text(contents[: len(contents) // 2])
        raise tf.errors.ResourceExhaustedError(None, None, f"{filename}; {NO_SPACE}")

    monkeypatch.setattr(checkpoint_management.file_io, "atomic_write_string_to_file", atomic_write_string_to_file)


@pytest.mark.parametrize("fail", [fail_data_write, fail_state_write], ids=["data_files", "state_file"])
def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, fail):
    run, snapshots = str(tmp_path / "run"), WeightSnapshots()
    train(make_model(), stream(), 2, run, checkpoint_every=2, callbacks=[snapshots], verbose=0)
    fail(monkeypatch)
    with pytest.raises(OSError) as raised:
        train(make_model(), stream(), 4, run, checkpoint_every=2, verbose=0)
    message = str(raised.value)
    assert f"cannot write the checkpoint of iteration 4 to '{run}'" in message
    assert NO_SPACE in message and "is the disk full?" in message
    assert f"the newest checkpoint, {os.path.join(run, 'ckpt-2')}, is the last good state" in message
    monkeypatch.undo()  # space freed

    assert tf.train.get_checkpoint_state(run).model_checkpoint_path == os.path.join(run, "ckpt-2")
    restored = make_model(seed=1)
    assert restore_latest(restored, run) == 2
    assert_same_weights(restored.generator.get_weights(), snapshots.by_iteration[2])
    # The run then goes on from there.
    train(restored, stream(), 4, run, checkpoint_every=2, verbose=0)
    assert tf.train.latest_checkpoint(run) == os.path.join(run, "ckpt-4")


def fill_disk_while_writing(monkeypatch, folder: Path, ending: str, after_bytes: int = 1000):
    """Python's ``open`` (through which Keras writes a ``.keras`` file) gives, for the files in
    ``folder`` whose name ends with ``ending`` only, a file on which the disk is full after
    ``after_bytes`` bytes."""
    real_open = builtins.open

    class FullDiskFile:
        def __init__(self, file):
            self._file, self._written = file, 0

        def write(self, data):
            if self._written + len(data) > after_bytes:
                raise OSError(errno.ENOSPC, NO_SPACE)
            self._written += len(data)
            return self._file.write(data)

        def __getattr__(self, name):
            return getattr(self._file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self._file.close()

    def fake_open(file, mode="r", *args, **kwargs):
        opened = real_open(file, mode, *args, **kwargs)
        chosen = Path(os.fspath(file)).parent == folder and os.fspath(file).endswith(ending)
        return FullDiskFile(opened) if chosen and "w" in mode else opened

    monkeypatch.setattr(builtins, "open", fake_open)


def test_a_generator_save_interrupted_by_a_full_disk_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    generator, path = make_model().generator, tmp_path / "generator.keras"
    save_generator(generator, str(path))
    saved_weights, saved_bytes = generator.get_weights(), path.read_bytes()
    generator.set_weights([w + 1.0 for w in saved_weights])
    fill_disk_while_writing(monkeypatch, tmp_path, ".partial.keras")

    with pytest.raises(OSError, match=rf"cannot save the generator to '{re.escape(str(path))}' .*{NO_SPACE}"):
        save_generator(generator, str(path))
    monkeypatch.undo()
    assert path.read_bytes() == saved_bytes and list(tmp_path.iterdir()) == [path]  # no temporary file left
    assert_same_weights(keras.saving.load_model(path).get_weights(), saved_weights)


# --- security --------------------------------------------------------------------------------

#: Ways code can execute what a downloaded or user-supplied file contains.
UNSAFE_PATTERNS = {
    "pickle-like module": r"\b(import|from)\s+(pickle|cPickle|_pickle|dill|cloudpickle|marshal|shelve|joblib)\b",
    "pickle call": r"\b(pickle|cPickle|dill|cloudpickle|marshal|shelve|joblib)\.\w+",
    "eval": r"\beval\s*\(",
    "exec": r"\bexec\s*\(",
    "allow_pickle": r"\ballow_pickle\s*=\s*True",
    "yaml.load": r"\byaml\.(load|unsafe_load|full_load)\b",
    "keras safe_mode off": r"\bsafe_mode\s*=\s*False",
    "keras unsafe deserialization": r"\benable_unsafe_deserialization\b",
    "shell command": r"\bshell\s*=\s*True",
}


def unsafe_lines(text: str) -> list[str]:
    return [
        f"line {number}: {kind}: {line.strip()}"
        for number, line in enumerate(text.splitlines(), start=1)
        for kind, pattern in UNSAFE_PATTERNS.items()
        if re.search(pattern, line)
    ]


@pytest.mark.parametrize(
    "line",
    [
        "import pickle",
        "state = pickle.loads(data)",
        "value = eval(text)",
        "exec(code)",
        "arrays = np.load(path, allow_pickle=True)",
        "config = yaml.load(stream)",
        "model = keras.saving.load_model(path, safe_mode=False)",
        "keras.config.enable_unsafe_deserialization()",
        "subprocess.run(command, shell=True)",
    ],
)
def test_the_scan_finds_unsafe_code(line):
    assert unsafe_lines(line)


def test_the_scan_passes_safe_look_alikes():
    safe = "model.evaluate(x)\nnp.load(path)\nyaml.safe_load(s)\nkeras.saving.load_model(path)\n# never unpickled"
    assert unsafe_lines(safe) == []


#: The one module allowed to unpickle: the allow-list reader of PyTorch weights files, whose
#: refusals tests/test_pth.py checks (a crafted .pth that would run code is refused).
RESTRICTED_UNPICKLER = REPO / "advseg_utils" / "pth.py"


def test_the_weights_reader_unpickles_only_through_its_allow_list():
    text = RESTRICTED_UNPICKLER.read_text()
    assert "def find_class(self" in text and "(pickle.Unpickler):" in text
    assert not re.search(r"pickle\.loads?\(|pickle\.Unpickler\(", text)  # no unrestricted unpickler


def test_nothing_in_the_package_notebooks_or_scripts_unpickles_or_evaluates():
    sources = [
        *sorted(set((REPO / "advseg_utils").rglob("*.py")) - {RESTRICTED_UNPICKLER}),
        *sorted((REPO / "notebooks").glob("*.ipynb")),
        *sorted((REPO / "benchmarks").glob("*.py")),
        *sorted((REPO / "data").glob("*.py")),
    ]
    assert len(sources) > 10
    found = [f"{path.relative_to(REPO)}, {hit}" for path in sources for hit in unsafe_lines(path.read_text())]
    assert found == []


def test_downloads_prefer_https_and_verify_any_plain_http_fallback():
    url_lists = {name: value for name, value in vars(download).items() if name.endswith("_URLS")}
    assert {"VOC_URLS", "SBD_URLS"} <= set(url_lists)
    for name, urls in url_lists.items():
        assert urls[0].startswith("https://"), f"{name}: the first address is not https"
        if any(url.startswith("http://") for url in urls):
            assert getattr(download, name.replace("_URLS", "_MD5")), f"{name}: plain http without a checksum"
