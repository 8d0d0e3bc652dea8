"""examples/notebook.ipynb in a real IPython kernel (nbclient + ipykernel): functions and classes
defined in cells run on shoal's workers through submit, map, sweep, agents and shoal.Pool; worker
prints reach the cell's output; the progress bar renders; the kernel's interrupt stops a map and
the executor still answers the next cell in full; restarting the kernel (or killing it) leaves no process."""
import os
import pathlib
import re
import threading
import time

import pytest

from helpers import SRC, is_alive, wait_until

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
psutil = pytest.importorskip("psutil")

NOTEBOOK = pathlib.Path(__file__).resolve().parents[2] / "examples" / "notebook.ipynb"


def text_of(cell):
    """Everything the cell printed: streams, results, errors and displayed data."""
    parts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            parts.append(out["text"])
        elif out["output_type"] == "error":
            parts.append(f"{out['ename']}: {out['evalue']}")
        else:
            parts.extend(str(v) for v in out.get("data", {}).values())
    return "".join(parts)


@pytest.fixture
def kernel_env(monkeypatch):
    """The kernel imports this checkout's shoal."""
    monkeypatch.setenv("PYTHONPATH", SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))


def iopub_connected(kc, timeout=60):
    """Wait until a restarted kernel's output channel reaches this client, as a notebook front end
    does before it runs a cell. The client's IOPub subscription reconnects to the new kernel in
    the background; a message published before it is back is lost, and nbclient would then wait
    for the cell's output for ever (its wait for output blocks without a time limit)."""
    from queue import Empty

    kc.wait_for_ready(timeout=timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg_id = kc.kernel_info()  # the kernel publishes busy/idle for it on IOPub
        try:
            while True:
                msg = kc.get_iopub_msg(timeout=1)
                if msg["parent_header"].get("msg_id") == msg_id:
                    while True:  # drain the rest of this request's messages
                        try:
                            kc.get_iopub_msg(timeout=0.2)
                        except Empty:
                            return
        except Empty:
            continue
    raise AssertionError("the restarted kernel's output never reached the client")


@pytest.mark.timeout(240)
def test_the_example_notebook_in_a_real_kernel(kernel_env, tmp_path):
    from jupyter_client import KernelManager

    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit it cleared"
    km = KernelManager(kernel_name="python3")
    client = nbclient.NotebookClient(nb, km=km, timeout=120, resources={"metadata": {"path": str(tmp_path)}})
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            timer = None
            if "interrupt" in cell.metadata.get("tags", []):
                # The map takes ~10 s on two workers; the kernel's interrupt (SIGINT) comes at 2 s.
                timer = threading.Timer(2.0, km.interrupt_kernel)
                timer.start()
            try:
                client.execute_cell(cell, index)
            finally:
                if timer is not None:
                    timer.cancel()
        out = {i: text_of(c) for i, c in enumerate(nb.cells) if c.cell_type == "code"}
        every = "\n".join(out.values())
        kernel_pid = int(re.search(r"kernel pid: (\d+)", every).group(1))
        # The kernel's descendants: shoal's zygote and workers.
        procs = psutil.Process(kernel_pid).children(recursive=True)
        assert len(procs) >= 3, procs  # zygote + 2 workers at least

        assert "submit: 144" in every
        assert "map: [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in every
        printed = next(t for t in out.values() if "prints:" in t)
        assert all(f"worker says hello to {i}" in printed for i in range(3)), printed
        assert "sweep rows: 6" in every
        assert "agents: [1, 11, 21, 31]" in every
        bar = next(t for t in out.values() if "progress total:" in t)
        widget = any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
                     for c in nb.cells for o in c.get("outputs", []))
        assert widget or "2000/2000" in bar, bar  # tqdm's widget where ipywidgets exists, else text
        interrupted = next(t for i, t in out.items() if "interrupt" in nb.cells[i].metadata.get("tags", []))
        assert "KeyboardInterrupt" in interrupted, interrupted
        assert "after the interrupt, complete: True" in every
        assert "pool: [0, 1, 4, 9, 16] [0, 1]" in every
        assert "workers: 2" in every

        km.restart_kernel(now=False)  # what the notebook's "Restart kernel" does
        assert wait_until(lambda: not any(is_alive(p) for p in procs), timeout=20), \
            [p for p in procs if is_alive(p)]
        assert not is_alive(kernel_pid)

        # The restarted kernel works, and a kernel killed outright (now=True: SIGKILL, as when
        # it dies) leaves no process either: the zygote dies with it and takes the workers.
        cell = nbformat.v4.new_code_cell(
            "import os, shoal\nex = shoal.Executor(2)\nprint(os.getpid(), ex.submit(abs, -3).result())")
        nb.cells.append(cell)
        iopub_connected(client.kc)
        client.execute_cell(cell, len(nb.cells) - 1)
        pid, answer = text_of(cell).split()
        assert answer == "3"
        procs = psutil.Process(int(pid)).children(recursive=True)
        assert len(procs) >= 3, procs
        km.restart_kernel(now=True)
        assert wait_until(lambda: not any(is_alive(p) for p in procs), timeout=20), \
            [p for p in procs if is_alive(p)]
