"""python -m shoal report (shoal/_report.py): the page renders in a real headless Chromium."""
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib

import pytest

import shoal

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def nap(s):
    time.sleep(s)
    return s


def _chromium():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _png_pixels(path):
    """The decompressed scanlines of a PNG (filter bytes included): enough to tell blank from not."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, idat = 8, b""
    while at < len(data):
        (n,), kind = struct.unpack(">I", data[at:at + 4]), data[at + 4:at + 8]
        if kind == b"IDAT":
            idat += data[at + 8:at + 8 + n]
        at += 12 + n
    return zlib.decompress(idat)


def _report(tmp_path, backend):
    with shoal.Executor(2, backend=backend) as ex:
        with ex.trace() as t:
            list(ex.map(nap, [0.005] * 20, chunksize=2))
    run = tmp_path / "run.json"
    t.save(run)
    out = tmp_path / "report.html"
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    subprocess.run([sys.executable, "-m", "shoal", "report", str(run), "-o", str(out)], check=True, env=env,
                   timeout=60)
    return t, out


@pytest.mark.timeout(120)
def test_report_is_self_contained(tmp_path, backend):
    t, out = _report(tmp_path, backend)
    page = out.read_text()
    assert "<script src" not in page and "<link" not in page and "http://" not in page and "https://" not in page
    data = json.loads(page.split('id="trace-data">')[1].split("</script>")[0].replace("<\\/", "</"))
    assert data["workers"] == t.data()["workers"]
    for part in ('id="timeline"', 'id="utilisation"', 'id="split"', 'id="memory"', 'id="slowest"', 'id="advice"'):
        assert part in page


@pytest.mark.timeout(120)
def test_report_renders_one_timeline_row_per_worker_in_chromium(tmp_path, backend):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed and could not be (run `make chromium` as root, or "
                    "apt-get install chromium)")
    t, out = _report(tmp_path, backend)
    workers = t.data()["workers"]
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", out.as_uri()], capture_output=True, text=True,
                         timeout=90).stdout
    assert f'data-rows-drawn="{len(workers)}"' in dom
    assert dom.count('class="row-label"') == len(workers)
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, *flags, "--window-size=1000,900", f"--screenshot={shot}", out.as_uri()],
                   capture_output=True, timeout=90)
    assert shot.exists() and shot.stat().st_size > 5000
    pixels = _png_pixels(shot)
    assert len(set(pixels[::97])) > 20  # many colours: the page drew, it is not one blank colour


@pytest.mark.timeout(120)
def test_demo_ends_by_pointing_to_the_report_of_its_own_run(capsys):
    from shoal._demo import _traced_run

    _traced_run(2)
    out = capsys.readouterr().out
    report = [line.split(": ", 1)[1] for line in out.splitlines() if "report of this run:" in line]
    assert report and os.path.getsize(report[0]) > 1000
    assert "shoal trace:" in out and "python -m shoal report" in out
    shutil.rmtree(os.path.dirname(report[0]))
