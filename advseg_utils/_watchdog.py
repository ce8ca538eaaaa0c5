"""Ends a worker that waits too long for its cluster (run as a script by advseg_utils.cluster).

A separate process, because the worker's own threads cannot run while TensorFlow blocks its
main thread (it holds the interpreter lock), and stdlib only, so that it starts at once:

    python _watchdog.py PID TIMEOUT_S WORKER_INDEX ADDRESS... (the worker's own address first)
"""
import os
import signal
import socket
import sys
import time


def accepts_connections(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
            return True
    except (OSError, ValueError):
        return False


def main(pid: int, timeout_s: float, index: int, own: str, *peers: str) -> None:
    time.sleep(timeout_s)
    silent = [address for address in peers if not accepts_connections(address)] or list(peers)
    print(
        f"worker {index} of {len(peers) + 1} ({own}): the cluster did not form within {timeout_s:g} s; "
        f"waited for {', '.join(silent)} (start every worker with the same TF_CONFIG cluster, check the "
        "addresses and the firewall, or raise ADVSEG_CLUSTER_TIMEOUT)",
        file=sys.stderr,
        flush=True,
    )
    os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:])
