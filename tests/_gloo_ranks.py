"""The ranks of a data-parallel run started by the tests themselves, without a launcher process.

torchrun (``python -m torch.distributed.run``) is one more interpreter and torch import (~2.5 s of CPU) that
only hands each rank its environment: RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and
MASTER_PORT, all that ``diffkit.distributed.setup`` reads (``init_process_group``'s env:// rendezvous). The
tests comparing N ranks with one process start the ranks here; diffkit's own torchrun launch
(``train --nproc``) keeps its tests in test_distributed.
"""
import os
import socket
import subprocess
import sys
from types import SimpleNamespace


def run_ranks(argv, nproc, timeout=300):
    """``python -m diffkit <argv>`` as ``nproc`` gloo ranks on this host: the first nonzero exit status
    (0 when all succeed) and the ranks' stdout and stderr, joined in rank order, as subprocess.run gives."""
    with socket.socket() as free:  # a free port for the rendezvous, as torchrun --standalone picks one
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
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
