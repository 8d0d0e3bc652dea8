"""python -m shoal report run.json -o report.html: one self-contained page of a saved trace.

Nothing is fetched when the page is viewed: the data, the script and the styles are inline. The
timeline is drawn by the page's script on a canvas (zoom: mouse wheel; pan: drag; reset:
double-click); it labels each row it drew with a ``.row-label`` element and sets
``data-rows-drawn`` on ``#timeline``, which the tests read from the rendered page. The other
charts (utilisation over time, the time split, memory per worker) are SVG made here.
"""
import html
import json

from ._trace import Trace
from ._trace_summary import analyse, format_size, format_time, summary_text

COLORS = {"running": "#3b7dd8", "pickling": "#e8a33d", "waiting": "#c44e52", "idle": "#d9d9d9"}
PALETTE = ["#3b7dd8", "#55a868", "#c44e52", "#8172b2", "#ccb974", "#64b5cd", "#e8a33d", "#8c8c8c"]


def _utilisation(data, bins=120):
    """Fraction of the workers running a task in each of ``bins`` slices of the run."""
    span = max(data["duration"], 1e-9)
    width = span / bins
    busy = [0.0] * bins
    for t in data["tasks"]:
        if t["started"] is None or t["worker"] < 0:
            continue
        a, b = t["started"], t["ended"]
        i = max(0, int(a / width))
        while i < bins and i * width < b:
            lo, hi = max(a, i * width), min(b, (i + 1) * width)
            if hi > lo:
                busy[i] += hi - lo
            i += 1
    n = max(1, len(data["workers"]))
    return [min(1.0, x / (width * n)) for x in busy], span


def _svg_utilisation(data):
    values, span = _utilisation(data)
    w, h = 900, 120
    step = w / len(values)
    points = " ".join(f"{i * step:.1f},{h - v * h:.1f} {(i + 1) * step:.1f},{h - v * h:.1f}"
                      for i, v in enumerate(values))
    return (f'<svg id="utilisation" viewBox="0 0 {w} {h + 20}" width="100%" role="img">'
            f'<polygon points="0,{h} {points} {w},{h}" fill="#3b7dd8" fill-opacity="0.6" stroke="#3b7dd8"/>'
            f'<line x1="0" y1="{h}" x2="{w}" y2="{h}" stroke="#555"/>'
            f'<text x="0" y="{h + 15}" font-size="11">0</text>'
            f'<text x="{w}" y="{h + 15}" font-size="11" text-anchor="end">{html.escape(format_time(span))}</text>'
            f'<text x="4" y="12" font-size="11">100 % of the workers busy</text></svg>')


def _svg_split(analysis):
    rows = list(analysis["workers"].items())
    w, bar, gap = 900, 18, 6
    h = len(rows) * (bar + gap) + 24
    parts = [f'<svg id="split" viewBox="0 0 {w} {h}" width="100%" role="img">']
    span = analysis["span"]
    for i, (worker, v) in enumerate(rows):
        y = i * (bar + gap)
        parts.append(f'<text x="0" y="{y + 13}" font-size="12">worker {worker}</text>')
        x = 80.0
        for key in ("running", "pickling", "waiting", "idle"):
            width = (w - 90) * v[key] / span
            if width > 0:
                parts.append(f'<rect x="{x:.1f}" y="{y}" width="{width:.1f}" height="{bar}" fill="{COLORS[key]}">'
                             f'<title>{key}: {v[key] / span:.0%}</title></rect>')
            x += width
    y = len(rows) * (bar + gap) + 12
    x = 80
    for key, color in COLORS.items():
        parts.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{x + 14}" y="{y}" font-size="11">{key}</text>')
        x += 90
    parts.append("</svg>")
    return "".join(parts)


def _svg_memory(data):
    pids = {int(p): w for p, w in data["pids"].items()}
    series = {}
    for at, pid, rss in data["memory"]:
        label = "driver" if pid == data["driver_pid"] else (f"worker {pids[pid]}" if pid in pids else f"pid {pid}")
        series.setdefault(label, []).append((at, rss))
    if not series:
        return "<p>No memory samples (psutil is not installed, or the run was shorter than a sample).</p>"
    w, h = 900, 140
    span = max(data["duration"], 1e-9)
    top = max(rss for pts in series.values() for _, rss in pts) or 1
    parts = [f'<svg id="memory" viewBox="0 0 {w} {h + 36}" width="100%" role="img">']
    for i, (label, pts) in enumerate(sorted(series.items())):
        color = PALETTE[i % len(PALETTE)]
        line = " ".join(f"{at / span * w:.1f},{h - rss / top * (h - 10):.1f}" for at, rss in pts)
        width = max(1.5, 6 - 1.5 * i)  # wider first: series with the same memory stay visible
        parts.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="{width}"/>')
        parts.append(f'<rect x="{i * 110}" y="{h + 22}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{i * 110 + 14}" y="{h + 31}" font-size="11">{html.escape(label)}</text>')
    parts.append(f'<line x1="0" y1="{h}" x2="{w}" y2="{h}" stroke="#555"/>'
                 f'<text x="4" y="12" font-size="11">{html.escape(format_size(top))} (resident)</text>'
                 f'<text x="{w}" y="{h + 14}" font-size="11" text-anchor="end">{html.escape(format_time(span))}</text>'
                 "</svg>")
    return "".join(parts)


_SCRIPT = r"""
(function () {
  const data = JSON.parse(document.getElementById("trace-data").textContent);
  const box = document.getElementById("timeline");
  const canvas = document.getElementById("timeline-canvas");
  const labels = document.getElementById("timeline-labels");
  const rowH = 26, left = 110, ctx = canvas.getContext("2d");
  const workers = data.workers, span = Math.max(data.duration, 1e-9);
  const rowOf = new Map(workers.map((w, i) => [w, i]));
  let t0 = 0, t1 = span;
  canvas.height = workers.length * rowH + 24;
  labels.textContent = "";
  workers.forEach((w, i) => {
    const el = document.createElement("div");
    el.className = "row-label"; el.dataset.worker = String(w);
    el.style.top = (i * rowH) + "px"; el.textContent = "worker " + w;
    labels.appendChild(el);
  });
  function draw() {
    canvas.width = box.clientWidth;
    const W = canvas.width - left, scale = W / (t1 - t0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.font = "11px sans-serif";
    let drawn = 0;
    workers.forEach((w, i) => {
      ctx.fillStyle = i % 2 ? "#f6f6f6" : "#ececec";
      ctx.fillRect(left, i * rowH, W, rowH - 2);
      drawn++;
    });
    for (const t of data.tasks) {
      if (t.started === null || !rowOf.has(t.worker)) continue;
      const y = rowOf.get(t.worker) * rowH + 3;
      const x0 = left + (t.started - t0) * scale, x1 = left + (t.ended - t0) * scale;
      if (x1 < left || x0 > canvas.width) continue;
      const x = Math.max(left, x0), w = Math.max(1, x1 - x);
      ctx.fillStyle = t.status === "ok" ? "#3b7dd8" : "#c44e52";
      ctx.fillRect(x, y, w, rowH - 8);
      const pw = [(t.loaded - t.started) * scale, (t.ended - t.ran) * scale];
      ctx.fillStyle = "#e8a33d";
      if (pw[0] >= 1) ctx.fillRect(x, y, Math.min(pw[0], w), rowH - 8);
      if (pw[1] >= 1) ctx.fillRect(x1 - pw[1], y, pw[1], rowH - 8);
      if (w > 40) { ctx.fillStyle = "#fff"; ctx.fillText(t.function, x + 3, y + 13, w - 6); }
    }
    const pids = new Map(Object.entries(data.pids).map(([p, w]) => [Number(p), w]));
    for (const [at, pid, name] of data.events) {
      if (!pids.has(pid) || !rowOf.has(pids.get(pid))) continue;
      const x = left + (at - t0) * scale, y = rowOf.get(pids.get(pid)) * rowH;
      ctx.fillStyle = "#000"; ctx.fillRect(x - 1, y, 3, rowH - 2);
    }
    ctx.fillStyle = "#333";
    const axis = workers.length * rowH + 14;
    for (let k = 0; k <= 5; k++) {
      const t = t0 + (t1 - t0) * k / 5;
      ctx.fillText((t * 1e3).toFixed(1) + " ms", left + W * k / 5 - (k === 5 ? 50 : 0), axis);
    }
    box.setAttribute("data-rows-drawn", String(drawn));
  }
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const W = canvas.width - left, at = t0 + (e.offsetX - left) / W * (t1 - t0);
    const f = e.deltaY < 0 ? 0.8 : 1.25;
    t0 = Math.max(0, at - (at - t0) * f); t1 = Math.min(span, at + (t1 - at) * f);
    draw();
  }, {passive: false});
  let dragX = null;
  canvas.addEventListener("mousedown", (e) => { dragX = e.offsetX; });
  window.addEventListener("mouseup", () => { dragX = null; });
  canvas.addEventListener("mousemove", (e) => {
    if (dragX === null) return;
    const dt = (dragX - e.offsetX) / (canvas.width - left) * (t1 - t0);
    const width = t1 - t0;
    t0 = Math.min(Math.max(0, t0 + dt), span - width); t1 = t0 + width; dragX = e.offsetX; draw();
  });
  canvas.addEventListener("dblclick", () => { t0 = 0; t1 = span; draw(); });
  window.addEventListener("resize", draw);
  draw();
})();
"""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 960px; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
pre { background: #f4f4f4; padding: 10px; font-size: 12px; overflow-x: auto; }
.advice { background: #fff4d6; border-left: 4px solid #e8a33d; padding: 8px 12px; }
#timeline { position: relative; width: 100%; }
#timeline-canvas { display: block; width: 100%; cursor: grab; }
#timeline-labels { position: absolute; left: 0; top: 0; width: 105px; }
.row-label { position: absolute; left: 4px; height: 24px; line-height: 24px; font-size: 12px; }
table { border-collapse: collapse; font-size: 13px; } td, th { padding: 3px 10px; border-bottom: 1px solid #ddd; text-align: left; }
.hint { color: #666; font-size: 12px; }
"""


def render(trace):
    """The report of ``trace`` (a :class:`shoal.Trace`) as one HTML string."""
    data = trace.data()
    a = analyse(data)
    advice = (f'<p class="advice" id="advice">{html.escape(a["advice"])}</p>' if a["advice"]
              else '<p id="advice">No single cause stands out.</p>')
    slow = "".join(f"<tr><td>{html.escape(t['function'])}</td><td>#{t['task']}</td><td>{t['items']}</td>"
                   f"<td>worker {t['worker']}</td><td>{html.escape(format_time(t['run_s']))}</td></tr>"
                   for t in a["slowest"])
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>shoal trace report</title>
<style>{_STYLE}</style></head><body>
<h1>shoal trace: {len(data['tasks'])} tasks on {len(data['workers'])} workers ({html.escape(data['backend'])} backend), {html.escape(format_time(a['span']))}</h1>
{advice}
<h2>Timeline</h2>
<p class="hint">One row per worker; tasks in blue (failed in red), pickling in orange, worker exits as black marks. Wheel: zoom, drag: pan, double-click: reset.</p>
<div id="timeline"><canvas id="timeline-canvas" height="60"></canvas><div id="timeline-labels"></div></div>
<h2>Utilisation over time</h2>
{_svg_utilisation(data)}
<h2>Where the time went</h2>
{_svg_split(a)}
<pre>{html.escape(summary_text(data))}</pre>
<h2>Memory per worker</h2>
{_svg_memory(data)}
<h2>Slowest tasks</h2>
<table id="slowest"><tr><th>function</th><th>task</th><th>items</th><th>worker</th><th>run time</th></tr>{slow}</table>
<script type="application/json" id="trace-data">{payload}</script>
<script>{_SCRIPT}</script>
</body></html>
"""


def main(argv):
    """python -m shoal report run.json [-o report.html]"""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m shoal report",
                                 description="An HTML page (self-contained) of a trace saved with Trace.save")
    ap.add_argument("trace", help="the trace file (Chrome trace event JSON written by shoal)")
    ap.add_argument("-o", "--output", default="report.html")
    args = ap.parse_args(argv)
    text = render(Trace.load(args.trace))
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"shoal: wrote {args.output}")
    return 0
