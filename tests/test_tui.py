"""The dashboard, driven by Textual's pilot against a real broker and workers."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, RichLog, Static

from titan_zmq.client import Dag, JobState
from titan_zmq.local import LocalCluster
from tui import make_app
from tui.app import REFRESH

pytestmark = pytest.mark.timeout(120)


async def _until(pilot: Any, cond: Callable[[], Any], what: str, timeout: float = 45.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = cond()
        if value:
            return value
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        await pilot.pause(0.05)


def _text(app: Any, selector: str) -> str:
    return str(app.query_one(selector, Static).render())


def test_dashboard_fills_from_the_live_feed_follows_a_log_and_cancels(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.add_worker(name="tui-w1", slots=2)
    cluster.wait_workers(1)
    client = cluster.client()
    chatty = client.submit(shell="for i in 1 2 3; do echo hello $i; done")
    chatty.wait(20)
    long = client.submit("tests.jobs:sleep", args=[60])
    dag = Dag("tui-dag")
    first = dag.add("tests.jobs:chatty", args=[2, "dag"])
    dag.add("tests.jobs:noop", args=[1], after=[first])
    dag.add("tests.jobs:noop", args=[2], after=[first])
    run = client.submit_dag(dag)
    run.wait(30)
    screenshot = tmp_path / "titan-tui.svg"

    async def scenario() -> None:
        app = make_app(cluster.address)
        async with app.run_test(size=(180, 50)) as pilot:
            workers = app.query_one("#workers", DataTable)
            jobs = app.query_one("#jobs", DataTable)
            await _until(pilot, lambda: workers.row_count == 1, "the workers table to fill")
            assert "tui-w1" in str(workers.get_row_at(0)[0])
            await _until(pilot, lambda: "connected" in _text(app, "#summary"), "the header to say connected")
            await _until(pilot, lambda: jobs.row_count >= 5, "the jobs table to fill")
            # Select the chatty job: its log appears in the log pane.
            ids = [str(k.value) for k in jobs.rows]
            jobs.focus()
            jobs.move_cursor(row=ids.index(chatty.id))
            log = app.query_one("#log", RichLog)
            await _until(pilot, lambda: len(log.lines) == 3, "the selected job's log lines")
            assert "hello 3" in "".join(seg.text for seg in log.lines[2])
            # A job of a DAG: the DAG pane shows its nodes and their states.
            jobs.move_cursor(row=[str(k.value) for k in jobs.rows].index(run.ids[0]))
            await _until(pilot, lambda: app.selected == run.ids[0], "the DAG's job to be selected")
            dag_table = app.query_one("#dag", DataTable)
            await _until(pilot, lambda: dag_table.row_count == 3, "the DAG view")
            assert "3/3 ended" in _text(app, "#dagtitle")
            # Select the long job and cancel it with the key binding.
            await _until(pilot, lambda: client.status(long.id).state is JobState.RUNNING, "the long job to run")
            jobs.move_cursor(row=ids.index(long.id))
            await _until(pilot, lambda: app.selected == long.id, "the long job to be selected")
            await pilot.press("c")
            await _until(pilot, lambda: client.status(long.id).state is JobState.CANCELLED, "the cancel to land")
            await _until(pilot, lambda: "cancelled" in str(jobs.get_row(long.id)[1]), "the row to say cancelled")
            # The filter narrows the table.
            await pilot.press("slash")
            await pilot.press(*"cancelled")
            await _until(pilot, lambda: jobs.row_count == 1, "the filter to apply")
            jobs.focus()  # the footer then shows every key binding
            await _until(pilot, lambda: app.focused is jobs, "the jobs table to take the focus")
            await pilot.pause()  # and the screen to settle (pending messages handled; no fixed delay)
            app.save_screenshot(str(screenshot))
            # The broker goes away: the header says so; it comes back: connected again.
            cluster.kill_broker(signal.SIGKILL)
            await _until(pilot, lambda: "disconnected" in _text(app, "#summary"), "disconnected", 15)
            cluster.start_broker()
            await _until(pilot, lambda: "connected " in _text(app, "#summary")
                         and "disconnected" not in _text(app, "#summary"), "reconnection", 30)  # fmt: skip
            await pilot.press("q")

    asyncio.run(scenario())
    assert screenshot.exists() and screenshot.stat().st_size > 1000
    out = Path(__file__).resolve().parent.parent / "tui-screenshot.svg"
    out.write_bytes(screenshot.read_bytes())  # kept for review (git-ignored)


def test_dashboard_batches_repaints_under_thousands_of_jobs(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    stats: dict[str, Any] = {}

    async def scenario() -> None:
        app = make_app(shared_cluster.address)
        async with app.run_test(size=(160, 45)) as pilot:
            await _until(pilot, lambda: app.query_one("#workers", DataTable).row_count == 2, "the workers")
            loop = asyncio.get_running_loop()
            ticks = [0]  # refresh intervals gone by, counted by a timer of the same period as the app's
            app.set_interval(REFRESH, lambda: ticks.__setitem__(0, ticks[0] + 1))
            messages0, repaints0, ticks0, t0 = app.feed.messages, app.repaints, ticks[0], loop.time()
            await loop.run_in_executor(None, lambda: client.map("tests.jobs:noop", range(5000)))
            jobs = app.query_one("#jobs", DataTable)
            await _until(pilot, lambda: jobs.row_count == 500, "the jobs table to hold the newest 500")
            stats.update(messages=app.feed.messages - messages0, repaints=app.repaints - repaints0,
                         ticks=ticks[0] - ticks0, seconds=loop.time() - t0, slowest=max(app.repaint_seconds),
                         times=[round(x, 3) for x in app.repaint_seconds])  # fmt: skip
            await pilot.press("q")

    asyncio.run(scenario())
    print(f"dashboard under load: {stats}")
    # Never one repaint per message: at most one per REFRESH interval, however many came in.
    assert stats["messages"] > 0
    assert stats["repaints"] <= stats["ticks"] + 3


def test_dashboard_approves_a_gate_with_its_key(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    gate = client.submit(approval="deploy from the dashboard?")

    async def scenario() -> None:
        app = make_app(shared_cluster.address)
        async with app.run_test(size=(160, 45)) as pilot:
            jobs = app.query_one("#jobs", DataTable)
            await _until(pilot, lambda: gate.id in [str(k.value) for k in jobs.rows], "the gate in the table")
            assert "awaiting_approval" in str(jobs.get_row(gate.id)[1])
            jobs.focus()
            jobs.move_cursor(row=[str(k.value) for k in jobs.rows].index(gate.id))
            await _until(pilot, lambda: app.selected == gate.id, "the gate to be selected")
            await pilot.press("a")
            await _until(pilot, lambda: client.status(gate.id).state is JobState.SUCCEEDED, "the approval")
            await pilot.press("q")

    asyncio.run(scenario())
    rec = client.status(gate.id)
    assert rec.result["approved"] is True and rec.result["note"] == "from titan-tui"


def test_dashboard_shows_the_reviewed_jobs_output_beside_its_gate(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    dag = Dag("tui-review")
    work = dag.add(shell="echo the evidence to review", id="tui-review.work")
    gate = dag.add(approval="ship what work printed?", after=[work], id="tui-review.gate")
    client.submit_dag(dag)

    async def scenario() -> None:
        app = make_app(shared_cluster.address)
        async with app.run_test(size=(160, 45)) as pilot:
            jobs = app.query_one("#jobs", DataTable)
            await _until(pilot, lambda: gate in [str(k.value) for k in jobs.rows]
                         and "awaiting" in str(jobs.get_row(gate)[1]), "the gate awaiting approval")  # fmt: skip
            jobs.focus()
            jobs.move_cursor(row=[str(k.value) for k in jobs.rows].index(gate))
            await _until(pilot, lambda: app.selected == gate, "the gate to be selected")
            log = app.query_one("#log", RichLog)
            await _until(pilot, lambda: any("the evidence to review" in str(line.text) for line in log.lines),
                         "the reviewed job's output in the log pane")  # fmt: skip
            assert f"Log of {work}" in _text(app, "#logtitle") and f"reviewed by gate {gate}" in _text(app, "#logtitle")
            await pilot.press("r")
            await _until(pilot, lambda: client.status(gate).state is JobState.FAILED, "the rejection")
            await pilot.press("q")

    asyncio.run(scenario())


def test_dashboard_lists_and_stops_a_service(shared_cluster: LocalCluster) -> None:
    from pathlib import Path as _P

    client = shared_cluster.client()
    echo = str(_P(__file__).resolve().parent / "services" / "echo_server.py")
    client.deploy("tui-svc", script=echo)

    async def scenario() -> None:
        app = make_app(shared_cluster.address)
        async with app.run_test(size=(160, 45)) as pilot:
            services = app.query_one("#services", DataTable)
            await _until(pilot, lambda: "tui-svc" in [str(k.value) for k in services.rows], "the service row")
            services.focus()
            services.move_cursor(row=[str(k.value) for k in services.rows].index("tui-svc"))
            await _until(pilot, lambda: app.selected_service == "tui-svc", "the service to be selected")
            await pilot.press("s")
            await _until(pilot, lambda: all(s["name"] != "tui-svc" for s in client.services()), "the stop")
            await pilot.press("q")

    asyncio.run(scenario())
