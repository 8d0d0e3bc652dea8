"""Workers see the driver's interpreter: the same prefix, flags, site set-up, sys.path, working
directory and environment (a library that looks for its files under sys.prefix works there too)."""
import os
import site
import sys
import sysconfig

import pytest

import shoal
from helpers import run_argv

pytestmark = pytest.mark.timeout(120)


def interpreter():
    return {
        "prefix": sys.prefix,
        "exec_prefix": sys.exec_prefix,
        "base_prefix": sys.base_prefix,
        "flags": tuple(sys.flags),
        "paths": sysconfig.get_paths(),
        "site_packages": site.getsitepackages() if hasattr(site, "getsitepackages") else None,
        "user_site": site.ENABLE_USER_SITE,
        "site_imported": "site" in sys.modules,
        "pth_imports": sorted(m for m in ("_distutils_hack",) if m in sys.modules),
        "exit_builtin": hasattr(__import__("builtins"), "exit"),
        "path": list(sys.path),
        "cwd": os.getcwd(),
        "env": os.environ.get("SHOAL_TEST_ENV"),
    }


def test_workers_run_the_drivers_interpreter(make_process_executor, monkeypatch):
    monkeypatch.setenv("SHOAL_TEST_ENV", "seen")
    ex = make_process_executor(max_workers=1)
    assert sys.prefix != sys.base_prefix or True  # in a virtualenv (make test's .venv) this matters most
    driver = interpreter()
    worker = ex.submit(interpreter).result(timeout=30)
    assert worker == driver


def test_a_driver_without_site_gives_workers_without_site(tmp_path):
    (tmp_path / "probe_site.py").write_text(
        "import sys\n"
        "def probe():\n"
        "    return sys.flags.no_site, sys.prefix, 'exit' in dir(__import__('builtins'))\n")
    script = tmp_path / "nosite.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "import shoal, probe_site\n"
        "if __name__ == '__main__':\n"
        "    with shoal.Executor(1) as ex:\n"
        "        print(ex.submit(probe_site.probe).result(timeout=30), probe_site.probe())\n")
    out = run_argv(["-S", str(script)]).stdout.strip()
    worker, driver = out.rsplit(") (", 1)
    assert worker + ")" == "(" + driver and driver.startswith("1,"), out
