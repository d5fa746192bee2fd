"""The persistent compilation cache across the processes of one run: JAX hashes the CPU client's
topology into the cache key, which differs between processes, and only process 0 writes the cache,
so without ``enable_compilation_cache``'s fix the other processes compiled every program again on
each rerun or resume (minutes for the train step)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import child_env

ROOT = Path(__file__).resolve().parents[1]

# One process of a two-process run: a program over a mesh spanning both (a sum across them), run once;
# prints how many compilations went to the persistent cache and how many of them it answered.
WORKER = r"""
import sys
import jax, jax.numpy as jnp, numpy as np
from jax import monitoring
from jax_instant4d.train.distributed import enable_compilation_cache

cache, port, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
counts = {"/jax/compilation_cache/compile_requests_use_cache": 0, "/jax/compilation_cache/cache_hits": 0}

def count(name, **kwargs):
    if name in counts:
        counts[name] += 1

monitoring.register_event_listener(count)
enable_compilation_cache(cache, ".")
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # cache these tiny programs too
jax.distributed.initialize(f"127.0.0.1:{port}", 2, pid)
mesh = jax.make_mesh((2,), ("d",), axis_types=(jax.sharding.AxisType.Explicit,))
x = jax.make_array_from_process_local_data(jax.sharding.NamedSharding(mesh, jax.P("d")),
                                           np.arange(4, dtype=np.float32)[None] + pid)
value = float(jax.jit(lambda a: (jnp.sin(a) * 2 + 1).sum())(x))
requests, hits = counts.values()
print(f"process {pid}: requests {requests} hits {hits} value {value!r}")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cache: Path) -> list[tuple[int, int, str]]:
    env = child_env(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(cache), port, str(i)], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    out = []
    for i, p in enumerate(procs):
        try:
            text, _ = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("a worker did not finish")
        assert p.returncode == 0, text[-3000:]
        line = next(ln for ln in text.splitlines() if ln.startswith(f"process {i}:"))
        words = line.split()
        out.append((int(words[3]), int(words[5]), words[7]))
    return out


def test_a_rerun_of_two_processes_finds_every_program_in_the_cache(tmp_path):
    first = _run(tmp_path / "cache")
    second = _run(tmp_path / "cache")
    assert first[0][2] == first[1][2] == second[0][2] == second[1][2]  # one result, everywhere, both times
    assert first[0][1] == 0 and first[0][0] >= 1  # process 0 compiled and wrote
    for requests, hits, _ in second:
        assert requests >= 1 and hits == requests, second  # process 1 too: nothing compiled again
