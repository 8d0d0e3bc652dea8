"""The package's structure: one backend seam, no import cycles, errors rooted in ShoalError."""
import ast
import concurrent.futures
import os
import re
import time

import pytest

import shoal
from shoal import _backend
from helpers import SRC

pytestmark = pytest.mark.timeout(120)

PACKAGE = os.path.join(SRC, "shoal")


def _modules():
    out = {}
    for folder, dirs, files in os.walk(PACKAGE):
        dirs[:] = [d for d in dirs if d not in ("bench", "__pycache__")]
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                name = os.path.relpath(path, SRC)[:-3].replace(os.sep, ".")
                out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return out


def _imports(name, path, modules):
    """Modules of the package that `name` imports, at any depth (function-level imports too)."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t not in (name, "shoal"))
    return found


def test_no_import_cycles():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}

    def reachable(start):
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
        return seen

    cycles = sorted(m for m in graph if m in reachable(m))
    assert cycles == [], f"modules on an import cycle: {cycles}"


def test_no_module_compares_a_backends_name():
    pattern = re.compile(r"backend\s*(==|!=|in)\s*[\"'(\[]|[\"'](process|thread|serial|mpi)[\"']\s*(==|!=)\s*\w*backend"
                         r"|\.name\s*(==|!=)\s*[\"'](process|thread|serial|mpi)[\"']")
    hits = []
    for path in _modules().values():
        for i, line in enumerate(open(path), 1):
            if pattern.search(line):
                hits.append(f"{os.path.relpath(path, SRC)}:{i}: {line.strip()}")
    assert hits == []


def test_no_module_imports_anothers_private_names():
    """`from .x import _name` reaches into another module's internals."""
    hits = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom) and node.module not in (None, "_pickle", "_signal") \
                    and not node.module.startswith("_"):
                hits += [f"{name}: from {node.module} import {a.name}" for a in node.names
                         if a.name.startswith("_") and a.name != "__version__"]
            if isinstance(node, ast.ImportFrom) and node.level and node.module:
                hits += [f"{name}: from .{node.module} import {a.name}" for a in node.names
                         if a.name.startswith("_") and not a.name.startswith("__")]
    assert hits == []


@pytest.mark.parametrize("name", _backend.BACKEND_NAMES)
def test_every_backend_implements_the_whole_interface(name):
    cls = _backend._TABLE[name]
    module, _, attr = cls.partition(":")
    import importlib

    backend_cls = getattr(importlib.import_module(module), attr)
    assert issubclass(backend_cls, _backend.Backend)
    assert not backend_cls.__abstractmethods__, f"{name} leaves {sorted(backend_cls.__abstractmethods__)} out"


def test_an_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="backend must be one of 'process', 'thread', 'serial'"):
        shoal.Executor(1, backend="gpu")


ERRORS = [shoal.WorkerCrashedError, shoal.InitializerError, shoal.PreloadError, shoal.ExecutorShutdownError,
          shoal.WorkersUnavailableError, shoal.ExecutorClosedError, shoal.InheritedExecutorError, shoal.AgentError, shoal.AgentsLostError,
          shoal.ArenaFull, shoal.ImportTimeExecutorError, shoal.CannotSendError,
          shoal.DeadlockError, shoal.TaskTimeoutError]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
def test_every_error_derives_from_shoal_error_and_its_stdlib_class(error):
    assert issubclass(error, shoal.ShoalError)
    stdlib = {shoal.ExecutorClosedError: RuntimeError, shoal.InheritedExecutorError: RuntimeError, shoal.AgentError: RuntimeError,
              shoal.AgentsLostError: RuntimeError, shoal.ArenaFull: MemoryError,
              shoal.ImportTimeExecutorError: RuntimeError, shoal.CannotSendError: TypeError,
              shoal.DeadlockError: RuntimeError, shoal.TaskTimeoutError: TimeoutError}
    assert issubclass(error, stdlib.get(error, concurrent.futures.BrokenExecutor))
    assert error.__doc__ and "Raised" in error.__doc__ or error is shoal.ArenaFull


def test_shoal_error_is_the_documented_root():
    assert shoal.ShoalError.__module__ == "shoal" and shoal.ShoalError.__name__ == "ShoalError"
    assert "ShoalError" in shoal.__all__


def test_submit_after_shutdown_raises_executor_closed(backend):
    ex = shoal.Executor(1, backend=backend)
    ex.shutdown()
    with pytest.raises(shoal.ExecutorClosedError, match="after shutdown"):
        ex.submit(abs, 1)
    with pytest.raises(RuntimeError):  # what concurrent.futures users catch
        ex.map(abs, [1])


def _sleep(s):
    time.sleep(s)
    return s


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_queued_tasks_of_a_killed_executor_fail_with_executor_shutdown(backend):
    ex = shoal.Executor(1, backend=backend)
    running = ex.submit(_sleep, 0.5)
    queued = [ex.submit(_sleep, 0) for _ in range(5)]
    time.sleep(0.2)
    ex.shutdown(wait=True, kill_workers=True)
    for f in queued:
        assert f.cancelled() or isinstance(f.exception(timeout=10), shoal.ExecutorShutdownError)
    assert running.done()


# Messages that match concurrent.futures' own (users compare them).

@pytest.mark.parametrize("bad", [0, -3])
def test_bad_max_workers_says_what_concurrent_futures_says(backend, bad):
    with pytest.raises(ValueError) as ours:
        shoal.Executor(bad, backend=backend)
    with pytest.raises(ValueError) as theirs:
        concurrent.futures.ProcessPoolExecutor(bad)
    assert str(ours.value) == str(theirs.value) == "max_workers must be greater than 0"


def test_closed_executor_says_what_concurrent_futures_says(backend):
    ours = shoal.Executor(1, backend=backend)
    ours.shutdown()
    theirs = concurrent.futures.ThreadPoolExecutor(1)
    theirs.shutdown()
    with pytest.raises(RuntimeError) as a:
        ours.submit(abs, 1)
    with pytest.raises(RuntimeError) as b:
        theirs.submit(abs, 1)
    assert str(a.value) == str(b.value)


def test_bad_chunksize_says_what_concurrent_futures_says(backend):
    with shoal.Executor(1, backend=backend) as ex:
        with pytest.raises(ValueError) as ours:
            ex.map(abs, [1], chunksize=0)
    with concurrent.futures.ProcessPoolExecutor(1) as pp:
        with pytest.raises(ValueError) as theirs:
            pp.map(abs, [1], chunksize=0)
    assert str(ours.value) == str(theirs.value)
