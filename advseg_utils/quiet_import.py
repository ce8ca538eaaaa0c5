"""TensorFlow imported without its C++ start-up messages.

Importing TensorFlow and probing for devices print lines such as "Could not find cuda drivers
on your machine" or "failed call to cuInit" straight to file descriptor 2, before any logging
setting applies; in a notebook they land in the cells' output. They are captured here, and shown
only if the import itself fails. ``TF_CPP_MIN_LOG_LEVEL`` defaults to 2 (errors only) for the
C++ logging after start-up; a value the user set is kept.
"""
from __future__ import annotations

import os
import sys
import tempfile


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow and probes its devices with file descriptor 2 captured (once per process)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        stderr_fd = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # the CUDA probe prints here; the runtime stays uninitialised
        except BaseException:
            os.dup2(stderr_fd, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(stderr_fd, 2)
            os.close(stderr_fd)
