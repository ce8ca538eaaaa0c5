"""Where the package runs: environment switches, Colab, devices and precision, the working folder.

* ``ADVSEG_SMOKE`` / ``ADVSEG_DEMO`` (:func:`smoke_mode`, :func:`demo_mode`) and the throw-away
  run folders of such runs (:func:`temporary_run_dir`);
* Colab (:func:`in_colab`) and the reader's own image, uploaded there (:func:`image_to_segment`);
* :func:`project_dir`, where data, splits and runs go by default: the working folder, never the
  installed package;
* the distribution strategy (:func:`get_strategy`), the precision (:func:`configure_precision`)
  and a one-line report of the devices (:func:`accelerator_report`).
"""
from __future__ import annotations

import atexit
import glob
import os
import shutil
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from advseg_utils.cluster import cluster_task, is_chief, multi_worker_strategy, worker_count, worker_index
from advseg_utils.datasets import SegDataset
from advseg_utils.file_utils import load_img

SMOKE_ENV = "ADVSEG_SMOKE"
DEMO_ENV = "ADVSEG_DEMO"
#: Smoke runs live in ``<temp>/advseg-smoke-<name>-<random>-<pid>``.
SMOKE_PREFIX = "advseg-smoke-"
#: Longest side an uploaded image is shrunk to before segmentation (keeps memory bounded).
MAX_IMAGE_SIDE = 1024


# --- environment switches and folders --------------------------------------------------------


def smoke_mode() -> bool:
    """True when ``ADVSEG_SMOKE`` asks for the smoke configuration."""
    return _env_flag(SMOKE_ENV)


def demo_mode() -> bool:
    """True when ``ADVSEG_DEMO`` asks for the demo configuration (``ADVSEG_SMOKE`` wins over it)."""
    return _env_flag(DEMO_ENV) and not smoke_mode()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def in_colab() -> bool:
    """True inside a Google Colab runtime."""
    return "COLAB_RELEASE_TAG" in os.environ or "google.colab" in sys.modules


def project_dir() -> Path:
    """Where data, splits and runs go by default: the working folder, or the clone of this
    project that it lies in (a notebook's kernel starts in ``notebooks/``; its data then lands
    in the clone's ``data/``). Never the installed package's own folder, which may be read-only
    site-packages (``pip install .``, a wheel)."""
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "advseg_utils" / "__init__.py").is_file():
            return folder
    return cwd


def temporary_run_dir(name: str) -> Path:
    """A fresh temporary folder named after this process, removed at exit. Jupyter kernels are
    often killed rather than left to exit, so the folders of processes that are gone are
    removed here too (smoke runs write tens of megabytes of checkpoints)."""
    temp = Path(tempfile.gettempdir())
    if os.name == "posix":  # os.kill(pid, 0) only asks whether the process exists on POSIX
        for stale in temp.glob(f"{SMOKE_PREFIX}*"):
            pid = stale.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _process_exists(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{SMOKE_PREFIX}{name}-", suffix=f"-{os.getpid()}"))
    atexit.register(shutil.rmtree, run_dir, ignore_errors=True)
    return run_dir


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


# --- the reader's own image ----------------------------------------------------------------------


def image_to_segment(path: str | os.PathLike | None, fallback: SegDataset) -> tuple[np.ndarray, str]:
    """(RGB uint8 image, where it came from): the file at ``path``; with no path, an upload in
    Colab, else (and always in smoke mode) the first image of ``fallback``. Images larger than
    :data:`MAX_IMAGE_SIDE` are shrunk, keeping their aspect ratio."""
    if smoke_mode() or (path is None and not in_colab()):
        path, source = fallback.image_paths[0], f"a sample image ({fallback.name})"
    elif path is None:
        from google.colab import files  # only in Colab

        uploaded = files.upload()  # saves the files in the working folder
        if not uploaded:
            raise ValueError("no file was uploaded: run the cell again and choose an image")
        path = next(iter(uploaded))
        source = f"your upload {path}"
    else:
        source = f"your image {path}"
    image = load_img(path)
    scale = MAX_IMAGE_SIDE / max(image.shape[:2])
    if scale < 1:
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    return image, source


# --- devices and precision -----------------------------------------------------------------


def get_strategy() -> tf.distribute.Strategy:
    """A MultiWorkerMirroredStrategy when ``TF_CONFIG`` describes a cluster of several workers
    (:mod:`advseg_utils.cluster`), a TPUStrategy on a (Colab/Kaggle) TPU, a MirroredStrategy on
    several GPUs, else the default strategy (one device)."""
    task = cluster_task()
    if task is not None:
        return multi_worker_strategy(task)
    resolver = _tpu_resolver()
    if resolver is not None:
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _tpu_resolver():
    """The TPU cluster resolver when this machine has a TPU, else None."""
    if os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_NAME"):  # a TPU node
        return tf.distribute.cluster_resolver.TPUClusterResolver()
    if glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"):  # a TPU VM's chips
        try:
            return tf.distribute.cluster_resolver.TPUClusterResolver(tpu="local")
        except (ValueError, RuntimeError, tf.errors.OpError):
            return None
    return None


def configure_precision(policy: str = "auto", strategy: tf.distribute.Strategy | None = None) -> str:
    """Sets Keras's global dtype policy (call before building the networks) and returns it.

    ``"auto"``: ``mixed_bfloat16`` under a TPUStrategy, ``mixed_float16`` when a GPU is
    present, ``float32`` otherwise. Losses are computed in float32 whatever the policy, and
    :meth:`SegmentationTrainer.compile` adds loss scaling under ``mixed_float16``. XLA is a separate
    switch: ``model.compile(..., jit_compile=True)`` (Keras's default "auto" uses it on GPUs).
    """
    if policy == "auto":
        if isinstance(strategy, tf.distribute.TPUStrategy):
            policy = "mixed_bfloat16"
        elif tf.config.list_logical_devices("GPU"):
            policy = "mixed_float16"
        else:
            policy = "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def accelerator_report(strategy: tf.distribute.Strategy) -> str:
    """One line naming the devices training will use (and, across machines, which worker this is)."""
    if worker_count(strategy) > 1:
        local = strategy.num_replicas_in_sync // worker_count(strategy)
        devices = f"{local} GPU(s)" if tf.config.list_physical_devices("GPU") else "the CPU"
        return (
            f"worker {worker_index(strategy)} of {worker_count(strategy)} ({'the chief' if is_chief(strategy) else 'not the chief'}), "
            f"training on {devices}: {strategy.num_replicas_in_sync} replica(s) in all (MultiWorkerMirroredStrategy)"
        )
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return f"TPU with {strategy.num_replicas_in_sync} cores (TPUStrategy)"
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name) for gpu in gpus]
        return f"{len(gpus)} GPU(s): {', '.join(names)} ({type(strategy).__name__}, {strategy.num_replicas_in_sync} replica(s))"
    hint = " (in Colab: Runtime > Change runtime type > GPU)" if in_colab() else ""
    return f"no GPU or TPU: training runs on the CPU, slowly{hint}"
