"""Native thread pools (BLAS, OpenMP, MKL, numexpr) in worker processes, sized to each worker's share.

Three places act on them (docs/threads.md has the design):

* the driver computes one :func:`worker_plan` per executor: the variables to set in its
  workers and the thread count of each library already loaded there;
* the zygote starts with :func:`zygote_defaults` (one thread for every pool the user left unset,
  before it imports anything), so it never starts pool threads of its own and a pool it
  preloads can be raised later;
* each worker runs :func:`apply` at its setup: the variables for libraries it loads later, and a
  runtime limit (threadpoolctl, through the controller the zygote built after its imports;
  numexpr's own call) for those the zygote already loaded.

Importing this module costs nothing beyond ``os`` and ``sys``: the zygote and every worker import it.
"""
import os
import sys

INHERIT = "inherit"

# Each library's variables in the order it reads them (the first one set wins); the first is its own.
# The keys of the runtime limits are threadpoolctl's ``internal_api`` names (and "numexpr").
CHAINS = {
    "openmp": ("OMP_NUM_THREADS",),
    "openblas": ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"),
    "mkl": ("MKL_NUM_THREADS", "OMP_NUM_THREADS"),
    "blis": ("BLIS_NUM_THREADS", "OMP_NUM_THREADS"),
    "flexiblas": ("OMP_NUM_THREADS",),  # a BLAS front end: OpenMP's variable, as its backends
    "numexpr": ("NUMEXPR_NUM_THREADS", "OMP_NUM_THREADS"),
    "veclib": ("VECLIB_MAXIMUM_THREADS",),
    "numba": ("NUMBA_NUM_THREADS",),
}
VARIABLES = tuple(dict.fromkeys(v for chain in CHAINS.values() for v in chain))

# What the zygote sets to 1 when the user has not: pools that a runtime call can raise later.
# Not NUMBA_NUM_THREADS (numba's pool size is fixed when it loads) nor VECLIB_MAXIMUM_THREADS
# (Accelerate has no runtime call): a worker's own variables size those, when they load there.
ZYGOTE_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                    "NUMEXPR_NUM_THREADS")

# File name prefixes of the libraries threadpoolctl controls: a zygote that maps none of them
# does not import threadpoolctl (~40 ms), and its workers need no runtime limit.
_LIBRARY_PREFIXES = ("libopenblas", "libscipy_openblas", "libblas", "libblis", "libmkl_rt", "libflexiblas",
                     "libgomp", "libiomp", "libomp")

# A library's own count when nothing is set, for "inherit" (a fresh process): BLIS runs
# single-threaded unless told otherwise; the others use every core they may run on.
_UNSET_DEFAULT_ONE = ("blis",)


def check(value):
    """Executor(threads_per_worker=...): None, "inherit" or an int >= 1; else ValueError."""
    if value is None or value == INHERIT:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(f"threads_per_worker must be None, 'inherit' or a positive int, not {value!r}")


def available_cores():
    """The cores this process may run on (its affinity mask, as OpenBLAS and OpenMP count them)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_for(setting, workers):
    """Threads per worker for ``setting``: the int itself, or max(1, cores // workers) for None;
    None for "inherit"."""
    if setting == INHERIT:
        return None
    if setting is None:
        return max(1, available_cores() // workers)
    return setting


def _count(text):
    """A thread count from a variable's text ("4"; OpenMP's nested "4,2" gives 4), or None."""
    try:
        n = int(text.split(",")[0].strip())
    except (ValueError, AttributeError):
        return None
    return n if n >= 1 else None


def worker_plan(setting, workers, environ=None):
    """``(variables, limits)`` for the workers of one executor, from the driver's environment.

    ``variables`` maps each variable to the text to set in the worker, or None to remove it;
    ``limits`` maps a library (threadpoolctl's ``internal_api``, or "numexpr") to its thread
    count, for libraries already loaded in the worker.

    With the default (None) a variable the user set in the driver keeps its value, and a library
    whose variables the user set gets the count they say, as the library itself reads them
    (``OMP_NUM_THREADS`` also sizes OpenBLAS, MKL, BLIS and numexpr when their own variable is
    unset). An int is the caller's explicit choice: it sets every pool (as joblib's
    ``inner_max_num_threads`` does). "inherit": the driver's variables, and the libraries' own
    counts."""
    environ = os.environ if environ is None else environ
    n = threads_for(setting, workers)
    explicit = isinstance(setting, int)
    user = {} if explicit else {v: environ[v] for v in VARIABLES if environ.get(v, "").strip()}
    variables = {v: user.get(v) for v in VARIABLES}  # None: removed (a zygote default, say)
    if explicit:
        del variables["GOTO_NUM_THREADS"]  # OpenBLAS reads its own variable first: left as it is
    limits = {}
    for lib, chain in CHAINS.items():
        said = next((user[v] for v in chain if v in user), None)
        if said is not None:
            count = _count(said)  # not a count: the library is left alone
        elif n is None:
            count = 1 if lib in _UNSET_DEFAULT_ONE else available_cores()
        else:
            count = n
            variables[chain[0]] = str(n)
        if count is not None:
            limits[lib] = count
    return variables, limits


def zygote_defaults(environ=None):
    """In the zygote, before it imports anything: one thread for each pool the user left unset.
    Returns the names it set."""
    environ = os.environ if environ is None else environ
    done = []
    for v in ZYGOTE_VARIABLES:
        if not environ.get(v, "").strip():
            environ[v] = "1"
            done.append(v)
    return done


def loaded_libraries():
    """True if this process may map a library threadpoolctl controls (Linux: read from
    /proc/self/maps; elsewhere: always True)."""
    try:
        with open("/proc/self/maps", "rb") as f:
            maps = f.read()
    except OSError:
        return True
    return any(b"/" + p.encode() in maps for p in _LIBRARY_PREFIXES)


# The zygote's threadpoolctl controller of the pools it loaded (None: it loaded none). Built
# there once, so a worker forked from it shares its pages instead of building its own (~1 MB of
# USS per worker, past the 2 MB an idle worker may cost).
_controller = None


def zygote_imported():
    """In the zygote, after it imported modules: if they loaded a native pool, builds the
    threadpoolctl controller of the pools now loaded (for the workers forked from now on)."""
    global _controller
    if not loaded_libraries():
        return
    try:
        import threadpoolctl
    except ImportError:
        return
    _controller = threadpoolctl.ThreadpoolController()


def apply(plan):
    """In a worker, at its setup: sets the variables of ``plan`` (see :func:`worker_plan`) for
    libraries loaded from now on, and sets the count of those the zygote already loaded (through
    threadpoolctl when it is installed; without it they keep the zygote's one thread). A worker
    runs nothing before its setup: what the zygote loaded is all that is loaded."""
    variables, limits = plan
    for name, value in variables.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    numexpr = sys.modules.get("numexpr")
    if numexpr is not None and "numexpr" in limits:
        numexpr.set_num_threads(limits["numexpr"])
    if _controller is not None:
        for lib in _controller.lib_controllers:
            count = limits.get(lib.internal_api)
            if count is not None and lib.num_threads != count:
                lib.set_num_threads(count)
