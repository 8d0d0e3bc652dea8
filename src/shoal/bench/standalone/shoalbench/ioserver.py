"""io_bound's HTTP server: an asyncio server (uvloop when installed) in its own process
that answers ``GET /n/<i>`` with ``i*i`` after a fixed delay, and ``GET /stats`` at once
with the most requests it held at the same time since the previous ``/stats``.

    python ioserver.py DELAY_MS     # prints its port, serves until stdin closes

It runs in a process of its own so that its latency does not depend on the GIL of the
system being measured. Each request is a fresh connection (``Connection: close``).

It stands for a remote service, whose CPU is not the client's: on uvloop when that is
installed (~50 us of CPU per request instead of ~100 us on asyncio's loop), it takes less
of the two cores that the systems being measured share with it, the same for every system.
"""
import asyncio
import contextlib
import os
import subprocess
import sys
import threading


class _Handler(asyncio.Protocol):
    stats = {"now": 0, "peak": 0}

    def __init__(self, delay):
        self.delay = delay
        self.data = b""
        self.transport = None
        self.counted = False

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if self.counted or self.data is None:
            return
        self.data += data
        if b"\r\n\r\n" not in self.data:
            if len(self.data) > 65536:
                self.transport.close()
            return
        line = self.data.split(b"\r\n", 1)[0].split(b" ")
        self.data = None
        path = line[1].decode("ascii", "replace") if len(line) > 2 else ""
        if path == "/stats":
            stats = self.stats
            self._answer(200, str(stats["peak"]).encode())
            stats["peak"] = stats["now"]
            return
        try:
            i = int(path.rsplit("/", 1)[1]) if path.startswith("/n/") else None
        except ValueError:
            i = None
        if i is None:
            self._answer(404, b"0")
            return
        stats = self.stats
        stats["now"] += 1
        stats["peak"] = max(stats["peak"], stats["now"])
        self.counted = True
        asyncio.get_running_loop().call_later(self.delay, self._answer, 200, str(i * i).encode())

    def _answer(self, status, body):
        if self.counted:
            self.stats["now"] -= 1
            self.counted = False
        if self.transport.is_closing():
            return
        reason = b"OK" if status == 200 else b"Not Found"
        self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                             b"Connection: close\r\n\r\n%s" % (status, reason, len(body), body))
        self.transport.close()

    def connection_lost(self, exc):
        if self.counted:
            self.stats["now"] -= 1
            self.counted = False


async def _serve(delay):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Handler(delay), "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def main(argv):
    delay = float(argv[0]) / 1e3

    def parent_gone():  # stdin closes when the benchmark ends (or dies)
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=parent_gone, daemon=True).start()
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(delay))
    else:
        uvloop.run(_serve(delay))


def loop_name():
    """The loop this server runs on, and Ray's and shoal's workers by default: uvloop when
    it is installed (for the benchmark's notes)."""
    import importlib.util

    return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio's loop"


@contextlib.contextmanager
def running(delay_ms):
    """Starts the server in a child process; yields its base URL (``http://127.0.0.1:PORT``)."""
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(delay_ms)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = proc.stdout.readline().strip()
        if not port.isdigit():
            raise RuntimeError(f"the io_bound server did not start (exit {proc.poll()})")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def peak(base):
    """The most requests the server held at once since the last call (and resets it)."""
    from .tasks import fetch

    return fetch(f"{base}/stats")


if __name__ == "__main__":
    main(sys.argv[1:])
