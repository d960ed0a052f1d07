"""Propose a run's queries on a Dask cluster: ``wfss label ... --dask SCHEDULER_ADDRESS|local:N``.

The driver (the ``wfss label`` process) plans the run and learns its classes once, as a single-process
run does (tag priors fitted, supports encoded: :class:`napari_wfss.engine.LearntClasses`). That object,
the model with it, is shipped to every worker once (``Client.scatter(..., broadcast=True)``); then each
task proposes one batch of images, reading them from the shared file system, and returns their label
maps. The driver stores and exports each batch as it completes (in completion order), so the output
folder fills as the cluster works and a killed run resumes like any other. Every worker proposes
through :meth:`LearntClasses.propose_file` on one torch thread, the same code and thread count as
``wfss label`` on the CPU, so the masks are the same bit for bit.

``local:N`` starts a ``distributed.LocalCluster`` of N single-threaded worker processes on this
machine; any other value is a scheduler address (``tcp://host:8786``) of a cluster whose workers can
import ``napari_wfss`` and read the image folder at the same path. Start such workers without Dask's
default ``MALLOC_TRIM_THRESHOLD_`` (see :data:`SLOW_ALLOCATOR_ENV`), e.g. with
``DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON='{"OMP_NUM_THREADS": 1}'``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from hhn.errors import UserError

if TYPE_CHECKING:
    from .engine import LearntClasses, ProposalResult
    from .session import Session

LOCAL_PREFIX = "local:"
#: set by Dask's nannies in every worker's environment; any explicit glibc trim threshold also fixes the
#: mmap threshold, so each large tensor is a fresh mmap: a worker then took 2.3-2.5 s per image instead of
#: 1.4-1.5 s (measured on the default model). Local workers are started without it.
SLOW_ALLOCATOR_ENV = "MALLOC_TRIM_THRESHOLD_"
DEFAULT_TASK_IMAGES = 4  #: images per task: few enough to spread a small folder, enough to amortise a task


class DaskRunnerError(UserError):
    """The Dask scheduler is unreachable or misnamed, or ``distributed`` is not installed."""


def _propose_batch(learnt: LearntClasses, items: Sequence[tuple[str, str, str]],
                   max_pixels: int) -> list[ProposalResult]:
    """A worker's task: propose ``(rel, key, path)`` items on one torch thread (``seconds`` set per image)."""
    from hhn.device import cpu_threads

    results = []
    with cpu_threads(1):
        for rel, key, path in items:
            start = time.perf_counter()
            result = learnt.propose_file(rel, key, path, max_pixels)
            result.seconds = time.perf_counter() - start
            results.append(result)
    return results


class DaskRunner:
    """A :class:`napari_wfss.engine.QueryRunner` on a Dask cluster (module doc); use as a context manager.

    Args:
        scheduler: ``"local:N"`` (N local worker processes) or a scheduler address.
        task_images: images per task.
    """

    def __init__(self, scheduler: str, task_images: int = DEFAULT_TASK_IMAGES) -> None:
        self.scheduler = scheduler
        self.workers = _local_workers(scheduler)
        if task_images < 1:
            raise DaskRunnerError(f"images per Dask task must be at least 1, got {task_images}")
        self.task_images = task_images
        self._client: Any = None
        self._cluster: Any = None

    def __enter__(self) -> DaskRunner:
        try:
            from distributed import Client, LocalCluster
        except ImportError as exc:
            raise DaskRunnerError("--dask needs the 'distributed' package: pip install 'napari-wfss[dask]'") from exc
        if self.workers is not None:
            import dask

            spawn_env = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
                         if k != SLOW_ALLOCATOR_ENV}
            # single-threaded processes: torch's per-process state (threads, caches) is never shared
            with dask.config.set({"distributed.nanny.pre-spawn-environ": spawn_env}):
                self._cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                             dashboard_address=None, env={"OMP_NUM_THREADS": "1"})
            self._client = Client(self._cluster)
        else:
            try:
                self._client = Client(self.scheduler, timeout=30)
            except (OSError, TimeoutError) as exc:
                raise DaskRunnerError(f"cannot reach the Dask scheduler ({exc}): {self.scheduler}; check the "
                                      "address (e.g. tcp://host:8786), or use --dask local:N") from exc
        return self

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` while the runner is open (None otherwise)."""
        return self._client

    def __exit__(self, *exc: object) -> None:
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        self._client = self._cluster = None

    def stream(self, session: Session, learnt: LearntClasses, queries: Sequence[str],
               should_stop: Callable[[], bool]) -> Iterator[ProposalResult]:
        """One result per query, batch by batch as the cluster finishes them. Once ``should_stop()`` is
        True, the tasks not yet finished are cancelled and the stream ends."""
        from distributed import as_completed

        if self._client is None:
            raise RuntimeError("use DaskRunner as a context manager")
        if not queries:
            return
        shipped = self._client.scatter(learnt, broadcast=True)  # once per worker, reused by every task
        items = [(rel, session.key(rel), os.fspath(session.image_path(rel))) for rel in queries]
        tasks = [self._client.submit(_propose_batch, shipped, items[i:i + self.task_images], session.max_pixels,
                                     pure=False)
                 for i in range(0, len(items), self.task_images)]
        done = as_completed(tasks)
        try:
            for task in done:
                if should_stop():
                    break
                yield from task.result()
        finally:
            for task in tasks:
                task.cancel()


def _local_workers(scheduler: str) -> int | None:
    """N of ``"local:N"`` (at least 1), None for a scheduler address; DaskRunnerError for a bad value."""
    if not scheduler.startswith(LOCAL_PREFIX):
        if not scheduler.strip():
            raise DaskRunnerError("--dask needs a scheduler address (tcp://host:8786) or local:N")
        return None
    count = scheduler.removeprefix(LOCAL_PREFIX)
    if not count.isdigit() or int(count) < 1:
        raise DaskRunnerError(f"--dask local:N needs a number of workers N of at least 1, got {scheduler!r}")
    return int(count)
