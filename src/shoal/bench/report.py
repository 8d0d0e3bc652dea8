"""The bench's outputs besides JSON: the Markdown table with targets, and the ratio plot."""
from shoalbench import spec

__all__ = ["markdown", "plot", "ratios", "targets"]

NOT_PEERS = {"serial", "shoal", "shoal[thread]", "shoal[direct]", "joblib[shoal]", "shoal.Pool"}  # never the "best peer"


def _index(records):
    return {(r["workload"], r["metric"], r["system"]): r for r in records}


def _ok(idx, workload, metric, system):
    r = idx.get((workload, metric, system))
    return r["value"] if r and r["status"] == "ok" and r["value"] is not None else None


def _better_ratio(shoal, peer, lower):
    """How many times shoal is better than the peer (>1: shoal better)."""
    if not shoal or not peer:
        return None
    return peer / shoal if lower else shoal / peer


def best_peer(records, workload, metric):
    """(system, value) of the best ok peer for a row, or (None, None)."""
    cands = [r for r in records if r["workload"] == workload and r["metric"] == metric
             and r["status"] == "ok" and r["value"] is not None and r["system"] not in NOT_PEERS]
    if not cands:
        return None, None
    pick = min if cands[0]["lower_is_better"] else max
    best = pick(cands, key=lambda r: r["value"])
    return best["system"], best["value"]


def ratios(records):
    """[(workload, metric, peer, ratio)] for every row where shoal and the peer are ok."""
    idx = _index(records)
    out = []
    for workload, metric, lower in _rows(records):
        s = _ok(idx, workload, metric, "shoal")
        if s is None:
            continue
        for system in spec.ALL_SYSTEMS:
            if system in NOT_PEERS:
                continue
            ratio = _better_ratio(s, _ok(idx, workload, metric, system), lower)
            if ratio is not None:
                out.append((workload, metric, system, ratio))
    return out


def _rows(records):
    seen = []
    for workload in spec.WORKLOADS:
        for metric, _, lower in spec.METRICS[workload]:
            if any(r["workload"] == workload and r["metric"] == metric for r in records):
                seen.append((workload, metric, lower))
    return seen


def targets(records, sizes=None):
    """{(workload, metric): "met: ..." | "missed: ..." | "n/a: ..."} per BENCHMARKS.md's Targets table."""
    idx = _index(records)
    sizes = sizes or {}
    out = {}

    def shoal(w, m):
        return _ok(idx, w, m, "shoal")

    def vs(w, m, peer, need):
        """A "shoal >= need x faster than peer" check: (ok, text) or (None, reason)."""
        s, p = shoal(w, m), _ok(idx, w, m, peer)
        if s is None:
            return None, "shoal has no result"
        if p is None:
            return None, f"{peer} has no result"
        r = p / s
        return r >= need, f"{r:.2g}x vs {peer} (need >={need:g}x)"

    def verdict(checks):
        if any(ok is None for ok, _ in checks):
            return "n/a: " + "; ".join(dict.fromkeys(t for ok, t in checks if ok is None))
        word = "met" if all(ok for ok, _ in checks) else "missed"
        return f"{word}: " + "; ".join(t for _, t in checks)

    w = "round_trip"
    out[(w, "us_per_call")] = verdict([vs(w, "us_per_call", "mp_pool", 10)])
    w = "submit_throughput"
    best, _ = best_peer(records, w, "us_per_task")
    out[(w, "us_per_task")] = verdict([vs(w, "us_per_task", "cf_process", 10)] +
                                      ([vs(w, "us_per_task", best, 3)] if best else
                                       [(None, "no peer result")]))
    def pool_vs_mp(w, m):
        """shoal.Pool's check (issue 17): at least as fast as multiprocessing.Pool, when it ran."""
        if not any(r["workload"] == w and r["system"] == "shoal.Pool" for r in records):
            return []
        s, p = _ok(idx, w, m, "shoal.Pool"), _ok(idx, w, m, "mp_pool")
        if s is None or p is None:
            return [(None, "shoal.Pool or mp_pool has no result")]
        return [(p / s >= 1, f"shoal.Pool {p / s:.2g}x vs mp_pool (need >=1x)")]

    w = "map_tiny"
    best, _ = best_peer(records, w, "us_per_item")
    out[(w, "us_per_item")] = verdict(([vs(w, "us_per_item", best, 1)] if best
                                       else [(None, "no peer result")]) + pool_vs_mp(w, "us_per_item"))
    w = "map_cpu"
    e = shoal(w, "efficiency")
    # shoal.Pool vs mp_pool by efficiency: each repeat's own serial loop measures the machine's
    # load at that moment, which ms_total alone leaves in (the machine is shared).
    pool_check = []
    if any(r["workload"] == w and r["system"] == "shoal.Pool" for r in records):
        s, p = _ok(idx, w, "efficiency", "shoal.Pool"), _ok(idx, w, "efficiency", "mp_pool")
        pool_check = ([(s >= p, f"shoal.Pool {s:.2f} vs mp_pool {p:.2f} (need >=)")] if s and p
                      else [(None, "shoal.Pool or mp_pool has no result")])
    out[(w, "efficiency")] = verdict([(e >= 0.9, f"{e:.2f} (need >=0.9)") if e is not None
                                      else (None, "shoal has no result")] + pool_check)
    w = "map_numpy"
    best, _ = best_peer(records, w, "s_total")
    e = shoal(w, "efficiency")
    out[(w, "s_total")] = verdict([vs(w, "s_total", best, 1)] if best else [(None, "no peer result")])
    out[(w, "efficiency")] = verdict([(e >= 0.9, f"{e:.2f} (need >=0.9)") if e is not None
                                      else (None, "shoal has no result")])
    w = "big_args"
    direct, mp = _ok(idx, w, "ms_per_task", "shoal[direct]"), _ok(idx, w, "ms_per_task", "mp_pool")
    direct_check = ((mp / direct >= 5, f"shoal[direct] {mp / direct:.2g}x vs mp_pool (need >=5x)")
                    if direct and mp else (None, "shoal[direct] or mp_pool has no result"))
    js, jl = _ok(idx, w, "ms_per_task", "joblib[shoal]"), _ok(idx, w, "ms_per_task", "joblib")
    joblib_check = ((jl / js >= 2, f"joblib[shoal] {jl / js:.2g}x vs joblib (need >=2x)")
                    if js and jl else (None, "joblib[shoal] or joblib has no result"))
    out[(w, "ms_per_task")] = verdict([vs(w, "ms_per_task", "mp_pool", 50),
                                       vs(w, "ms_per_task", "joblib", 2), direct_check, joblib_check])
    peak, array_mb = shoal(w, "peak_pss_mb"), sizes.get(w, {}).get("array_mb")
    if peak is None or not array_mb:
        out[(w, "peak_pss_mb")] = verdict([(None, "shoal has no result")])
    else:
        out[(w, "peak_pss_mb")] = verdict([(peak <= 1.3 * array_mb,
                                            f"{peak / array_mb:.2f}x the array (need <=1.3x)")])
    w = "big_results"
    out[(w, "ms_per_task")] = verdict([vs(w, "ms_per_task", "mp_pool", 5)])
    w = "startup"
    spawn = _ok(idx, w, "first_pool_ms", "mp_pool[spawn]")
    first, second = shoal(w, "first_pool_ms"), shoal(w, "second_pool_ms")
    if spawn is None:
        out[(w, "first_pool_ms")] = out[(w, "second_pool_ms")] = "n/a: mp_pool[spawn] has no result"
    else:
        out[(w, "first_pool_ms")] = verdict([
            (first <= spawn, f"{first:.0f} ms vs mp_pool[spawn] {spawn:.0f} ms (need <=)")
            if first is not None else (None, "shoal has no result")])
        out[(w, "second_pool_ms")] = verdict([
            (second <= spawn / 10, f"{second:.0f} ms vs mp_pool[spawn]/10 = {spawn / 10:.0f} ms")
            if second is not None else (None, "shoal has no result")])
    w = "io_bound"
    x = shoal(w, "x_ideal")
    out[(w, "x_ideal")] = verdict([(x <= 1.5, f"{x:.2f}x the ideal (need <=1.5x)")
                                   if x is not None else (None, "shoal has no result")])
    w = "sweep"
    best, _ = best_peer(records, w, "s_total")
    out[(w, "s_total")] = verdict([vs(w, "s_total", best, 1)] if best
                                  else [(None, "no peer result")])
    w = "agents"
    # BENCHMARKS.md: >= 3x the joblib pattern per step; issue 5 adds the heavy step (>= 1.7x
    # the plain loop), the light step (>= 3x joblib and not slower than the loop) and memory.
    out[(w, "s_per_step")] = verdict([vs(w, "s_per_step", "joblib", 3)])
    out[(w, "s_per_step_heavy")] = verdict([vs(w, "s_per_step_heavy", "serial", 1.7)])
    out[(w, "s_per_step_light")] = verdict([vs(w, "s_per_step_light", "joblib", 3),
                                            vs(w, "s_per_step_light", "serial", 1)])
    mem, plain = shoal(w, "mem_mb"), _ok(idx, w, "mem_mb", "serial")
    if mem is None or plain is None:
        out[(w, "mem_mb")] = verdict([(None, "shoal has no result" if mem is None else "serial has no result")])
    else:
        # "The agents' state" is what the same agents cost in one plain process (serial).
        allowed = plain + 5 * idx[(w, "mem_mb", "shoal")]["workers"]
        out[(w, "mem_mb")] = verdict([(mem <= allowed, f"{mem:.0f} MB vs the agents' {plain:.0f} MB "
                                                      f"+ 5 MB per worker = {allowed:.0f} MB (need <=)")])
    w = "worker_memory"
    uss = shoal(w, "uss_mb_per_worker")
    out[(w, "uss_mb_per_worker")] = verdict([(uss <= 2, f"{uss:.1f} MB (need <=2 MB)")
                                             if uss is not None else (None, "shoal has no result")])
    return out


def _fmt(v):
    if v is None:
        return "—"
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def markdown(records, machine=None, command="", sizes=None, elapsed_s=None, mode="full"):
    """One row per workload/metric, one column per system, shoal vs best peer, target."""
    idx = _index(records)
    present = [s for s in spec.ALL_SYSTEMS if any(r["system"] == s for r in records)]
    verdicts = targets(records, sizes)
    lines = ["# shoal bench results", ""]
    if command:
        lines += [f"Command: `{command}`" + (f" ({mode}, {elapsed_s:.0f} s)" if elapsed_s else ""), ""]
    if machine:
        libs = ", ".join(f"{k} {v}" for k, v in machine["libraries"].items())
        lines += [f"Machine: {machine['cores']} cores ({machine['cpu']}), {machine['memory']}, "
                  f"{machine['os']}, Python {machine['python']}; {libs}.", ""]
    lines += ["Median of the repeats (of every round, with `--rounds`); lower is better unless the unit is `ratio`. "
              "\"shoal vs best peer\" is how many times better shoal is (>1: shoal wins); "
              "`serial` is never the best peer.", ""]
    header = ["workload", "metric", "unit"] + present + ["shoal vs best peer", "target"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    problems = {}  # (system, workload) -> "status: reason", once per cell
    for workload, metric, lower in _rows(records):
        unit = next(r["unit"] for r in records if r["workload"] == workload and r["metric"] == metric)
        cells = []
        for s in present:
            r = idx.get((workload, metric, s))
            if r is None:
                cells.append("")
            elif r["status"] == "ok":
                cells.append(_fmt(r["value"]))
            else:
                cells.append(r["status"])
                problems.setdefault((s, workload), f"{r['status']}: {r['note']}")
        best, best_v = best_peer(records, workload, metric)
        ratio = _better_ratio(_ok(idx, workload, metric, "shoal"), best_v, lower)
        vs = f"{ratio:.2g}x ({best})" if ratio is not None else "—"
        lines.append("| " + " | ".join([workload, metric, unit] + cells +
                                       [vs, verdicts.get((workload, metric), "")]) + " |")
    if problems:
        lines += ["", "Not measured:", ""]
        lines += [f"- `{s}` / `{w}`: {why}" for (s, w), why in problems.items()]
    # sizes, from a system whose note carries no library version in front
    plain = ("serial", "mp_pool", "cf_process", "mp_pool[spawn]")
    sizes_seen = {}
    for r in records:
        if r["status"] == "ok" and r["system"] in plain and r["metric"] != "efficiency":
            sizes_seen.setdefault(r["workload"], r["note"])
    if sizes_seen:
        lines += ["", "Sizes:", ""] + [f"- `{w}`: {n}" for w, n in sizes_seen.items()]
    return "\n".join(lines) + "\n"


def plot(records, path):
    """Writes a log-scale bar chart of shoal's ratio to each peer; returns a message if it could not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot written"
    data = ratios(records)
    if not data:
        return "no shoal results to plot: no plot written"
    rows = []
    for w, m, _, _ in data:
        if (w, m) not in rows:
            rows.append((w, m))
    peers = [s for s in spec.ALL_SYSTEMS if any(p == s for _, _, p, _ in data)]
    height = 0.8 / max(1, len(peers))
    fig, ax = plt.subplots(figsize=(9, 2 + 0.09 * len(rows) * max(1, len(peers))))
    cmap = plt.get_cmap("tab10")
    for j, peer in enumerate(peers):
        ys, xs = [], []
        for i, row in enumerate(rows):
            for w, m, p, r in data:
                if (w, m) == row and p == peer:
                    ys.append(i + (j - (len(peers) - 1) / 2) * height)
                    xs.append(r)
        # bars grow from 1 (a tie), right when shoal is better, left when it is worse
        ax.barh(ys, [x - 1 for x in xs], height=height, color=cmap(j % 10), label=peer, left=1)
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{w}\n{m}" for w, m in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("times better than the peer (log scale; >1: shoal better)")
    ax.set_title("shoal vs each peer, same run")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None
