"""The process backend: a zygote per driver process forks the workers; tasks and results move
through shared-memory rings and the arena (the C++ core).

    driver.py        the driver side: ProcessBackend, the function table, result delivery
    protocol.py      every payload the driver and the workers exchange, both ends side by side
    worker.py        the loop a worker runs
    agents.py        the agent transport (driver side); agent_worker.py: the worker side
    zygote.py        the zygote's main loop

Nothing is imported here: a worker imports worker.py alone, never the driver side.
"""
