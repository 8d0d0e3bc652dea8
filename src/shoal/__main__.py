"""python -m shoal demo | bench ... | run script.py [args] | report run.json [-o report.html]"""
import sys

USAGE = ("usage: python -m shoal demo | bench [--quick] [--only ID,...] [--json PATH] [--markdown PATH]\n"
         "       python -m shoal run script.py [args ...] | run -m module [args ...]\n"
         "         runs the script with multiprocessing.Pool, get_context(...).Pool and\n"
         "         concurrent.futures.ProcessPoolExecutor built on shoal's workers (shoal.patch_pools)\n"
         "       python -m shoal report run.json [-o report.html]\n"
         "         an HTML page of a trace saved with Trace.save (see docs/observability.md)")


def run(argv):
    """Runs a script (or ``-m module``) as ``__main__`` with shoal.patch_pools() in force."""
    import os
    import runpy

    if not argv or argv[0] in ("-h", "--help") or (argv[0] == "-m" and len(argv) < 2):
        print(USAGE)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    from ._patch import patch_pools

    patch_pools()
    if argv[0] == "-m":
        sys.argv = [argv[1]] + argv[2:]
        sys.path.insert(0, os.getcwd())
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        script = argv[0]
        sys.argv = list(argv)
        sys.path.insert(0, os.path.dirname(os.path.abspath(script)))  # as `python script.py` does
        runpy.run_path(script, run_name="__main__")
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv else "help"
    if command == "demo":
        from ._demo import main as demo
        return demo(argv)
    if command == "bench":
        from .bench.runner import main as bench
        return bench(argv)
    if command == "run":
        return run(argv)
    if command == "report":
        from ._report import main as report
        return report(argv)
    print(USAGE)
    return 0 if command in ("help", "-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main())
