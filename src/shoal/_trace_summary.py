"""Where a traced run's time went: per-worker split, imbalance, slowest tasks, one advice.

Works on ``Trace.data()`` (times in seconds since the trace began), so a loaded trace and a
live one give the same answer. A worker's time over the run is split four ways:

- running: inside the task's function;
- pickling: unpickling the arguments and pickling the result, in the worker;
- waiting: between tasks while a task was submitted but not yet started anywhere (work was
  in flight towards the workers: the driver or the pipe was the limit);
- idle: the rest (nothing to do).

The driver's own pickling and unpickling is reported beside the workers.
"""
import statistics

# Advice thresholds. A task is "tiny" when its median overhead (submit to delivery minus its
# run time) exceeds its median run time and TINY_OVERHEAD_S; pickling stands out above
# PICKLE_SHARE of the busy time with at least PICKLE_BYTES per task; a worker is "slow" when
# busy SLOW_RATIO times the others' mean and at least SLOW_MIN_S.
TINY_OVERHEAD_S = 15e-6
TINY_MIN_TASKS = 50
PICKLE_SHARE = 0.25
PICKLE_BYTES = 64 * 1024
SLOW_RATIO = 2.0
SLOW_MIN_S = 0.05


def _merge(intervals):
    out = []
    for a, b in sorted(intervals):
        if b <= a:
            continue
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1][1] = b
        else:
            out.append([a, b])
    return out


def _overlap(gaps, cover):
    """Total length of the intersection of two sorted lists of disjoint intervals."""
    i = j = 0
    total = 0.0
    while i < len(gaps) and j < len(cover):
        a = max(gaps[i][0], cover[j][0])
        b = min(gaps[i][1], cover[j][1])
        if b > a:
            total += b - a
        if gaps[i][1] < cover[j][1]:
            i += 1
        else:
            j += 1
    return total


def analyse(data):
    """A dict of the numbers the summary prints, and ``advice`` (a sentence or None)."""
    tasks = [t for t in data["tasks"] if t["started"] is not None and t["worker"] >= 0]
    duration = max([data["duration"]] + [t["delivered"] or 0 for t in tasks]) or 1e-9
    span0 = min([t["submitted"] for t in data["tasks"]], default=0.0)
    span = max(duration - span0, 1e-9)
    pending = _merge([(t["submitted"], t["started"]) for t in tasks])
    workers = {}
    for w in data["workers"]:
        mine = sorted((t for t in tasks if t["worker"] == w), key=lambda t: t["started"])
        running = sum(t["run_s"] for t in mine)
        pickling = sum(t["worker_unpickle_s"] + t["worker_pickle_s"] for t in mine)
        busy = _merge([(t["started"], t["ended"]) for t in mine])
        gaps, at = [], span0
        for a, b in busy:
            gaps.append([at, a])
            at = b
        gaps.append([at, duration])
        waiting = _overlap([g for g in gaps if g[1] > g[0]], pending)
        idle = max(0.0, span - running - pickling - waiting)
        workers[w] = {"tasks": len(mine), "running": running, "pickling": pickling, "waiting": waiting,
                      "idle": idle, "busy": running + pickling}
    driver_pickling = sum(t["driver_pickle_s"] + t["driver_unpickle_s"] for t in data["tasks"])
    busy = [v["busy"] for v in workers.values()]
    mean_busy = statistics.fmean(busy) if busy else 0.0
    imbalance = max(busy) / mean_busy if busy and mean_busy > 0 else 1.0
    slowest = sorted(tasks, key=lambda t: t["run_s"], reverse=True)[:5]
    sent = sum(t["bytes_sent"] + t["arena_sent"] for t in data["tasks"])
    received = sum(t["bytes_received"] + t["arena_received"] for t in data["tasks"])
    deaths = len(data["events"])
    failed = sum(1 for t in data["tasks"] if t["status"] in ("error", "crashed", "timed out", "killed", "failed"))
    out = {"span": span, "workers": workers, "driver_pickling": driver_pickling, "imbalance": imbalance,
           "slowest": slowest, "sent": sent, "received": received, "tasks": len(data["tasks"]),
           "items": sum(t["items"] for t in data["tasks"]), "deaths": deaths, "failed": failed,
           "retried": sum(1 for t in data["tasks"] if t["retries"])}
    out["advice"] = _advice(data, tasks, workers, driver_pickling)
    return out


def _advice(data, tasks, workers, driver_pickling):
    if not tasks:
        return None
    running = sum(v["running"] for v in workers.values())
    pickling = sum(v["pickling"] for v in workers.values()) + driver_pickling
    per_task_bytes = statistics.fmean(t["bytes_sent"] + t["arena_sent"] + t["bytes_received"]
                                      + t["arena_received"] for t in tasks)
    if pickling + running > 0:
        share = pickling / (pickling + running)
        if share >= PICKLE_SHARE and per_task_bytes >= PICKLE_BYTES:
            return (f"pickling takes {share:.0%} of the time ({format_size(per_task_bytes)} per task): "
                    "share the large arguments once with shoal.share instead of sending them with every task")
    if len(tasks) >= TINY_MIN_TASKS:
        per_item = statistics.median(t["run_s"] / max(1, t["items"]) for t in tasks)
        overhead = statistics.median((t["delivered"] - t["submitted"]) - t["run_s"] for t in tasks
                                     if t["delivered"] is not None)
        items = statistics.fmean(t["items"] for t in tasks)
        if items < 4 and overhead > max(TINY_OVERHEAD_S, per_item):
            return (f"tasks are ~{format_time(per_item)} each but cost ~{format_time(overhead)} to send and collect: "
                    "use map (which sends them in chunks) or pass a larger chunksize")
    busy = {w: v["busy"] for w, v in workers.items()}
    if len(busy) >= 2:
        w, most = max(busy.items(), key=lambda kv: kv[1])
        others = statistics.fmean(v for k, v in busy.items() if k != w)
        if most >= SLOW_MIN_S and most >= SLOW_RATIO * max(others, 1e-9):
            ratio = most / others if others > 0 else float("inf")
            times = f"{ratio:.1f}×" if ratio != float("inf") else "far"
            return (f"worker {w} ran {times} longer than the others' mean: use smaller chunks "
                    "(chunksize) or ordered=False, so that one slow task does not hold the rest back")
    return None


def format_time(s):
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} µs"


def format_size(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def summary_text(data):
    """The few lines of Trace.summary()."""
    a = analyse(data)
    lines = [f"shoal trace: {a['tasks']} tasks ({a['items']} items) on {len(a['workers'])} workers "
             f"({data['backend']} backend) over {format_time(a['span'])}"]
    lines.append("  worker  tasks  running  pickling  waiting  idle")
    for w, v in a["workers"].items():
        span = a["span"]
        lines.append(f"  {w:>6}  {v['tasks']:>5}  {v['running'] / span:>7.0%}  {v['pickling'] / span:>8.0%}"
                     f"  {v['waiting'] / span:>7.0%}  {v['idle'] / span:>4.0%}")
    lines.append(f"  driver pickling/unpickling: {format_time(a['driver_pickling'])}; "
                 f"bytes moved: {format_size(a['sent'])} to workers, {format_size(a['received'])} back")
    lines.append(f"  load imbalance (busiest worker / mean): {a['imbalance']:.2f}")
    if a["slowest"]:
        lines.append("  slowest: " + ", ".join(
            f"{t['function']} #{t['task']} {format_time(t['run_s'])} (worker {t['worker']})" for t in a["slowest"][:3]))
    if a["deaths"] or a["failed"] or a["retried"]:
        lines.append(f"  worker exits: {a['deaths']}; failed tasks: {a['failed']}; "
                     f"tasks run again after a worker died: {a['retried']}")
    if a["advice"]:
        lines.append(f"  advice: {a['advice']}")
    return "\n".join(lines)
