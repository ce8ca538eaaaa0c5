"""Importing advseg_utils keeps TensorFlow's C++ start-up messages out of notebooks, and shows
them when the import fails."""
import os
import re
import subprocess
import sys
from pathlib import Path

#: absl's C++ log line prefix, e.g. "I0000 00:00:1796168187.124365   10213 cudart_stub.cc:31] ..."
ABSL_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d", re.MULTILINE)


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**environment, **env}
    )


def test_importing_the_package_and_choosing_a_strategy_prints_no_cpp_log_lines():
    done = run_python("import os, advseg_utils; print(advseg_utils.get_strategy().num_replicas_in_sync, os.environ['TF_CPP_MIN_LOG_LEVEL'])")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "2"]  # one device; C++ logging after start-up: errors only
    assert not ABSL_LINE.search(done.stderr), done.stderr
    assert "absl::InitializeLog" not in done.stderr


def test_a_failing_tensorflow_import_shows_what_it_printed(tmp_path):
    fake = tmp_path / "tensorflow"
    fake.mkdir()
    (fake / "__init__.py").write_text("import os\nos.write(2, b'libcudart.so: cannot open shared object file\\n')\nraise ImportError('broken tensorflow')\n")
    done = run_python("import advseg_utils", PYTHONPATH=os.pathsep.join([str(tmp_path), str(Path(__file__).resolve().parents[1])]))
    assert done.returncode != 0
    assert "libcudart.so: cannot open shared object file" in done.stderr  # the captured output, replayed
    assert "ImportError: broken tensorflow" in done.stderr


def test_tensorflow_quietly_hides_what_a_block_prints_and_replays_it_when_the_block_fails(capfd):
    import logging

    import pytest

    from advseg_utils.quiet_import import tensorflow_quietly

    tf_logger = logging.getLogger("tensorflow")
    tf_logger.setLevel(logging.INFO)
    with tensorflow_quietly():
        os.write(2, b"I0000 00:00:1.0 converter.cc:1] fully_quantize: 0\n")
        logging.getLogger("tensorflow").info("Assets written to: somewhere")
    assert capfd.readouterr().err == ""
    assert tf_logger.level == logging.INFO  # restored after the block
    with pytest.raises(RuntimeError, match="conversion failed"):
        with tensorflow_quietly():
            os.write(2, b"the converter's own explanation\n")
            raise RuntimeError("conversion failed")
    assert "the converter's own explanation" in capfd.readouterr().err
