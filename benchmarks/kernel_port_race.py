"""Why TCP kernels fail to start in a busy sweep: what a kernel does when a port is taken.

    PYTHONPATH=. python benchmarks/kernel_port_race.py [--timeout 20]

jupyter_client picks a kernel's TCP ports by binding port 0 and releasing it, and the
kernel binds them a second or more later; a socket opened by any other process in
between may hold one of them. This script takes each channel's port before the kernel
starts (the race lost, deterministically) and prints what the client sees: for the
shell, stdin and control ports the kernel exits ("Kernel died before replying to
kernel_info"); for the iopub port it stays alive and silent until the start timeout
("Kernel didn't respond in N seconds", the error of the flaky sweep test); a taken
heartbeat port goes unnoticed. Then it starts a kernel the way ``clipkit.kernels`` does,
on IPC sockets in a private folder, where there is no port to take.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import tempfile
import time

from jupyter_client import KernelManager


def start(km: KernelManager, timeout: float) -> str:
    """Start the kernel, wait for it, shut it down; what happened, in words."""
    t0 = time.perf_counter()
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=timeout)
        outcome = "ready"
    except RuntimeError as exc:
        outcome = f"RuntimeError: {exc} (kernel process alive: {km.is_alive()})"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return f"{outcome} after {time.perf_counter() - t0:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=20.0,
                        help="the client's start timeout in seconds (papermill's: 60)")
    args = parser.parse_args()
    for channel in ("shell", "stdin", "control", "iopub", "hb"):
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))  # another process's socket on the chosen port
        blocker.listen()
        km = KernelManager(kernel_name="python3", cache_ports=False)
        setattr(km, f"{channel}_port", blocker.getsockname()[1])
        print(f"tcp, {channel} port taken: {start(km, args.timeout)}", flush=True)
        blocker.close()
    folder = tempfile.mkdtemp(prefix="clipkit-kernel-")
    try:
        km = KernelManager(kernel_name="python3", transport="ipc",
                           ip=os.path.join(folder, "kernel"))
        print(f"ipc (clipkit.kernels): {start(km, args.timeout)}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
