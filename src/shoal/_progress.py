"""Progress bars: count, rate and time left, for map, starmap, sweep and any caller that
counts finished work.

``Progress(total)`` picks its display once: tqdm (``tqdm.auto``: a widget in a notebook, text
on stderr elsewhere) when tqdm is installed, else a small built-in bar (text on stderr, or an
HTML ``<progress>`` element updated in place in a notebook). Callers only ever call
``update(n)`` and ``close()``; ``progress_for`` turns the ``progress=`` argument of the public
API into one of these (or None, so a call without a bar pays nothing).
"""
import sys
import time

__all__ = ["Progress", "progress_for"]

_KINDS = ("auto", "tqdm", "text", "notebook")


def _in_notebook():
    """True inside a Jupyter kernel (IPython's ZMQ shell), without importing IPython."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # noqa: BLE001 - any failure means "not a notebook"
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _clock(seconds):
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _rate_text(rate, unit):
    if rate <= 0:
        return f"? {unit}/s"
    if rate >= 1:
        return f"{rate:,.1f} {unit}/s"
    return f"{1 / rate:,.1f} s/{unit}"


class Progress:
    """A progress bar that shows how many of ``total`` items are done, the rate and the time
    left. ``total=None`` (length unknown) shows the count and the rate only.

    ``kind``: ``"auto"`` (tqdm when installed, else the built-in bar), ``"tqdm"``, ``"text"``
    (built-in, on ``file``, default ``sys.stderr``) or ``"notebook"`` (built-in HTML bar).
    The built-in text bar redraws in place (``\\r``) when ``file`` is a terminal, and writes a
    plain line at most every ``log_interval`` seconds otherwise (logs stay readable).

    Use as a context manager, or call :meth:`close` when done::

        with Progress(total=len(xs), desc="solve") as bar:
            for x in xs:
                ...
                bar.update()
    """

    def __init__(self, total=None, desc="shoal", unit="task", *, kind="auto", file=None,
                 min_interval=0.1, log_interval=2.0):
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {', '.join(map(repr, _KINDS))}, not {kind!r}")
        if total is not None and (not isinstance(total, int) or total < 0):
            raise ValueError(f"total must be an int >= 0 or None, not {total!r}")
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = 0
        self.closed = False
        self._file = file
        self._start = time.monotonic()
        self._last_draw = None
        self._min_interval = min_interval
        self._log_interval = log_interval
        self._tqdm = None
        self._handle = None
        if kind in ("auto", "tqdm"):
            try:
                from tqdm.auto import tqdm
            except ImportError:
                if kind == "tqdm":
                    raise
            else:
                self._tqdm = tqdm(total=total, desc=desc, unit=unit, file=file,
                                  mininterval=min_interval)
                self.kind = "tqdm"
                return
            kind = "notebook" if _in_notebook() and file is None else "text"
        self.kind = kind
        if kind == "notebook":
            from IPython.display import HTML, display

            self._HTML = HTML
            self._handle = display(HTML(self._html()), display_id=True)
        else:
            stream = file if file is not None else sys.stderr
            try:
                self._tty = bool(stream.isatty())
            except Exception:  # noqa: BLE001 - a stream without isatty is not a terminal
                self._tty = False
            self._draw()

    # -------------------------------------------------------------- counting

    def update(self, n=1):
        """Counts ``n`` more items as done and redraws (at most every ``min_interval`` s)."""
        if self.closed:
            return
        self.n += n
        if self._tqdm is not None:
            self._tqdm.update(n)
            return
        now = time.monotonic()
        interval = self._min_interval if (self._handle is not None or self._tty) else self._log_interval
        if self._last_draw is None or now - self._last_draw >= interval:
            self._draw(now)

    def close(self):
        """Draws the final state and releases the display; further updates are ignored."""
        if self.closed:
            return
        self.closed = True
        if self._tqdm is not None:
            self._tqdm.close()
            return
        self._draw(final=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # --------------------------------------------------------------- drawing

    def _numbers(self, now=None):
        elapsed = (now or time.monotonic()) - self._start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        left = None
        if self.total is not None and rate > 0:
            left = max(0.0, (self.total - self.n) / rate)
        return elapsed, rate, left

    def text(self, now=None, width=20):
        """The bar as one line of text, e.g. ``sweep:  40%|########            | 80/200
        [00:04<00:06, 20.0 task/s]``."""
        elapsed, rate, left = self._numbers(now)
        rate_s = _rate_text(rate, self.unit)
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            frac = min(1.0, self.n / self.total)
            filled = int(frac * width)
            bar = "#" * filled + " " * (width - filled)
            left_s = _clock(left) if left is not None else "?"
            return (f"{head}{frac * 100:3.0f}%|{bar}| {self.n}/{self.total} "
                    f"[{_clock(elapsed)}<{left_s}, {rate_s}]")
        return f"{head}{self.n} {self.unit} [{_clock(elapsed)}, {rate_s}]"

    def _html(self, now=None):
        import html

        maximum = self.total if self.total else max(1, self.n)
        return (f"<progress value='{self.n}' max='{maximum}' style='width:40%'></progress> "
                f"<code>{html.escape(self.text(now))}</code>")

    def _draw(self, now=None, final=False):
        now = now or time.monotonic()
        self._last_draw = now
        if self._handle is not None:
            self._handle.update(self._HTML(self._html(now)))
            return
        stream = self._file if self._file is not None else sys.stderr
        try:
            if self._tty:
                stream.write("\r" + self.text(now) + ("\n" if final else ""))
            else:
                stream.write(self.text(now) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed or broken stream never fails the work
            pass


class _External:
    """A caller's own bar (anything with ``update(n)``, e.g. a tqdm instance): updated, never
    closed, so the caller can reuse it across calls."""

    __slots__ = ("bar",)

    def __init__(self, bar):
        self.bar = bar

    def update(self, n=1):
        self.bar.update(n)

    def close(self):
        pass


def progress_for(progress, total, desc):
    """The bar for a ``progress=`` argument: None for False/None, a new :class:`Progress` for
    True, or the caller's own object with an ``update`` method. Anything else: TypeError."""
    if progress is None or progress is False:
        return None
    if progress is True:
        return Progress(total=total, desc=desc)
    if callable(getattr(progress, "update", None)):
        return _External(progress)
    raise TypeError("progress must be True, False, or an object with an update(n) method "
                    f"(such as a tqdm bar), not {progress!r}")


def known_length(*iterables):
    """The number of items zip(*iterables) yields, when every iterable has a length; else None."""
    try:
        return min(len(it) for it in iterables)
    except (TypeError, ValueError):
        return None
