"""The ranks of a data-parallel run started by the tests themselves, without a launcher process.

torchrun (``python -m torch.distributed.run``) is one more interpreter and torch import (~2.5 s of CPU) that
only hands each rank its environment: RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and
MASTER_PORT, all that ``diffkit.distributed.setup`` reads (``init_process_group``'s env:// rendezvous). The
tests comparing N ranks with one process start the ranks here; diffkit's own torchrun launch
(``train --nproc``) keeps its tests in test_distributed. :func:`fork_ranks` forks the ranks from the test
process instead (no interpreter start nor torch import at all), for tests about what the ranks compute.
"""
import os
import socket
import subprocess
import sys
from types import SimpleNamespace


def _rank_environment(nproc):
    """torchrun's variables shared by the ``nproc`` ranks (RANK and LOCAL_RANK are each rank's own)."""
    with socket.socket() as free:  # a free port for the rendezvous, as torchrun --standalone picks one
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    return {"OMP_NUM_THREADS": "1", "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def run_ranks(argv, nproc, timeout=300):
    """``python -m diffkit <argv>`` as ``nproc`` gloo ranks on this host: the first nonzero exit status
    (0 when all succeed) and the ranks' stdout and stderr, joined in rank order, as subprocess.run gives."""
    env = {**os.environ, **_rank_environment(nproc)}
    ranks = [subprocess.Popen([sys.executable, "-m", "diffkit", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)})
             for rank in range(nproc)]
    try:
        outputs = [proc.communicate(timeout=timeout) for proc in ranks]
    finally:
        for proc in ranks:
            proc.kill()
            proc.wait()
    codes = [proc.returncode for proc in ranks]
    return SimpleNamespace(returncode=next((code for code in codes if code), 0),
                           stdout="".join(out for out, _ in outputs), stderr="".join(err for _, err in outputs))


def fork_ranks(argv, nproc, timeout=300):
    """As :func:`run_ranks`, the ranks forked from this process instead of started as ``python -m diffkit``:
    each is a process of its own (its own gloo rank, memory and random state) that already holds torch and
    diffkit, so no interpreter start and torch import (~2 s of CPU each, 5+ s of wall time on a loaded
    machine). Each child runs ``diffkit.cli.main(argv)`` with the rank's environment and leaves by
    ``os._exit`` (never back into pytest). Safe here: the suite keeps torch single-threaded (conftest), so
    no OpenMP pool is forked. The real ``python -m diffkit`` ranks stay tested through :func:`run_ranks`
    (test_distributed)."""
    import tempfile
    import time
    env = _rank_environment(nproc)
    files, pids = [], []
    sys.stdout.flush(), sys.stderr.flush()
    for rank in range(nproc):
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        files.append((out, err))
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout, sys.stderr = out, err
                os.environ.update(env, RANK=str(rank), LOCAL_RANK=str(rank))
                from diffkit.cli import main
                code = main(list(argv))
            except SystemExit as exit_:  # argparse's errors and --help / --version, as the interpreter exits
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                try:
                    out.flush(), err.flush()
                finally:
                    os._exit(code if isinstance(code, int) else 1)
        pids.append(pid)
    codes, deadline = {}, time.monotonic() + timeout
    try:
        while len(codes) < nproc:
            for pid in pids:
                if pid not in codes:
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        codes[pid] = os.waitstatus_to_exitcode(status)
            if len(codes) < nproc:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"ranks still running after {timeout} s")
                time.sleep(0.05)
    finally:
        for pid in pids:
            if pid not in codes:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
    texts = []
    for out, err in files:
        out.seek(0), err.seek(0)
        texts.append((out.read(), err.read()))
        out.close(), err.close()
    return SimpleNamespace(returncode=next((codes[pid] for pid in pids if codes[pid]), 0),
                           stdout="".join(o for o, _ in texts), stderr="".join(e for _, e in texts))
