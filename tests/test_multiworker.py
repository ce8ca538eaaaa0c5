"""Training across workers: two worker processes on the loopback interface (CPU only) train each
method like one process at the same global batch, only the chief writes the run folder, a run
whose worker was killed resumes from its newest checkpoint to the same weights, and a worker
left alone gives up in bounded time naming the address it waited for.

Each worker imports TensorFlow (seconds); every process started here is killed and reaped.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from advseg_utils.cluster import CLUSTER_TIMEOUT_ENV, cluster_task, loopback_tf_configs, wait_for_workers
from advseg_utils.datasets import sample_dataset
from advseg_utils.runner import restore_latest
from advseg_utils.runtime import SMOKE_ENV

sys.path.insert(0, str(Path(__file__).parent))
import multiworker_worker as worker  # noqa: E402

pytestmark = pytest.mark.multiworker
METHODS = ("baseline", "adversarial", "semi")
WORKER = str(Path(__file__).parent / "multiworker_worker.py")
REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 420  # per cluster run: generous, this machine's two cores are often shared


def start_cluster(run_root: Path, out: Path, *args: str, configs=None, wait_s=300) -> list[subprocess.Popen]:
    """Worker processes (by default a loopback cluster of two) running multiworker_worker.py."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3", CLUSTER_TIMEOUT_ENV: str(wait_s)}
    env.pop(SMOKE_ENV, None)
    # The workers import this checkout's package, not whichever copy is installed (a script's
    # own folder, tests/, is all that Python puts on the path).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return [
        subprocess.Popen(
            [sys.executable, WORKER, "--run-root", str(run_root), "--out", str(out), *args],
            env={**env, "TF_CONFIG": config}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for config in configs or loopback_tf_configs(2)
    ]  # fmt: skip


def finish(processes: list[subprocess.Popen], timeout_s: float = TIMEOUT_S) -> list[tuple[int, str]]:
    """(exit status, stderr) of each process, killing whichever is still running at the deadline."""
    return [(status, stderr) for status, _, stderr in wait_for_workers(processes, timeout_s)]


def assert_succeeded(results):
    for index, (code, stderr) in enumerate(results):
        assert code == 0, f"worker {index} exited with {code}:\n{stderr[-3000:]}"


def recorded(out: Path, name: str):
    weights = np.load(out / f"{name}.npz")
    return [weights[key] for key in sorted(weights.files, key=lambda k: int(k.split("_")[1]))], json.loads(
        (out / f"{name}.json").read_text()
    )


def assert_same_run(actual: Path, expected: Path, name: str, expected_name: str):
    weights, record = recorded(actual, name)
    reference, reference_record = recorded(expected, expected_name)
    assert record["iteration"] == reference_record["iteration"] == worker.STEPS
    assert len(weights) == len(reference)
    for w, r in zip(weights, reference):
        np.testing.assert_allclose(w, r, rtol=1e-4, atol=2e-6)
    assert record["history"].keys() == reference_record["history"].keys()
    for key, values in record["history"].items():
        assert values == pytest.approx(reference_record["history"][key], rel=1e-4, abs=1e-6), key


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """Every method trained in this process (the default strategy) at the same global batch."""
    root = tmp_path_factory.mktemp("one")
    (root / "run").mkdir(), (root / "out").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(SMOKE_ENV, raising=False)  # as in the workers (start_cluster)
        for method in METHODS:
            worker.train_and_record(method, root / "run", root / "out", tf.distribute.get_strategy())
    return root


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """Every method trained by two loopback workers, the first time until worker 1 is killed at the
    start of the semi run's iteration 3 (after its checkpoint at 2), then by a restarted cluster:
    baseline and adversarial are complete by then, semi resumes."""
    root = tmp_path_factory.mktemp("two")
    run, out = root / "run", root / "out"
    run.mkdir(), out.mkdir()
    processes = start_cluster(run, out, "--die-at", "3", "--die-worker", "1")
    try:
        code = processes[1].wait(timeout=TIMEOUT_S)
    finally:
        processes[0].kill()  # the chief waits for it in a collective: restart the whole cluster
        _, (_, worker_log) = finish(processes, timeout_s=30)
    assert code == -signal.SIGKILL, f"worker 1 exited with {code}:\n{worker_log[-3000:]}"
    killed = {
        "latest": tf.train.latest_checkpoint(str(run / "semi")),
        "recorded": sorted(p.name for p in out.glob("semi-*")),
    }
    restarted = start_cluster(run, out)
    assert_succeeded(finish(restarted))
    return root, killed, {str(processes[0].pid), str(restarted[0].pid)}


@pytest.mark.parametrize("method", METHODS)
def test_two_workers_train_like_one_process(one_process, two_workers, method):
    for index in (0, 1):  # both workers end with the same weights, those of one process
        assert_same_run(two_workers[0] / "out", one_process / "out", f"{method}-worker{index}", f"{method}-worker0")


def test_a_killed_worker_and_a_restarted_cluster_resume_from_the_newest_checkpoint(two_workers):
    _, killed, _ = two_workers
    assert killed["latest"].endswith("ckpt-2") and killed["recorded"] == []  # killed mid-run
    # ... and test_two_workers_train_like_one_process[semi] shows the resumed run ends like
    # the uninterrupted one in one process.


def test_only_the_chief_writes_the_run_folder(two_workers):
    run, _, chief_pids = two_workers
    run = run / "run"
    assert sorted(p.name for p in run.iterdir()) == ["adversarial", "baseline", "semi", "split.txt"]  # no scratch left
    for method in METHODS:
        files = sorted(str(p.relative_to(run / method)) for p in (run / method).rglob("*") if p.is_file())
        events = [f for f in files if "tfevents" in f]  # events.out.tfevents.<time>.<host>.<pid>.<n>.v2
        assert events and {f.split(".")[-3] for f in events} <= chief_pids, f"{method}: not all from the chief: {events}"
        assert sorted(set(files) - set(events)) == [
            "checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index",
            "ckpt-4.data-00000-of-00001", "ckpt-4.index", "history.json",
        ]  # fmt: skip
        assert tf.train.latest_checkpoint(str(run / method)).endswith("ckpt-4")


def test_a_partial_checkpoint_is_never_restored(one_process):
    run = one_process / "run" / "baseline"
    config = worker.tiny_config("baseline", one_process / "run")
    model = worker.tiny_model(config, sample_dataset("train").num_classes, tf.distribute.get_strategy())
    for name in ("ckpt-6.index", "ckpt-6.data-00000-of-00001"):  # a save cut short: no state file update
        (run / name).write_bytes(b"partial")
    (run / "ckpt-8_temp").mkdir()
    assert restore_latest(model, str(run)) == worker.STEPS


def test_a_worker_alone_gives_up_naming_the_address_it_waited_for(tmp_path):
    configs = loopback_tf_configs(2)
    absent = cluster_task({"TF_CONFIG": configs[0]}).addresses[1]
    started = time.monotonic()
    ((code, stderr),) = finish(start_cluster(tmp_path, tmp_path, configs=configs[:1], wait_s=5), timeout_s=TIMEOUT_S)
    assert code == -signal.SIGKILL, stderr[-2000:]
    assert f"did not form within 5 s; waited for {absent}" in stderr
    assert time.monotonic() - started < TIMEOUT_S / 2  # the watchdog's kill, not finish()'s at its deadline


def test_tf_config_names_this_task_among_the_chief_and_workers():
    cluster = {"chief": ["a:1"], "worker": ["b:2", "c:3"]}
    task = cluster_task({"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}})})
    assert task.addresses == ("a:1", "b:2", "c:3") and task.index == 2 and task.peers == ("a:1", "b:2")
    one = json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}})
    assert cluster_task({"TF_CONFIG": one}) is None and cluster_task({}) is None  # one machine
    with pytest.raises(ValueError, match="TF_CONFIG='not json'"):
        cluster_task({"TF_CONFIG": "not json"})


def test_waiting_for_workers_kills_the_one_still_running_at_the_deadline_and_keeps_the_others():
    talker = subprocess.Popen([sys.executable, "-c", "print('done')"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    started = time.monotonic()
    (talked, out, _), (slept, _, _) = wait_for_workers([talker, sleeper], timeout_s=5)
    assert (talked, out) == (0, "done\n")
    assert slept == -signal.SIGKILL and sleeper.poll() is not None and time.monotonic() - started < 60
