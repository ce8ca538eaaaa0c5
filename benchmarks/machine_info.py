"""One line naming the machine a benchmark ran on, shared by every benchmark script."""
from __future__ import annotations

import os
import platform

import keras
import tensorflow as tf


def machine() -> str:
    """Host, processor, CPU count, GPUs if any, and the Python, TensorFlow and Keras versions."""
    gpus = tf.config.list_physical_devices("GPU")
    devices = ", ".join(tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus)
    return (
        f"{platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
        f"{', ' + devices if gpus else ''}), Python {platform.python_version()}, "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}"
    )
