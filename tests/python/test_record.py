"""The record types of shoal._core (cpp/bind/record.hpp): Pool.take() and WorkerChannel.recv()
hand over plain tuples (the fast path for unpacking), and Completion and Frame name and
document their items, in the same order, and are made from those tuples."""

import pickle
import sys

import pytest

import shoal
from shoal import _core
from shoal.process import driver
from shoal.process.protocol import decode_reply

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
def test_made_from_the_plain_tuple_it_names(record, fields):
    values = tuple(range(len(fields)))
    r = record(values)
    assert r == values and tuple(r) == values and len(r) == len(fields)
    assert [getattr(r, name) for name in fields] == list(values)
    assert pickle.loads(pickle.dumps(r)) == r
    with pytest.raises(TypeError):
        record(values[:-1])  # every item, no fewer


@pytest.mark.parametrize("method, record", [(_core.Pool.take, _core.Completion),
                                            (_core.Pool.take_ready, _core.Completion),
                                            (_core.WorkerChannel.recv, _core.Frame),
                                            (_core.WorkerChannel.try_recv, _core.Frame)])
def test_each_hot_method_names_its_record(method, record):
    # Its docstring says where the names of the tuple's items are; the signature gives their
    # types, which are the record's (the stubs come from both).
    assert f"a plain tuple of {record.__name__}'s items in its order" in method.__doc__
    items = record.__nb_signature__.split("(", 1)[1].rsplit(")", 1)[0]
    assert items in method.__nb_signature__[0][0]


def test_completions_arrive_as_plain_tuples_with_what_the_record_names(monkeypatch):
    seen = []
    deliver = driver._deliver_batch

    def spy(state, record):  # [batch, index of its next completion]
        seen.extend(record[0][record[1]:])
        return deliver(state, record)

    monkeypatch.setattr(driver, "_deliver_batch", spy)
    with shoal.Executor(1, backend="process") as ex:
        assert ex.submit(pow, 3, 4).result(timeout=30) == 81
        ex.submit(print, "hello from the worker").result(timeout=30)
    assert seen and all(type(c) is tuple and len(c) == len(COMPLETION) for c in seen)
    named = [_core.Completion(c) for c in seen]
    results = [c for c in named if c.kind == _core.COMPLETION_RESULT]
    assert [decode_reply(c.payload, c.buffers) for c in results] == [81, None]
    assert all(c.flags == 0 and c.status_text == "" and c.buffers is None for c in results)
    output = [c for c in named if c.kind == _core.COMPLETION_OUTPUT]
    assert b"".join(c.payload for c in output) == b"hello from the worker\n"


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
