"""USS and PSS summed over a process tree (psutil), as a snapshot or a sampled peak."""
# Shared memory that no process maps (a tmpfs file or a memfd kept only as an fd)
# is in nobody's PSS, so a system could hide memory there. A snapshot therefore
# also reads the machine-wide Shmem of /proc/meminfo and the tree's Pss_Shmem; the
# difference between their changes since a baseline is added to "pss" as
# "unmapped shared memory" (see ``Snapshot.footprint_above``).
import os
import threading
import time
from dataclasses import dataclass

import psutil

MB = 1024 * 1024


@dataclass
class Snapshot:
    uss: int = 0            # bytes, summed over the tree
    pss: int = 0            # bytes, summed over the tree
    pss_shmem: int = 0      # bytes of the tree's PSS that are shared-memory pages
    shmem_global: int = 0   # /proc/meminfo Shmem, bytes
    processes: int = 0

    def footprint_above(self, base):
        """PSS growth plus growth of shared memory that no process in the tree maps, bytes."""
        unmapped = (self.shmem_global - base.shmem_global) - (self.pss_shmem - base.pss_shmem)
        return (self.pss - base.pss) + max(0, unmapped)


def _meminfo_shmem():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("Shmem:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _pss_shmem(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss_Shmem:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree(root_pid=None):
    """The process ``root_pid`` (default: this one) and all its descendants."""
    root = psutil.Process(root_pid or os.getpid())
    try:
        return [root] + root.children(recursive=True)
    except psutil.Error:
        return [root]


def snapshot(processes, include_shmem=True):
    """Sums ``memory_full_info`` over ``processes``; ones that exited are skipped."""
    snap = Snapshot(shmem_global=_meminfo_shmem() if include_shmem else 0)
    for p in processes:
        try:
            info = p.memory_full_info()
        except (psutil.Error, OSError):
            continue
        snap.uss += info.uss
        snap.pss += info.pss
        if include_shmem:
            snap.pss_shmem += _pss_shmem(p.pid)
        snap.processes += 1
    return snap


def per_process(pids):
    """{pid: (uss, pss)} in bytes for the given pids."""
    out = {}
    for pid in pids:
        try:
            info = psutil.Process(pid).memory_full_info()
        except (psutil.Error, OSError):
            continue
        out[pid] = (info.uss, info.pss)
    return out


class PeakSampler:
    """Samples the tree every ``interval`` s in a background thread; keeps the peaks.

    Use as a context manager around the measured region. ``peak_footprint`` and
    ``peak_uss`` are bytes above ``base``. The process list is refreshed every
    fifth sample, so a process living under ~50 ms may be missed.
    """

    def __init__(self, base, interval=0.01):
        self.base = base
        self.interval = interval
        self.peak_footprint = 0
        self.peak_uss = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shoalbench-mem", daemon=True)

    def _take(self, procs):
        snap = snapshot(procs)
        self.peak_footprint = max(self.peak_footprint, snap.footprint_above(self.base))
        self.peak_uss = max(self.peak_uss, snap.uss - self.base.uss)
        self.samples += 1

    def _run(self):
        procs = tree()
        i = 0
        while not self._stop.is_set():
            if i % 5 == 0:
                procs = tree()
            self._take(procs)
            i += 1
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._take(tree())  # the end state counts too
        return False
