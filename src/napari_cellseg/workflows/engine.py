"""The distributed engine shared by whole slides (:mod:`.large`) and batches of frames
(:mod:`napari_cellseg.batch`): dask.distributed, never a scheduler of our own.

* :func:`client_for` joins a scheduler (``tcp://host:8786``), uses a given ``Client``, or
  starts a ``LocalCluster`` on 127.0.0.1 sized to the machine;
* :func:`threads_per_host` / :func:`set_threads` give torch as many threads per task as
  the host's cores allow (the nanny sets ``OMP_NUM_THREADS=1`` in its workers);
* :func:`gpu_resources`: tasks on CUDA ask for a ``GPU`` resource where workers declare
  one (``dask worker --resources GPU=1``), so one task at a time holds each GPU.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

__all__ = ["client_for", "gpu_resources", "set_threads", "threads_per_host", "unique_token"]

GIB_PER_WORKER = 3  # a local worker's share of memory (a 4096 px block peaks below 3 GiB)


def client_for(client=None, scheduler: str | None = None, workers: int | None = None,
               processes: bool = True, device: str = "cpu"):
    """(client, what to close at the end): ``client`` itself, a client of ``scheduler``,
    or a new ``LocalCluster`` of ``workers`` single-thread workers (default: one per
    core, fewer when memory is short) on 127.0.0.1."""
    if client is not None:
        return client, []
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:  # an optional extra: say how to get it, not a traceback
        raise RuntimeError(f"the distributed engine needs dask.distributed ({err}); install it with: "
                           "pip install 'napari-cellseg[large]'") from err

    if scheduler:
        try:
            c = Client(scheduler, timeout="20s")
        except OSError as err:
            raise OSError(f"cannot reach the dask scheduler at {scheduler}: {err}") from err
        return c, [c]
    n = workers or max(1, min(os.cpu_count() or 1, _memory_gib() // GIB_PER_WORKER))
    if int(n) < 1:
        raise ValueError(f"workers must be at least 1, got {n}")
    # Loopback only; threads in this process talk in-process.
    where = {"host": "127.0.0.1"} if processes else {}
    if str(device).startswith("cuda"):
        where["resources"] = {"GPU": 1}  # the local GPU, one task at a time per worker
    cluster = LocalCluster(n_workers=int(n), threads_per_worker=1, processes=processes,
                           dashboard_address="127.0.0.1:0", **where)
    c = Client(cluster)
    return c, [c, cluster]


def _memory_gib() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    except (ValueError, OSError, AttributeError):
        return 4


def _workers(client) -> dict:
    try:
        return client.scheduler_info(n_workers=-1)["workers"]
    except TypeError:  # older distributed: every worker by default
        return client.scheduler_info()["workers"]


def threads_per_host(client) -> dict:
    """Torch threads for each worker (by address, ``"*"`` for any other): its host's cores
    shared by the tasks that run there at once."""
    workers = _workers(client)
    cores = client.run(os.cpu_count)
    host = {a: a.split("//")[-1].rsplit(":", 1)[0] for a in workers}
    tasks: dict[str, int] = {}
    for a, w in workers.items():
        tasks[host[a]] = tasks.get(host[a], 0) + int(w.get("nthreads", 1))
    out = {a: max(1, int(cores.get(a) or 1) // tasks[host[a]]) for a in workers}
    out["*"] = min(out.values()) if out else 1
    return out


def set_threads(threads: dict) -> None:
    """In a task: torch threads as :func:`threads_per_host` planned for this worker."""
    import torch
    from distributed import get_worker

    try:
        address = get_worker().address
    except ValueError:  # not on a worker (called directly)
        address = None
    n = threads.get(address) or threads.get("*") or 1
    if torch.get_num_threads() != n:
        torch.set_num_threads(int(n))


def gpu_resources(client, device: str) -> dict | None:
    """``{"GPU": 1}`` for tasks on CUDA when some worker declares a GPU resource, else None
    (CPU tasks, or a cluster whose workers declare none: logged)."""
    if not str(device).startswith("cuda"):
        return None
    if any("GPU" in (w.get("resources") or {}) for w in _workers(client).values()):
        return {"GPU": 1}
    logger.warning("device %s but no worker declares a GPU resource (dask worker --resources GPU=1): "
                   "tasks are not limited to one per GPU", device)
    return None


def unique_token(*parts) -> str:
    """A run's key suffix: two runs on one cluster never share task keys."""
    import time

    return f"{abs(hash((*map(str, parts), time.time(), os.getpid()))) % 10**10:010d}"
