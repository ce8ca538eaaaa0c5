"""Training on several machines: the cluster ``TF_CONFIG`` describes, and each worker's role in it.

Every worker runs the same script with its own ``TF_CONFIG`` (the same ``cluster``, its own
``task``); :func:`~advseg_utils.runtime.get_strategy` then returns a
``tf.distribute.MultiWorkerMirroredStrategy``. Worker 0 (or the ``chief`` task, when the
cluster names one) is the chief: it alone writes the run folder (checkpoints, logs, history,
the split, the generator). The others write what ``tf.train.Checkpoint`` makes them write to a
scratch folder of their own (:func:`write_dir`), which they remove. All workers read the run
folder, so it must live on storage every worker can reach.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import tensorflow as tf

#: Seconds a worker waits for the whole cluster to answer before it gives up (overridable by
#: the environment variable of this name).
CLUSTER_TIMEOUT_ENV = "ADVSEG_CLUSTER_TIMEOUT"
DEFAULT_CLUSTER_TIMEOUT_S = 600.0


class ClusterTask(NamedTuple):
    """This process's place in the cluster ``TF_CONFIG`` describes."""

    addresses: tuple[str, ...]  # every training task's host:port, chief first
    index: int  # this task's position in ``addresses``

    @property
    def peers(self) -> tuple[str, ...]:
        return self.addresses[: self.index] + self.addresses[self.index + 1 :]


def cluster_task(environ=os.environ) -> ClusterTask | None:
    """This process's task when ``TF_CONFIG`` describes a cluster of several training tasks
    (``chief`` and ``worker`` jobs), else None."""
    text = environ.get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        config = json.loads(text)
        jobs = config.get("cluster", {})
        task_type, task_index = config["task"]["type"], int(config["task"]["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"TF_CONFIG={text!r} is not a cluster description ({error}); expected JSON like "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}'
        ) from error
    addresses = tuple(jobs.get("chief", [])) + tuple(jobs.get("worker", []))
    if len(addresses) < 2:
        return None
    if task_type not in ("chief", "worker"):
        raise ValueError(f"TF_CONFIG task type {task_type!r}: only 'chief' and 'worker' tasks train")
    offset = len(jobs.get("chief", [])) if task_type == "worker" else 0
    return ClusterTask(addresses, offset + task_index)


def multi_worker_strategy(task: ClusterTask, timeout_s: float | None = None) -> tf.distribute.Strategy:
    """A ``MultiWorkerMirroredStrategy`` over the cluster, once every worker has joined.

    TensorFlow waits for missing workers forever (ignoring SIGTERM meanwhile), so a watchdog
    process kills this one (SIGKILL) after ``timeout_s`` (default: ``$ADVSEG_CLUSTER_TIMEOUT`` or
    600 s), first printing to stderr which of the other workers' addresses did not answer.
    """
    timeout_s = float(os.environ.get(CLUSTER_TIMEOUT_ENV, DEFAULT_CLUSTER_TIMEOUT_S)) if timeout_s is None else timeout_s
    own = task.addresses[task.index]
    watchdog = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("_watchdog.py")), str(os.getpid()), str(timeout_s),
         str(task.index), own, *task.peers]
    )  # fmt: skip
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    finally:
        watchdog.kill()
        watchdog.wait()


def worker_count(strategy: tf.distribute.Strategy | None = None) -> int:
    """How many workers (machines, processes) ``strategy`` trains on: 1 unless multi-worker."""
    strategy = strategy or tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1
    spec = strategy.cluster_resolver.cluster_spec()
    return max(1, sum(spec.num_tasks(job) for job in ("chief", "worker") if job in spec.jobs))


def worker_index(strategy: tf.distribute.Strategy | None = None) -> int:
    """This worker's position (0 is the chief) under ``strategy``; without one, as ``TF_CONFIG``
    says (what :func:`~advseg_utils.runtime.get_strategy` will make of it)."""
    if strategy is None:
        task = cluster_task()
        return 0 if task is None else task.index
    if worker_count(strategy) == 1:
        return 0
    resolver = strategy.cluster_resolver
    chiefs = resolver.cluster_spec().num_tasks("chief") if "chief" in resolver.cluster_spec().jobs else 0
    return resolver.task_id + (chiefs if resolver.task_type == "worker" else 0)


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process writes the run folder (always, on one machine); ``strategy`` as in
    :func:`worker_index`."""
    return worker_index(strategy) == 0


def write_dir(directory: str, strategy: tf.distribute.Strategy | None = None) -> str:
    """Where this worker writes what every worker must write (e.g. checkpoints: saving is
    collective): ``directory`` on the chief, a scratch folder beside it on the others."""
    if is_chief(strategy):
        return directory
    directory = os.path.normpath(directory)
    name = f".{os.path.basename(directory)}-worker{worker_index(strategy)}-scratch"
    return os.path.join(os.path.dirname(directory), name)


def remove_scratch(directory: str, strategy: tf.distribute.Strategy | None = None) -> None:
    """Removes this worker's scratch folder for ``directory`` (nothing on the chief)."""
    scratch = write_dir(directory, strategy)
    if scratch != directory and tf.io.gfile.exists(scratch):
        tf.io.gfile.rmtree(scratch)


def loopback_tf_configs(count: int) -> list[str]:
    """``TF_CONFIG`` values for a cluster of ``count`` workers on this machine (127.0.0.1, free
    ports), one per worker: to try multi-worker training, or test it, on one machine."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        addresses = [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]
    finally:
        for s in sockets:
            s.close()
    return [
        json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})
        for index in range(count)
    ]


def wait_for_workers(processes: list[subprocess.Popen], timeout_s: float) -> list[tuple[int, str | None, str | None]]:
    """(exit status, stdout, stderr) of each worker process started with ``loopback_tf_configs``,
    waiting at most ``timeout_s`` for all of them together. A worker still running at the
    deadline is killed (a negative status), and every process is reaped, also when waiting is
    interrupted, so that no worker outlives its caller holding a port."""
    deadline = time.monotonic() + timeout_s
    results = []
    try:
        for process in processes:
            try:
                stdout, stderr = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                stdout, stderr = process.communicate()
            results.append((process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return results
