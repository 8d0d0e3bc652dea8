"""Fixtures shared by the shoal Python tests: one executor per backend, so that
every shared test body runs under "serial", "thread" and "process" (and under "mpi" inside an
MPI job: test_mpi_shared.py runs them there with SHOAL_TEST_BACKENDS=mpi)."""
import os

import pytest

import shoal

BACKENDS = tuple(os.environ.get("SHOAL_TEST_BACKENDS", "serial,thread,process").split(","))


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout(seconds): per-test time limit (pytest-timeout)")


def pytest_collection_modifyitems(config, items):
    # A hang is a failure, never a stuck CI (STYLE.md rule 11). pyproject.toml
    # sets the default limit; this keeps the rule when it is missing.
    configured = config.getoption("timeout", None) or config.getini("timeout")
    if configured:
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(60))


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Each backend in turn: the same test body must pass under all three."""
    return request.param


@pytest.fixture
def executor(backend):
    """A two-worker executor on the current backend, shut down after the test."""
    ex = shoal.Executor(max_workers=2, backend=backend)
    try:
        yield ex
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def make_process_executor():
    """Factory for process-backend executors (crash tests); all are shut down after the test."""
    made = []

    def make(**kwargs):
        kwargs.setdefault("max_workers", 2)
        ex = shoal.Executor(backend="process", **kwargs)
        made.append(ex)
        return ex

    try:
        yield make
    finally:
        for ex in made:
            ex.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(autouse=True)
def _start_method_unchanged():
    """A test (or a library it imports, as Mesa's batchrunner does) that changes multiprocessing's
    process-wide start method changes every later test that forks: it fails here, by name."""
    import multiprocessing

    before = multiprocessing.get_start_method()  # the platform's default unless a test set one
    yield
    after = multiprocessing.get_start_method()
    assert after == before, f"this test changed multiprocessing's start method from {before!r} to {after!r}"
