"""The task functions every system runs: same code, same data, for every peer."""
# Top-level, importable functions so that plain pickle (multiprocessing), cloudpickle
# (loky, Ray, Dask, shoal) and fork-based pools all ship them by reference.
# numpy is imported inside the functions that need it, so that importing this module
# costs a worker nothing.
import os
import time


def identity(x):
    """round_trip, submit_throughput, startup: returns its argument."""
    return x


def inc(x):
    """map_tiny: the per-item work is one addition."""
    return x + 1


def spin(iterations):
    """map_cpu: pure-Python busy work (an LCG), calibrated by the runner to ~1 ms."""
    x = 1
    for _ in range(iterations):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
    return x


def matmul_chain(seed, products, n):
    """map_numpy: ``products`` products of two n x n matrices (BLAS dgemm), from ``seed``.

    The factor has spectral radius ~1 (normal entries / sqrt(n)), so 20 products neither overflow
    nor vanish; the result is the sum of the last product (compared with a tolerance: BLAS sums
    in another order with another number of threads)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n))
    b = rng.standard_normal((n, n)) / np.sqrt(n)
    for _ in range(products):
        a = a @ b
    return float(a.sum())


def array_sum(array, index):
    """big_args: reads the whole shared array, returns a float."""
    return float(array.sum()) + index


def make_array(nbytes, index):
    """big_results: returns a freshly written array of ``nbytes`` bytes."""
    import numpy as np

    return np.full(nbytes // 8, float(index))


def sum_range(r):
    """seed_map: the seed notebook's ``sum`` over a ``range`` (wrapped: Ray cannot remote a builtin)."""
    return sum(r)


def numpy_worker_pid(sleep_s):
    """worker_memory: imports numpy, holds the worker for ``sleep_s`` so that every worker gets one."""
    import numpy  # noqa: F401

    time.sleep(sleep_s)
    return os.getpid()


def apply_chunk(fn, chunk):
    """Runs ``fn`` over a chunk of items: the batching Ray's docs recommend for tiny tasks."""
    return [fn(x) for x in chunk]


# ---- io_bound: one GET of http://host:port/n/<i> (answer: i*i), a fresh connection each.
# The blocking and the coroutine version send the same bytes and parse the answer with the
# same code (stdlib only), so threads, process pools and coroutines run the same request.

def _request(url):
    """(host, port, request bytes) for a GET of ``url`` (``http://host:port/path``)."""
    if not url.startswith("http://"):
        raise ValueError(f"not an http:// URL: {url!r}")
    hostport, _, path = url[len("http://"):].partition("/")
    host, _, port = hostport.partition(":")
    request = f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    return host, int(port or 80), request.encode("ascii")


def _parse(data):
    """The integer body of a complete ``200`` answer; anything else raises."""
    head, sep, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if not sep or len(status) < 2 or status[1] != b"200":
        raise OSError(f"bad HTTP answer: {data[:80]!r}")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and int(value) != len(body):
            raise OSError(f"truncated HTTP answer: {len(body)} of {int(value)} bytes")
    return int(body)


def fetch(url):
    """io_bound (threads, process pools): one GET with a blocking socket."""
    import socket

    host, port, request = _request(url)
    with socket.create_connection((host, port), timeout=60) as s:
        s.sendall(request)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return _parse(b"".join(chunks))


async def afetch(url):
    """io_bound (coroutines): the same GET with asyncio streams."""
    import asyncio

    host, port, request = _request(url)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        data = await reader.read()  # to EOF: the server closes after its answer
    finally:
        writer.close()
    return _parse(data)

# --- sweep: a cadCAD-style stochastic state-update model over a large shared table ------


def sweep_table(nbytes, seed=12345):
    """The shared read-only table of the sweep workload: demand profiles, ``nbytes`` of float64."""
    import numpy as np

    return np.random.Generator(np.random.PCG64(seed)).uniform(0.0, 3.0, nbytes // 8)


def sweep_model(table, alpha, beta, rng, steps=500):
    """One Monte Carlo run: ``steps`` state updates of a small market (price, stock, cash).
    Each step the policies read 64 random entries of ``table`` (demand) and draw a price
    shock from ``rng``; the state update functions apply them. Returns the final state."""
    n = table.shape[0]
    price, stock, cash = 1.0, 100.0, 0.0
    for _ in range(steps):
        # policies: demand from the shared table, a price shock, a restocking order
        demand = alpha * float(table[rng.integers(0, n, size=64)].sum())
        shock = beta * float(rng.standard_normal())
        order = max(0.0, 120.0 - stock)
        # state updates
        sold = min(stock, demand)
        stock = stock - sold + order
        cash += price * sold - 0.8 * order
        price = max(0.1, price * (1.0 + 0.002 * (demand - 96.0) + 0.01 * shock))
    return {"price": price, "stock": stock, "cash": cash}


def sweep_rng(seed, index):
    """Task ``index``'s generator: SeedSequence(seed).spawn(n)[index], as shoal's sweep derives it."""
    import numpy as np

    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(index,))))


def sweep_task(table, alpha, beta, seed, index, steps):
    """One sweep task for the peers: the same model, the same generator as shoal's task ``index``."""
    return sweep_model(table, alpha, beta, sweep_rng(seed, index), steps)


_SWEEP_TABLE = None


def set_sweep_table(table):
    """Pool initializer (multiprocessing, concurrent.futures): the table, inherited by fork."""
    global _SWEEP_TABLE
    _SWEEP_TABLE = table


def sweep_task_global(alpha, beta, seed, index, steps):
    """sweep_task reading the table that set_sweep_table left in this worker."""
    return sweep_model(_SWEEP_TABLE, alpha, beta, sweep_rng(seed, index), steps)


# ---------------------------------------------------------------- agents

HORIZON = 48   # hours in a battery's schedule
HISTORY = 26   # past schedules an agent keeps: 26 x 48 float64 = 9,984 bytes of state


class Battery:
    """agents: a home battery that bids a 48-hour charge schedule against a price forecast.

    ``bid(prices)`` solves min_p prices.p + rho/2 |p - previous|^2 + mu/2 |soc(p) - target|^2
    subject to |p| <= power by ``iterations`` steps of projected gradient (numpy, ~10 us per
    step; the runner calibrates ``iterations`` to the workload's task time), remembers the
    schedule and executes its first hour. Only elementwise operations and cumsum are used, so
    the result is bit-identical in every process. State: ~10 KB (mostly ``history``).
    """

    def __init__(self, index, capacity, power, iterations):
        import numpy as np

        rng = np.random.default_rng(index)
        self.index = index
        self.capacity = float(capacity)
        self.power = float(power)
        self.iterations = int(iterations)
        self.soc = 0.5 * self.capacity
        self.target = self.capacity * rng.uniform(0.3, 0.7, HORIZON)
        self.schedule = np.zeros(HORIZON)
        self.history = np.zeros((HISTORY, HORIZON))
        self.steps = 0

    def bid(self, prices):
        import numpy as np

        prev = self.schedule
        offset = self.soc - self.target
        lr, rho, mu, power = 0.05, 0.5, 0.02, self.power
        p = prev
        for _ in range(self.iterations):
            gap = np.cumsum(p)                                   # state of charge ...
            gap += offset                                        # ... minus the target
            back = np.cumsum(gap[::-1])[::-1]                    # gradient of the soc term
            back *= mu
            grad = p - prev
            grad *= rho
            grad += prices
            grad += back
            grad *= lr
            p = p - grad
            np.maximum(p, -power, out=p)                         # project onto |p| <= power
            np.minimum(p, power, out=p)
        self.history[self.steps % HISTORY] = p
        self.steps += 1
        shifted = np.empty(HORIZON)                              # warm start, one hour later
        shifted[:-1] = p[1:]
        shifted[-1] = p[-1]
        self.schedule = shifted
        self.soc = min(self.capacity, max(0.0, self.soc + float(p[0])))
        return p if p is not prev else p.copy()


def battery_args(n, iterations):
    """Init arguments of n batteries (a dict each: keyword arguments)."""
    return [{"index": i, "capacity": 5.0 + (i % 7), "power": 1.0 + (i % 3) * 0.5,
             "iterations": iterations} for i in range(n)]


def price_forecast(step, feedback):
    """The price forecast of market hour ``step``: a daily shape plus the last step's feedback."""
    import numpy as np

    hours = np.arange(step, step + HORIZON)
    return 0.3 + 0.1 * np.sin(2 * np.pi * hours / 24) + feedback


def step_batch(agents, method, *args):
    """The joblib pattern: a batch of agents travels to a worker, steps, and travels back."""
    results = [getattr(a, method)(*args) for a in agents]
    return agents, results


class AgentShard:
    """Ray's pattern: one actor per worker holding a shard of the agents."""

    def __init__(self, cls, init_args):
        self.agents = [cls(**a) for a in init_args]

    def call(self, method, *args):
        return [getattr(a, method)(*args) for a in self.agents]

    def size(self):
        return len(self.agents)


def calibrate_battery(task_us, probes=5):
    """Iterations of Battery.bid that take about ``task_us`` microseconds here (best of ``probes``)."""
    import numpy as np

    def per_call(iterations):
        a = Battery(0, 6.0, 1.0, iterations)
        prices = price_forecast(0, np.zeros(HORIZON))
        best = float("inf")
        for _ in range(probes):
            t0 = time.perf_counter()
            for _ in range(20):
                a.bid(prices)
            best = min(best, (time.perf_counter() - t0) / 20)
        return best

    base = per_call(0)   # the fixed part: copies, history, shift
    step = (per_call(40) - base) / 40
    return max(1, round((task_us * 1e-6 - base) / step)) if step > 0 else 1


def market_steps(call, n, steps):
    """The agents workload's loop, the same for every system: each market hour the driver
    sends the forecast to every agent (``call("bid", prices)`` returns the n bids in agent
    order), clears a simple market (the mean bid moves the next forecast) and feeds the price
    back. Returns a digest of every hour's clearing and the last bids, equal across systems
    exactly when their results are bit-identical."""
    import hashlib

    import numpy as np

    feedback = np.zeros(HORIZON)
    digest = hashlib.sha1()
    for step in range(steps):
        prices = price_forecast(step, feedback)
        bids = call("bid", prices)
        if len(bids) != n:
            raise AssertionError(f"wrong result: {len(bids)} bids from {n} agents")
        stacked = np.stack(bids)
        feedback = 0.05 * stacked.mean(axis=0)
        digest.update(feedback.tobytes())
    digest.update(stacked.tobytes())
    return digest.hexdigest()[:16]


def agents_reference(n, steps, iterations):
    """The digest of market_steps with the agents in a plain loop here (the runner's reference)."""
    agents = [Battery(**a) for a in battery_args(n, iterations)]
    return market_steps(lambda method, *args: [getattr(a, method)(*args) for a in agents], n, steps)


def array_tail_sum(a, i):
    """mpi_big_args: reads a large shared array (the sum of its items from i on)."""
    return float(a[i:].sum())


class LightAgent:
    """mpi_agents: a light agent (a few floats of state, a few operations per step)."""

    def __init__(self, index):
        self.wealth = 100.0 + index % 7
        self.rate = 0.01 * (1 + index % 5)

    def step(self, price):
        self.wealth += self.rate * (price - 1.0) * self.wealth
        return self.wealth


def step_agents(agents, price):
    """mpi_agents, the pickling pattern: the agents travel to a worker, step, and travel back."""
    return agents, [a.step(price) for a in agents]
