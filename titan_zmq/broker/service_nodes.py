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
        self.waiting: dict[str, str] = {}  # service name -> the node (job id) waiting for it to be healthy
        services.on_change = self.notice
        sched.service_nodes = self

    def check(self, spec: dict[str, Any]) -> None:
        ServiceSpec.from_wire(spec)

    def start(self, entry: Entry) -> None:
        spec = entry.job.kwargs
        sha = entry.job.blob
        slot = self.sched.blobs.get(sha) if sha is not None else None
        blobs = {sha: slot[0]} if sha is not None and slot is not None else {}
        try:
            self.services.deploy(spec, blobs)  # the same spec again (a restart, a retry) is no change
        except (BrokerError, JobError) as exc:
            self.sched.outcomes.service_failed(entry, f"cannot deploy service {entry.job.target}: {exc}")
            return
        name = str(spec["name"])
        self.waiting[name] = entry.job.id
        log.info("DAG node %s deploys service %s", entry.job.id, name)
        self.notice(self.services.services[name])

    def cancel(self, entry: Entry) -> None:
        name = entry.job.target
        if self.waiting.pop(name, None) is not None and name in self.services.services:
            self.services.stop(name)  # it never became healthy: the DAG that wanted it no longer does

    def notice(self, svc: Service) -> None:
        """A replica of ``svc`` became running or failed: settle the node waiting for it, if any."""
        jid = self.waiting.get(svc.spec.name)
        if jid is None:
            return
        entry = self.sched.jobs.get(jid)
        if entry is None or entry.state is not JobState.RUNNING:
            del self.waiting[svc.spec.name]
            return
        failed = [r for r in svc.replicas if r.state == "failed"]
        if failed:
            del self.waiting[svc.spec.name]
            why = "; ".join(f"{r.id}: {r.error}" for r in failed)
            self.sched.outcomes.service_failed(entry, f"service {svc.spec.name} failed: {why}")
        elif all(r.state == "running" for r in svc.replicas):
            del self.waiting[svc.spec.name]
            addresses = [f"{r.host}:{r.port}" for r in svc.replicas]
            self.sched.outcomes.service_up(entry, {"service": svc.spec.name, "addresses": addresses})
