"""A trace in the Chrome trace event format (Perfetto's UI and chrome://tracing open it).

Layout: process 0 is the driver (its pickling and unpickling as slices); process ``w + 1``
is worker slot ``w``: its tasks as complete ("X") slices, the worker's unpickling of the
arguments and pickling of the result nested inside, its exits as instant ("i") events and its
resident memory as a counter ("C"). Timestamps are microseconds since the trace began. The
trace's own data rides along under ``shoalTrace`` (viewers ignore keys they do not know), so
``python -m shoal report`` can rebuild the summary from the file alone.
"""


def _us(s):
    return round(s * 1e6, 3)


def to_chrome(data):
    events = [{"ph": "M", "name": "process_name", "pid": 0, "tid": 0, "args": {"name": "driver"}},
              {"ph": "M", "name": "process_sort_index", "pid": 0, "tid": 0, "args": {"sort_index": 0}},
              {"ph": "M", "name": "thread_name", "pid": 0, "tid": 0, "args": {"name": "pickling"}}]
    pids = {int(p): w for p, w in data["pids"].items()}
    names = {}
    for p, w in pids.items():
        names.setdefault(w, []).append(p)
    places = data.get("places", {})
    for w in data["workers"]:
        label = f"worker {w}" + (f" on {places[str(w)]}" if str(w) in places else "") + (
            f" (pid {', '.join(map(str, names[w]))})" if w in names else "")
        events.append({"ph": "M", "name": "process_name", "pid": w + 1, "tid": 0, "args": {"name": label}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": w + 1, "tid": 0,
                       "args": {"sort_index": w + 1}})
        events.append({"ph": "M", "name": "thread_name", "pid": w + 1, "tid": 0, "args": {"name": "tasks"}})
    for t in data["tasks"]:
        if t["driver_pickle_s"]:
            events.append({"ph": "X", "name": f"pickle {t['function']}", "cat": "pickle", "pid": 0, "tid": 0,
                           "ts": _us(t["submitted"]), "dur": _us(t["driver_pickle_s"]),
                           "args": {"task": t["task"], "bytes": t["bytes_sent"], "arena": t["arena_sent"]}})
        if t["driver_unpickle_s"] and t["delivered"] is not None:
            events.append({"ph": "X", "name": f"unpickle {t['function']}", "cat": "pickle", "pid": 0, "tid": 0,
                           "ts": _us(t["delivered"]), "dur": _us(t["driver_unpickle_s"]),
                           "args": {"task": t["task"], "bytes": t["bytes_received"], "arena": t["arena_received"]}})
        if t["started"] is None or t["worker"] < 0:
            if t["status"] in ("crashed", "timed out", "killed", "failed") and t["delivered"] is not None:
                events.append({"ph": "i", "s": "p", "name": f"{t['function']} {t['status']}", "cat": "failure",
                               "pid": max(t["worker"], -1) + 1, "tid": 0, "ts": _us(t["delivered"]),
                               "args": {"task": t["task"], "retries": t["retries"]}})
            continue
        pid = t["worker"] + 1
        events.append({"ph": "X", "name": t["function"], "cat": t["kind"], "pid": pid, "tid": 0,
                       "ts": _us(t["started"]), "dur": _us(t["ended"] - t["started"]),
                       "args": {"task": t["task"], "items": t["items"], "status": t["status"],
                                "run_ms": round(t["run_s"] * 1e3, 3), "worker_pid": t["pid"],
                                "queued_ms": round((t["started"] - t["submitted"]) * 1e3, 3)}})
        if t["worker_unpickle_s"]:
            events.append({"ph": "X", "name": "unpickle arguments", "cat": "pickle", "pid": pid, "tid": 0,
                           "ts": _us(t["started"]), "dur": _us(t["worker_unpickle_s"])})
        if t["worker_pickle_s"]:
            events.append({"ph": "X", "name": "pickle result", "cat": "pickle", "pid": pid, "tid": 0,
                           "ts": _us(t["ran"]), "dur": _us(t["worker_pickle_s"])})
    for at, pid, name, text in data["events"]:
        w = pids.get(pid)
        events.append({"ph": "i", "s": "p" if w is not None else "g", "name": name, "cat": "worker",
                       "pid": 0 if w is None else w + 1, "tid": 0, "ts": _us(at),
                       "args": {"pid": pid, "detail": text}})
    for pid, at in data.get("started", {}).items():  # older traces have none
        w = pids.get(int(pid))
        if w is not None and at >= 0:
            events.append({"ph": "i", "s": "p", "name": "worker started", "cat": "worker", "pid": w + 1,
                           "tid": 0, "ts": _us(at), "args": {"pid": int(pid)}})
    for run in data.get("runs", ()):  # the driver's track: each sweep run as its row came back
        events.append({"ph": "i", "s": "t", "name": f"{run['sweep']} run {run['index']}", "cat": "sweep",
                       "pid": 0, "tid": 0, "ts": _us(run["done"]),
                       "args": {**run["params"], "error": run["error"]}})
    for at, pid, rss in data["memory"]:
        w = -1 if pid == data["driver_pid"] else pids.get(pid)
        if w is None:
            continue
        events.append({"ph": "C", "name": "memory", "pid": w + 1, "tid": 0, "ts": _us(at),
                       "args": {"rss_mb": round(rss / 2**20, 2)}})
    for at, pid, uss in data.get("uss", ()):  # older traces have none
        w = -1 if pid == data["driver_pid"] else pids.get(pid)
        if w is None:
            continue
        events.append({"ph": "C", "name": "unique memory", "pid": w + 1, "tid": 0, "ts": _us(at),
                       "args": {"uss_mb": round(uss / 2**20, 2)}})
    return {"traceEvents": events, "displayTimeUnit": "ms", "shoalTrace": data}
