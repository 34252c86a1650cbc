"""A Dagster job whose ops run as titan jobs: extract, train on a ``gpu`` worker, evaluate.

    titan up --workers 1 & titan worker --tags gpu &          # from the repository root
    dagster job execute -m examples.dagster.pipeline -j training
    python -m examples.dagster.pipeline --local                # or: its own local cluster, no setup

See examples/dagster/README.md. The steps themselves are plain functions in ``steps.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from typing import Any

import dagster as dg
from examples.dagster import steps
from titan_zmq.integrations.dagster import TitanResource, titan_op

extract = titan_op(steps.extract)
train = titan_op(
    steps.train,
    requires="gpu",  # the op tag titan/requires: only a worker tagged gpu runs it
    timeout=600,
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL),
)
evaluate = titan_op(steps.evaluate)


@dg.job(
    resource_defs={"titan": TitanResource()},  # the broker: run config, else $TITAN_BROKER, else localhost:5555
    description="Make a data set, fit a model on a GPU worker of the titan grid, and score it.",
)
def training() -> None:
    data = extract()
    model = train(data)
    evaluate(model, data)


defs = dg.Definitions(jobs=[training])


def run_config(broker: str | None = None, rows: int = 200, epochs: int = 200) -> dict[str, Any]:
    """Run config for ``training``: the broker's address, the data set's size and the epochs of training."""
    config: dict[str, Any] = {
        "ops": {
            "extract": {"inputs": {"rows": rows}},
            "train": {"inputs": {"epochs": epochs}},
        }
    }
    if broker:
        config["resources"] = {"titan": {"config": {"broker": broker}}}
    return config


def run(broker: str | None, instance: dg.DagsterInstance, **config: Any) -> dg.ExecuteJobResult:
    """Execute ``training`` as Dagster does (each op in a process of its own), against ``broker``.
    Use the result as a context manager to read the ops' outputs."""
    return dg.execute_job(dg.reconstructable(training), instance=instance, run_config=run_config(broker, **config))


def _report(result: dg.ExecuteJobResult) -> int:
    with result:
        for event in result.all_events:
            if event.is_step_failure:
                print(f"{event.step_key} failed: {event.message}", file=sys.stderr)
        if not result.success:
            return 1
        print("model:", result.output_for_node("train"))
        print("metrics:", result.output_for_node("evaluate"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", help="HOST[:PORT] of the titan broker (default: $TITAN_BROKER)")
    parser.add_argument("--local", action="store_true", help="start a local cluster: one worker, one gpu worker")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=200)
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        # With $DAGSTER_HOME the run is recorded there (`dagster dev` shows it); else in a temporary instance.
        if os.environ.get("DAGSTER_HOME"):
            instance = stack.enter_context(dg.DagsterInstance.get())
        else:
            home = stack.enter_context(tempfile.TemporaryDirectory(prefix="dagster-titan-"))
            instance = stack.enter_context(dg.DagsterInstance.local_temp(home, {"telemetry": {"enabled": False}}))
        broker = args.broker
        if args.local:
            from titan_zmq.local import LocalCluster

            cluster = stack.enter_context(LocalCluster(workers=1))
            cluster.add_worker(tags=["gpu"], name="gpu-1")
            cluster.wait_workers(2)
            broker = cluster.address
        return _report(run(broker, instance, rows=args.rows, epochs=args.epochs))
    return 1  # not reached: the stack does not swallow exceptions


if __name__ == "__main__":
    sys.exit(main())
