"""Progress bars: map/starmap(progress=True) under every backend, and shoal._progress.Progress
(tqdm when installed, else the built-in text or notebook bar)."""

import io
import sys
import types

import pytest

import shoal
from shoal._progress import Progress, progress_for


def square(x):
    return x * x


def add(a, b):
    return a + b


# --- map / starmap ---------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_map_progress_leaves_results_unchanged_and_draws_on_stderr(executor, capfd):
    xs = list(range(300))
    assert list(executor.map(square, xs, progress=True)) == [x * x for x in xs]
    err = capfd.readouterr().err
    assert "map" in err and "300/300" in err


@pytest.mark.timeout(60)
def test_map_progress_unordered_and_unknown_length(executor, capfd):
    out = executor.map(square, iter(range(100)), ordered=False, progress=True)
    assert sorted(out) == [x * x for x in range(100)]
    err = capfd.readouterr().err
    assert "100" in err and "/100" not in err  # a count, no total


@pytest.mark.timeout(60)
def test_starmap_progress(executor, capfd):
    pairs = [(i, 2 * i) for i in range(50)]
    assert list(executor.starmap(add, pairs, progress=True)) == [3 * i for i in range(50)]
    assert "50/50" in capfd.readouterr().err


@pytest.mark.timeout(60)
def test_map_without_progress_writes_nothing(executor, capfd):
    assert list(executor.map(square, range(50))) == [x * x for x in range(50)]
    assert capfd.readouterr().err == ""


class Counter:
    def __init__(self):
        self.n = 0
        self.closed = False

    def update(self, n=1):
        self.n += n


@pytest.mark.timeout(60)
def test_map_updates_the_callers_bar_and_leaves_it_open(executor):
    bar = Counter()
    assert list(executor.map(square, range(120), progress=bar)) == [x * x for x in range(120)]
    assert bar.n == 120
    assert list(executor.map(square, range(30), progress=bar)) == [x * x for x in range(30)]
    assert bar.n == 150


@pytest.mark.timeout(60)
def test_map_bar_closes_when_a_task_fails(executor, capfd):
    def fail_at_5(x):
        if x == 5:
            raise ValueError("five")
        return x

    with pytest.raises(ValueError, match="five"):
        list(executor.map(fail_at_5, range(10), progress=True))
    assert "map" in capfd.readouterr().err


@pytest.mark.timeout(60)
def test_map_rejects_a_bad_progress_argument(executor):
    with pytest.raises(TypeError, match="progress must be"):
        executor.map(square, range(3), progress="yes")


# --- the bar itself --------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.timeout(30)
def test_text_bar_in_a_terminal_redraws_in_place():
    out = FakeTerminal()
    with Progress(total=4, desc="work", kind="text", file=out, min_interval=0) as bar:
        for _ in range(4):
            bar.update()
    text = out.getvalue()
    assert text.count("\r") == 6  # the first draw, 4 updates, the final state
    assert text.endswith("\n")
    last = text.rstrip("\n").split("\r")[-1]
    assert last.startswith("work: 100%|") and "| 4/4 [" in last and "task/s]" in last


@pytest.mark.timeout(30)
def test_text_bar_in_a_log_writes_few_lines():
    out = io.StringIO()
    bar = Progress(total=1000, desc="log", kind="text", file=out, log_interval=60)
    for _ in range(1000):
        bar.update()
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # the first draw and the final one, not 1000
    assert "1000/1000" in lines[-1] and "\r" not in out.getvalue()


@pytest.mark.timeout(30)
def test_text_bar_time_left_and_rate():
    bar = Progress(total=100, desc="", kind="text", file=io.StringIO())
    bar._start -= 10.0  # ten seconds ago
    bar.n = 25
    text = bar.text()
    assert text.startswith(" 25%|")
    assert "[00:10<00:30, 2.5 task/s]" in text
    slow = Progress(total=None, desc="x", unit="run", kind="text", file=io.StringIO())
    slow._start -= 20.0
    slow.n = 4
    assert slow.text() == "x: 4 run [00:20, 5.0 s/run]"


@pytest.mark.timeout(30)
def test_update_after_close_is_ignored_and_close_is_idempotent():
    out = io.StringIO()
    bar = Progress(total=2, kind="text", file=out)
    bar.update(2)
    bar.close()
    size = len(out.getvalue())
    bar.update(5)
    bar.close()
    assert bar.n == 2 and len(out.getvalue()) == size


@pytest.mark.timeout(30)
def test_auto_falls_back_to_the_built_in_bar_without_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    out = io.StringIO()
    bar = Progress(total=3, desc="plain", file=out)
    assert bar.kind == "text"
    bar.update(3)
    bar.close()
    assert "3/3" in out.getvalue()


@pytest.mark.timeout(30)
def test_auto_uses_tqdm_when_installed():
    pytest.importorskip("tqdm")
    out = io.StringIO()
    bar = Progress(total=7, desc="tq", file=out)
    assert bar.kind == "tqdm"
    bar.update(7)
    bar.close()
    assert "7/7" in out.getvalue() and "tq" in out.getvalue()


@pytest.mark.timeout(30)
def test_built_in_notebook_bar_updates_one_display(monkeypatch):
    # A stand-in for IPython.display: records what the bar shows, nothing else.
    shown = []

    class Handle:
        def update(self, obj):
            shown.append(obj.data)

    def display(obj, display_id=False):
        assert display_id is True
        shown.append(obj.data)
        return Handle()

    class HTML:
        def __init__(self, data):
            self.data = data

    ipython = types.ModuleType("IPython")
    ipython_display = types.ModuleType("IPython.display")
    ipython_display.display, ipython_display.HTML = display, HTML
    ipython.display = ipython_display
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", ipython_display)
    bar = Progress(total=10, desc="nb", kind="notebook", min_interval=0)
    for _ in range(10):
        bar.update()
    bar.close()
    assert len(shown) == 12
    assert "<progress value='10' max='10'" in shown[-1] and "10/10" in shown[-1]


@pytest.mark.timeout(30)
def test_progress_for():
    assert progress_for(False, 10, "x") is None
    assert progress_for(None, 10, "x") is None
    counter = Counter()
    external = progress_for(counter, 10, "x")
    external.update(3)
    external.close()
    assert counter.n == 3
    with pytest.raises(TypeError):
        progress_for(1, 10, "x")
    with pytest.raises(ValueError):
        Progress(total=-1, kind="text", file=io.StringIO())
    with pytest.raises(ValueError):
        Progress(kind="fancy")
