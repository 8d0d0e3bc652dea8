"""The named records of shoal._core (cpp/bind/record.hpp): Pool.take()'s Completion and
WorkerChannel.recv()'s Frame unpack as tuples, in their documented order, and name their items."""

import pickle
import sys

import pytest

import shoal
from shoal import _core

COMPLETION = ("kind", "flags", "task_id", "aux", "status_kind", "status_value", "status_text", "worker",
              "payload", "buffers")
FRAME = ("kind", "flags", "task_id", "aux", "count", "payload", "refs")

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("record, fields", [(_core.Completion, COMPLETION), (_core.Frame, FRAME)])
def test_fields_in_order_with_docstrings(record, fields):
    assert issubclass(record, tuple)
    assert record.__module__ == "shoal._core"
    assert record.n_sequence_fields == record.n_fields == len(fields)
    if sys.version_info >= (3, 10):
        assert record.__match_args__ == fields
    assert record.__doc__
    for name in fields:
        assert getattr(record, name).__doc__, name


@pytest.mark.parametrize("record, fields", [(_core.Completion, COMPLETION), (_core.Frame, FRAME)])
def test_unpacks_like_the_tuple_it_replaces(record, fields):
    values = tuple(range(len(fields)))
    r = record(values)
    assert r == values and tuple(r) == values and len(r) == len(fields)
    *_, last = r
    assert last == values[-1]
    assert [getattr(r, name) for name in fields] == list(values)
    assert pickle.loads(pickle.dumps(r)) == r


def test_a_crash_is_reported_through_the_record():
    # The record's fields reach the user: status_text and status_value make the message.
    import os
    import signal

    with shoal.Executor(1, backend="process", retries=0) as ex:
        pid = ex.submit(os.getpid).result(timeout=30)
        crash = ex.submit(os.kill, pid, signal.SIGKILL)
        with pytest.raises(shoal.WorkerCrashedError, match="killed by signal 9") as info:
            crash.result(timeout=30)
    assert info.value.signal == signal.SIGKILL
