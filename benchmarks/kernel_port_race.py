"""Why TCP kernels fail to start in a busy sweep, and that IPC kernels do not.

    PYTHONPATH=. python benchmarks/kernel_port_race.py [--timeout 20] [--procs 6] [--starts 25]

jupyter_client picks a kernel's TCP ports by binding port 0 and releasing it, and the
kernel binds them a second or more later; a socket opened by any other process in
between may hold one of them.

1. Deterministic: each channel's port is taken before the kernel starts (the race lost)
   and the script prints what the client sees: for the shell, stdin and control ports
   the kernel exits ("Kernel died before replying to kernel_info"); for the iopub port
   it stays alive and silent until the start timeout ("Kernel didn't respond in N
   seconds", the error of the flaky sweep test); a taken heartbeat port goes unnoticed.
2. In the wild: ``--procs`` processes each start and stop ``--starts`` kernels at the same
   time, first over TCP (jupyter_client's default), then over IPC sockets in private
   folders (what ``clipkit.experiments.sweep.kernels`` does), and the failed starts are counted
   (papermill's start timeout, 60 s). Losses are rare (about 1 in 150 starts here), so
   a run may show none.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import socket
import tempfile
import time

from jupyter_client import KernelManager


def start(km: KernelManager, timeout: float) -> tuple[str, float]:
    """Start the kernel, wait for it, shut it down: ("ready" or the error, seconds)."""
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
    return outcome, time.perf_counter() - t0


def ipc_manager(folder: str) -> KernelManager:
    return KernelManager(kernel_name="python3", transport="ipc",
                         ip=os.path.join(folder, "kernel"))


def starts(args: tuple[str, int]) -> list[tuple[str, float]]:
    """``n`` kernel starts in a row over ``transport`` (one process of the crowd)."""
    transport, n = args
    out = []
    for _ in range(n):
        if transport == "tcp":
            out.append(start(KernelManager(kernel_name="python3"), 60.0))
            continue
        folder = tempfile.mkdtemp(prefix="clipkit-kernel-")
        try:
            out.append(start(ipc_manager(folder), 60.0))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=20.0,
                        help="start timeout in part 1, seconds (papermill's: 60)")
    parser.add_argument("--procs", type=int, default=6, help="processes starting kernels")
    parser.add_argument("--starts", type=int, default=25, help="kernel starts per process")
    args = parser.parse_args()

    print("1. one port taken before the kernel binds it", flush=True)
    for channel in ("shell", "stdin", "control", "iopub", "hb"):
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))  # another process's socket on the chosen port
        blocker.listen()
        km = KernelManager(kernel_name="python3", cache_ports=False)
        setattr(km, f"{channel}_port", blocker.getsockname()[1])
        outcome, seconds = start(km, args.timeout)
        print(f"   tcp, {channel} port taken: {outcome} after {seconds:.1f} s", flush=True)
        blocker.close()

    print(f"2. {args.procs} processes x {args.starts} kernel starts at once", flush=True)
    ctx = multiprocessing.get_context("spawn")
    for transport in ("tcp", "ipc"):
        with ctx.Pool(args.procs) as pool:
            runs = pool.map(starts, [(transport, args.starts)] * args.procs)
        flat = [r for run in runs for r in run]
        failed = sorted({o for o, _ in flat if o != "ready"})
        print(f"   {transport}: {len(flat)} starts, {sum(o != 'ready' for o, _ in flat)} failed "
              f"{failed}, slowest {max(s for _, s in flat):.1f} s", flush=True)


if __name__ == "__main__":
    main()
