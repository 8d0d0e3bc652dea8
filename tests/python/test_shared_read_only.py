"""What the driver shares is read-only for real in the workers: a write through a C extension
(ctypes.memset) faults in the worker that made it, and nothing else changes."""
import ctypes

import numpy as np
import pytest

import shoal

pytestmark = pytest.mark.timeout(120)


def scribble(a):
    ctypes.memset(a.ctypes.data, 0x7F, a.nbytes)  # bypasses numpy's read-only flag
    return float(a[0])


def first(a):
    return float(a[0])


def test_a_worker_cannot_change_shared_data(make_process_executor):
    ex = make_process_executor(max_workers=1, retries=0)
    table = np.zeros(1 << 18)
    handle = shoal.share(table)
    with pytest.raises(shoal.WorkerCrashedError):
        ex.submit(scribble, handle).result(timeout=60)
    assert not handle.value.any()  # the driver's view is untouched
    assert ex.submit(first, handle).result(timeout=60) == 0.0  # and so is every other task's
