"""The no-op task as Dramatiq and Celery declare it, for the peer benchmarks (benchmarks/peers.py).

Their worker processes import this module by name, so it lives in the repository, not in a test. Both libraries
are imported inside the functions: importing this module needs neither.
"""

from __future__ import annotations

import os
from typing import Any

from benchmarks.noop import noop

URL_ENV = "TITAN_PEER_REDIS_URL"  # the Redis URL, for a worker started by a command line
TASK_NAME = "peer_noop"  # the Dramatiq actor's and the Celery task's name


def dramatiq_broker(url: str | None = None) -> Any:
    """A Dramatiq Redis broker with Redis results, and the no-op actor (``broker.get_actor(TASK_NAME)``) declared."""
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.results import Results
    from dramatiq.results.backends.redis import RedisBackend

    url = url or os.environ[URL_ENV]
    broker = RedisBroker(url=url)
    broker.add_middleware(Results(backend=RedisBackend(url=url)))
    dramatiq.actor(actor_name=TASK_NAME, broker=broker, store_results=True)(noop)
    return broker


def dramatiq_worker_setup() -> None:
    """For ``dramatiq benchmarks.peer_tasks:dramatiq_worker_setup``: the broker of :func:`dramatiq_broker`, as
    the global one, on the URL in ``$TITAN_PEER_REDIS_URL``."""
    import dramatiq

    dramatiq.set_broker(dramatiq_broker())


def celery_app(url: str) -> Any:
    """A Celery app with Redis as broker and result backend, and the no-op task (``app.tasks[TASK_NAME]``)."""
    from celery import Celery

    app = Celery("titan_peer", broker=url, backend=url, set_as_current=False)
    app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)
    app.task(name=TASK_NAME)(noop)
    return app


def celery_worker(concurrency: int, url: str | None = None) -> None:
    """Run a prefork ``celery worker`` with ``concurrency`` child processes until it is signalled to stop."""
    celery_app(url or os.environ[URL_ENV]).worker_main(
        [
            "worker", "--pool=prefork", f"--concurrency={concurrency}", "--loglevel=WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]
    )  # fmt: skip
