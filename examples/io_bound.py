"""Many I/O waits: fetch pages from a local HTTP server with coroutine tasks on shoal.

    python examples/io_bound.py [REQUESTS]

A local server (stdlib asyncio, in its own process) answers each request after 20 ms.
The same requests are made three ways and timed:

- 100 threads (concurrent.futures.ThreadPoolExecutor), each blocking in urllib;
- shoal with coroutine tasks: 2 worker processes, each running up to 50 ``async def``
  tasks at once in its own event loop (``Executor(2, concurrency=50)``; uvloop when it is
  installed, ``pip install uvloop``, which halves the CPU each connection costs);
- the same from inside ``async def``: ``await ex.submit(...)``.

With 100 requests in flight, 500 requests of 20 ms take 100 ms at best.
"""
import asyncio
import concurrent.futures
import multiprocessing
import sys
import time
import urllib.request

import shoal

DELAY_S = 0.020


# ---- the server: GET /page/<i> -> "page <i>" after DELAY_S, a fresh connection each ----

def serve(port_queue):
    async def answer(reader, writer):
        request = await reader.readuntil(b"\r\n\r\n")
        path = request.split(b" ", 2)[1].decode()
        await asyncio.sleep(DELAY_S)
        body = f"page {path.rsplit('/', 1)[-1]}".encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                     % (len(body), body))
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(answer, "127.0.0.1", 0, backlog=1024)
        port_queue.put(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


# ---- the clients ----

def fetch(url):
    """Blocking, for threads."""
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode()


async def afetch(url):
    """A coroutine task: runs in a shoal worker's event loop."""
    host, port = url.split("/")[2].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    path = "/" + url.split("/", 3)[3]
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise OSError(f"bad answer: {head[:40]!r}")
    return body.decode()


def timed(label, run, urls):
    """Runs `run(urls)` once to warm up (threads started, workers' event loops created) on a
    tenth of the URLs, then times it on all of them."""
    run(urls[: max(1, len(urls) // 10)])
    t0 = time.perf_counter()
    pages = run(urls)
    seconds = time.perf_counter() - t0
    assert pages == [f"page {i}" for i in range(len(urls))], "wrong pages"
    ideal = len(urls) * DELAY_S / 100
    print(f"{label:<46} {seconds * 1e3:6.0f} ms  ({seconds / ideal:.1f}x the ideal {ideal * 1e3:.0f} ms)")


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    ctx = multiprocessing.get_context("spawn")
    ports = ctx.Queue()
    server = ctx.Process(target=serve, args=(ports,), daemon=True)
    server.start()
    port = ports.get(timeout=30)
    urls = [f"http://127.0.0.1:{port}/page/{i}" for i in range(n)]
    print(f"{n} requests, each answered after {DELAY_S * 1e3:.0f} ms, 100 in flight:")
    try:
        with concurrent.futures.ThreadPoolExecutor(100) as threads:
            timed("threads: ThreadPoolExecutor(100).map", lambda us: list(threads.map(fetch, us)), urls)

        with shoal.Executor(2, concurrency=50) as ex:
            loop = "uvloop" if _has_uvloop() else "asyncio's loop"  # event_loop="auto"
            timed(f"shoal: Executor(2, concurrency=50).map ({loop})", lambda us: list(ex.map(afetch, us)), urls)

            async def gather(us):
                return await asyncio.gather(*(ex.submit(afetch, u) for u in us))

            timed("shoal: asyncio.gather(await ex.submit(...))", lambda us: asyncio.run(gather(us)), urls)
    finally:
        server.terminate()
        server.join()


def _has_uvloop():
    import importlib.util

    return importlib.util.find_spec("uvloop") is not None


if __name__ == "__main__":
    main()
