"""TensorFlow without its log noise: the C++ start-up messages at import, and the converters'.

Importing TensorFlow and probing for devices print lines such as "Could not find cuda drivers
on your machine" or "failed call to cuInit" straight to file descriptor 2, before any logging
setting applies; in a notebook they land in the cells' output. So do the SavedModel writer's
and the TFLite converter's INFO lines. :func:`tensorflow_quietly` captures file descriptor 2
and lowers TensorFlow's Python logger for the span of a block, and shows what it captured only
if the block fails. ``TF_CPP_MIN_LOG_LEVEL`` defaults to 2 (errors only) for the C++ logging
after start-up; a value the user set is kept.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def tensorflow_quietly() -> Iterator[None]:
    """Runs a block with file descriptor 2 captured and TensorFlow's Python logger at ERROR; what
    was captured is written to standard error only when the block raises."""
    sys.stderr.flush()
    tf_logger = logging.getLogger("tensorflow")
    level = tf_logger.level
    tf_logger.setLevel(logging.ERROR)
    with tempfile.TemporaryFile() as captured:
        stderr_fd = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(stderr_fd, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(stderr_fd, 2)
            os.close(stderr_fd)
            tf_logger.setLevel(level)


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow and probes its devices quietly (once per process)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return
    with tensorflow_quietly():
        import tensorflow as tf

        tf.config.list_physical_devices()  # the CUDA probe prints here; the runtime stays uninitialised
