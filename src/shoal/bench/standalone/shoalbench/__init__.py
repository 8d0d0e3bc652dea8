"""shoalbench: the child side of `python -m shoal bench`, importable without the shoal engine.

This package sits on its own sys.path entry (``shoal/bench/standalone``) so that the
peers' worker processes can unpickle the benchmark functions without importing
``shoal`` (which would charge shoal's import time and memory to every peer).
Nothing here imports ``shoal`` except the ``shoal`` adapter in ``systems``.
"""
