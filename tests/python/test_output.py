"""Worker output: print() and sys.stderr writes in a task reach the caller's
sys.stdout / sys.stderr before the task's future completes, under every backend."""

import json
import sys
import uuid


from helpers import run_python


def talk(token):
    print(f"out-{token}")
    sys.stderr.write(f"err-{token}\n")
    return token


def talk_partial(token):
    sys.stdout.write(f"partial-out-{token}")  # no newline, no flush
    sys.stderr.write(f"partial-err-{token}")
    return token


def talk_lots(token, lines):
    for i in range(lines):
        print(f"{token}-{i:06d} " + "x" * 90)
    return lines


def test_print_reaches_caller_before_result(capsys, executor):
    token = uuid.uuid4().hex
    assert executor.submit(talk, token).result(timeout=30) == token
    out, err = capsys.readouterr()  # read right away: no waiting for output to trickle in
    assert out.count(f"out-{token}\n") == 1, out
    assert err.count(f"err-{token}\n") == 1, err


def test_partial_line_is_flushed_before_result(capsys, executor):
    token = uuid.uuid4().hex
    assert executor.submit(talk_partial, token).result(timeout=30) == token
    out, err = capsys.readouterr()
    assert f"partial-out-{token}" in out
    assert f"partial-err-{token}" in err


def test_prints_from_map(capsys, executor):
    tokens = [uuid.uuid4().hex for _ in range(50)]
    assert list(executor.map(talk, tokens, chunksize=5)) == tokens
    out, err = capsys.readouterr()
    for token in tokens:
        assert out.count(f"out-{token}\n") == 1
        assert err.count(f"err-{token}\n") == 1


def test_large_output_does_not_block(capsys, executor):
    token = uuid.uuid4().hex
    lines = 20_000  # about 2 MB: far more than a pipe buffer
    assert executor.submit(talk_lots, token, lines).result(timeout=30) == lines
    out, _ = capsys.readouterr()
    seen = [int(line[len(token) + 1:len(token) + 7]) for line in out.splitlines() if line.startswith(f"{token}-")]
    missing = sorted(set(range(lines)) - set(seen))
    assert not missing, f"{len(missing)} of {lines} lines lost, e.g. {missing[:10]}"
    assert seen == list(range(lines)), "lines arrived out of order or twice"


NOTEBOOK_LIKE = """
import io, json, sys
import shoal

def talk(token):
    print("out-" + token)
    sys.stderr.write("err-" + token + "\\n")
    return token

ex = shoal.Executor(max_workers=2, backend=sys.argv[1])
ex.submit(talk, "before").result(timeout=30)
# Like a notebook cell: sys.stdout / sys.stderr are replaced after the executor exists.
real_out, real_err = sys.stdout, sys.stderr
cell_out, cell_err = io.StringIO(), io.StringIO()
sys.stdout, sys.stderr = cell_out, cell_err
try:
    ex.submit(talk, "in-cell").result(timeout=30)
finally:
    sys.stdout, sys.stderr = real_out, real_err
ex.submit(talk, "after").result(timeout=30)
ex.shutdown()
print("CELL " + json.dumps([cell_out.getvalue(), cell_err.getvalue()]), flush=True)
"""


def test_output_follows_the_callers_current_streams(backend):
    proc = run_python(NOTEBOOK_LIKE, backend)
    assert proc.returncode == 0, proc.stderr
    cell_out, cell_err = json.loads(proc.stdout.split("CELL ", 1)[1])
    assert cell_out == "out-in-cell\n", cell_out
    assert cell_err == "err-in-cell\n", cell_err
    out_lines = proc.stdout.splitlines()
    err_lines = proc.stderr.splitlines()
    assert out_lines.count("out-before") == 1 and out_lines.count("out-after") == 1, proc.stdout
    assert "out-in-cell" not in out_lines, "output bypassed the caller's sys.stdout"
    assert err_lines.count("err-before") == 1 and err_lines.count("err-after") == 1, proc.stderr
    assert "err-in-cell" not in err_lines, "output bypassed the caller's sys.stderr"
