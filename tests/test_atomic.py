"""advseg_utils.atomic: a write replaces its target only when it completes, and leaves nothing
else behind either way."""
import pytest

from advseg_utils.atomic import atomic_path, write_text_atomically


def test_a_completed_write_replaces_the_file_and_leaves_no_temporary_one(tmp_path):
    target = tmp_path / "out" / "split.txt"  # its folder is created
    write_text_atomically(target, "old\n")
    write_text_atomically(str(target), "new\n")
    assert target.read_text() == "new\n" and list(target.parent.iterdir()) == [target]


def test_a_failed_write_leaves_the_previous_file_and_no_temporary_one(tmp_path):
    target = tmp_path / "mask.png"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as temporary:
            temporary.write_bytes(b"half of it")
            assert target.read_bytes() == b"previous"  # not visible yet
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"previous" and list(tmp_path.iterdir()) == [target]


def test_a_folder_is_renamed_into_place_and_removed_on_failure(tmp_path):
    target = tmp_path / "export"
    with atomic_path(target) as temporary:
        (temporary / "variables").mkdir(parents=True)
        (temporary / "saved_model.pb").write_bytes(b"graph")
    assert (target / "saved_model.pb").read_bytes() == b"graph" and list(tmp_path.iterdir()) == [target]

    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "other") as temporary:
            (temporary / "variables").mkdir(parents=True)
            raise KeyboardInterrupt  # an interruption cleans up too
    assert list(tmp_path.iterdir()) == [target]


def test_temporary_names_are_hidden_unique_and_end_with_the_suffix(tmp_path):
    target = tmp_path / "generator.keras"
    with atomic_path(target, suffix=".partial.keras") as first, atomic_path(target, suffix=".partial.keras") as second:
        assert first != second and first.parent == second.parent == tmp_path
        assert first.name.startswith(".generator.keras.") and first.name.endswith(".partial.keras")
        first.write_text("first")
        second.write_text("second")
    assert target.read_text() == "first"  # the outer block ends last: its rename wins


def test_a_remote_path_goes_through_tensorflows_file_systems():
    import tensorflow as tf

    folder = "ram://atomic-test/run"  # TensorFlow's in-memory file system stands in for gs://
    write_text_atomically(f"{folder}/history.json", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(f"{folder}/history.json") as temporary:
            assert isinstance(temporary, str) and temporary.startswith(f"{folder}/.history.json.")
            with tf.io.gfile.GFile(temporary, "w") as f:
                f.write("half")
            raise RuntimeError("lost the mount")
    assert tf.io.gfile.listdir(folder) == ["history.json"]
    write_text_atomically(f"{folder}/history.json", "new")
    with tf.io.gfile.GFile(f"{folder}/history.json") as f:
        assert f.read() == "new" and tf.io.gfile.listdir(folder) == ["history.json"]
