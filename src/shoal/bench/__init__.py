"""shoal.bench: the benchmark suite behind `python -m shoal bench` (see runner.py and BENCHMARKS.md).

Layout: ``runner.py`` (command line, one child process per workload and system, fairness
rules), ``report.py`` (Markdown table, targets, plot). The child side lives in the
``shoalbench`` package under ``standalone/``, which never imports shoal itself, so
peers' workers can load the benchmark functions without loading the engine.
"""
