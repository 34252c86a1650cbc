"""Services as DAG nodes: a node of kind ``service`` deploys its service once its parents
succeeded, succeeds when every replica passed its health check (its result is the service's
name and addresses), and then releases its children. The service keeps running after the DAG
ends, until it is stopped; a service that cannot become healthy fails the node like a job fails,
with its last output, and its descendants are cancelled.
"""

from __future__ import annotations

import logging
from typing import Any

from titan_zmq.broker.scheduler import Entry, Scheduler
from titan_zmq.broker.services import Service, ServiceManager, ServiceSpec
from titan_zmq.errors import BrokerError, JobError
from titan_zmq.job import JobState

log = logging.getLogger(__name__)


class ServiceNodes:
    """The scheduler's ``service_nodes``: deploys through the ServiceManager, reports back to the scheduler."""

    def __init__(self, sched: Scheduler, services: ServiceManager) -> None:
        self.sched = sched
        self.services = services
        self.waiting: dict[str, set[str]] = {}  # service name -> the nodes (job ids) waiting for it to be healthy
        self.owned: set[str] = set()  # services a node deployed (none ran under that name): a cancel may stop them
        services.on_change = self.notice
        sched.service_nodes = self

    def check(self, spec: dict[str, Any]) -> None:
        ServiceSpec.from_wire(spec)

    def start(self, entry: Entry) -> None:
        spec = entry.job.kwargs
        name = str(spec["name"])
        old = self.services.services.get(name)
        failed = [r for r in old.replicas if r.state == "failed"] if old is not None and not old.stopping else []
        if failed:  # deploying the same spec again would change nothing: say what to do
            why = "; ".join(f"{r.id}: {r.error}" for r in failed)
            what = f"service {name} is deployed and failed ({why}); `titan stop {name}` first, then run the node again"
            self.sched.outcomes.service_failed(entry, what)
            return
        sha = entry.job.blob
        slot = self.sched.blobs.get(sha) if sha is not None else None
        blobs = {sha: slot[0]} if sha is not None and slot is not None else {}
        try:
            self.services.deploy(spec, blobs)  # the same spec again (a second node, a restart) is no change
        except (BrokerError, JobError) as exc:
            self.sched.outcomes.service_failed(entry, f"cannot deploy service {name}: {exc}")
            return
        if old is None:
            self.owned.add(name)
        log.info("DAG node %s deploys service %s", entry.job.id, name)
        self._wait(entry, name)

    def resume(self, entry: Entry) -> None:
        """After a restart: the node waits for its service again, if the journal still has it."""
        name = entry.job.target
        svc = self.services.services.get(name)
        if svc is None or svc.stopping:
            self.sched.outcomes.service_failed(entry, f"service {name} was stopped before it became healthy")
            return
        self._wait(entry, name)

    def _wait(self, entry: Entry, name: str) -> None:
        self.waiting.setdefault(name, set()).add(entry.job.id)
        self.notice(self.services.services[name])

    def cancel(self, entry: Entry) -> None:
        name = entry.job.target
        nodes = self.waiting.get(name, set())
        nodes.discard(entry.job.id)
        if nodes:
            return  # another node still wants it
        self.waiting.pop(name, None)
        if name in self.owned and name in self.services.services:
            self.owned.discard(name)
            self.services.stop(name)  # it never became healthy, and the node that deployed it no longer wants it

    def notice(self, svc: Service) -> None:
        """A replica of ``svc`` became running or failed, or it is being stopped: settle the nodes waiting for it."""
        name = svc.spec.name
        ids = self.waiting.get(name)
        if not ids:
            return
        nodes = [e for e in (self.sched.jobs.get(j) for j in ids) if e is not None and e.state is JobState.RUNNING]
        failed = [r for r in svc.replicas if r.state == "failed"]
        outcomes = self.sched.outcomes
        if svc.stopping:
            why = f"service {name} was stopped before it became healthy"
        elif failed:
            why = f"service {name} failed: " + "; ".join(f"{r.id}: {r.error}" for r in failed)
        elif all(r.state == "running" for r in svc.replicas):
            result = {"service": name, "addresses": [f"{r.host}:{r.port}" for r in svc.replicas]}
            del self.waiting[name]
            self.owned.discard(name)
            for e in nodes:
                outcomes.service_up(e, dict(result))
            return
        else:
            self.waiting[name] = {e.job.id for e in nodes}
            return
        del self.waiting[name]
        for e in nodes:
            outcomes.service_failed(e, why)
