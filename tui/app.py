"""The dashboard: ``titan-tui [--broker HOST[:PORT]]``.

Attributes down, messages up: the feed thread (``tui.feed``) keeps a shared state; a timer
takes a copy four times a second and, only if it changed, repaints the widgets from it.
Actions (cancel) run in worker threads and report back with a notification.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Footer, Input, RichLog, Sparkline, Static

from titan_zmq.client import TitanClient
from titan_zmq.errors import TitanError
from tui.feed import Feed, FeedState

STATE_STYLE = {
    "pending": "grey62", "queued": "yellow", "running": "bold cyan", "retrying": "magenta",
    "succeeded": "green", "failed": "bold red", "dead": "red", "cancelled": "grey50",
    "awaiting_approval": "bold yellow on dark_red",
}  # fmt: skip
REFRESH = 0.25  # seconds between repaints (at most)


def _state(state: str | None) -> Text:
    return Text(state or "-", style=STATE_STYLE.get(state or "", ""))


def _pct(v: Any) -> str:
    return "-" if v is None else f"{float(v):.0f}%"


class TitanApp(App[None]):
    """The titan_zmq dashboard."""

    CSS_PATH = "titan.tcss"
    TITLE = "titan"
    BINDINGS = [
        Binding("c", "cancel", "Cancel job"),
        Binding("a", "approve", "Approve gate"),
        Binding("r", "reject", "Reject gate"),
        Binding("s", "stop_service", "Stop service"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, broker: str | None = None) -> None:
        super().__init__()
        self.feed = Feed(broker)
        self.broker = broker
        self.filter_text = ""
        self.selected: str | None = None
        self.selected_service: str | None = None
        self._version = -1
        self._log_job: str | None = None
        self._log_count = 0
        self._rows: list[str] = []
        self._last_cells: dict[str, tuple[Any, ...]] = {}
        self._last: FeedState = FeedState()
        self.repaints = 0
        self.repaint_seconds: list[float] = []  # how long each repaint took (the last 1,000)

    # ---- layout -----------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(id="header"):
            yield Static("connecting...", id="summary")
            yield Sparkline([], id="rate")
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield Static("Workers", classes="title")
                yield DataTable(id="workers", cursor_type="none", zebra_stripes=True)
                yield Static("Services", classes="title")
                yield DataTable(id="services", cursor_type="row")
            with Vertical(id="right"):
                yield Input(placeholder="filter jobs: id, state, target, worker or DAG (/ to focus)", id="filter")
                yield DataTable(id="jobs", cursor_type="row", zebra_stripes=True)
                with Horizontal(id="detail"):
                    with Vertical(id="dagpane"):
                        yield Static("DAG", id="dagtitle", classes="title")
                        yield DataTable(id="dag", cursor_type="none")
                    with Vertical(id="logpane"):
                        yield Static("Log", id="logtitle", classes="title")
                        yield RichLog(id="log", max_lines=5000, wrap=False, markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#workers", DataTable).add_columns("worker", "host", "tags", "slots", "cpu", "mem", "done", "hb")
        self.query_one("#services", DataTable).add_columns("service", "state", "port", "restarts")
        self.query_one("#jobs", DataTable).add_columns("job", "state", "kind", "target", "worker", "try", "dag")
        self.query_one("#dag", DataTable).add_columns("node", "state", "after")
        self.run_feed()
        self.set_interval(REFRESH, self.repaint)

    @work(thread=True, exclusive=True, group="feed")
    def run_feed(self) -> None:
        self.feed.run()

    def on_unmount(self) -> None:
        self.feed.stop()

    # ---- repainting -------------------------------------------------------------------

    def repaint(self) -> None:
        st = self.feed.snapshot()
        connected = st.connected
        if st.version == self._version and connected == self._last.connected:
            return
        self._version = st.version
        self._last = st
        t0 = time.perf_counter()
        self._paint_summary(st)
        self._paint_workers(st)
        self._paint_jobs(st)
        self._paint_dag(st)
        self._paint_log(st)
        self.repaints += 1
        self.repaint_seconds = [*self.repaint_seconds[-999:], time.perf_counter() - t0]

    def _paint_summary(self, st: FeedState) -> None:
        s = st.stats
        if not st.connected:
            why = f": {st.error}" if st.error else ""
            text = Text(f"disconnected from {self.feed.client.address}{why}; reconnecting...", style="bold red")
        else:
            text = Text.assemble(
                ("connected ", "bold green"), f"{self.feed.client.address}   ",
                ("workers: ", "bold"), f"{s.get('workers', 0)} ({s.get('busy', 0)}/{s.get('slots', 0)} slots busy)   ",
                ("queued: ", "bold"), f"{s.get('queued', 0)}   ", ("running: ", "bold"), f"{s.get('running', 0)}   ",
                ("jobs/s: ", "bold"), f"{s.get('rate_out', 0.0):.1f} out, {s.get('rate_in', 0.0):.1f} in",
            )  # fmt: skip
        self.query_one("#summary", Static).update(text)
        self.query_one("#rate", Sparkline).data = list(st.rates) or [0.0]

    def _paint_workers(self, st: FeedState) -> None:
        table = self.query_one("#workers", DataTable)
        table.clear()
        for w in st.stats.get("worker_list", []):
            table.add_row(
                w["name"], w["host"], ",".join(w["tags"]), f"{w['used']}/{w['slots']}", _pct(w.get("cpu")),
                _pct(w.get("mem")), str(w["done"]), f"{w['last_heartbeat_age']:.1f}s", key=w["name"],
            )  # fmt: skip
        services = self.query_one("#services", DataTable)
        services.clear()
        for sv in st.stats.get("services", []):
            services.add_row(sv.get("name", "?"), _state(sv.get("state")), str(sv.get("port") or "-"),
                             str(sv.get("restarts", 0)), key=sv.get("name"))  # fmt: skip

    def _matches(self, rec: dict[str, Any]) -> bool:
        if not self.filter_text:
            return True
        hay = " ".join(str(rec.get(k) or "") for k in ("id", "state", "target", "worker", "dag")).lower()
        return all(part in hay for part in self.filter_text.lower().split())

    def _paint_jobs(self, st: FeedState) -> None:
        """Oldest at the top, newest at the bottom, like a log: new jobs are appended and the oldest
        dropped, so a busy cluster costs a few row changes per repaint, not a rebuilt table."""
        table = self.query_one("#jobs", DataTable)
        rows = [r for r in st.jobs.values() if self._matches(r)]
        ids = [r["id"] for r in rows]
        old = self._rows
        gone = set(old) - set(ids)
        kept = [i for i in old if i not in gone]
        if kept != ids[: len(kept)] or len(gone) > 100:  # not a small slide of the window: rebuild
            table.clear()
            kept = []
        else:
            for jid in gone:
                table.remove_row(jid)
        prev = self._last_cells
        for r in rows[len(kept) :]:
            table.add_row(*self._cells(r), key=r["id"])
        for r in rows[: len(kept)]:
            cells = self._cells(r)
            if prev.get(r["id"]) != cells[1:]:
                for col, value in zip(list(table.columns)[1:], cells[1:], strict=True):
                    table.update_cell(r["id"], col, value)
        self._last_cells = {r["id"]: self._cells(r)[1:] for r in rows}
        at_bottom = table.cursor_row >= len(old) - 1
        self._rows = ids
        if self.selected in ids and not at_bottom:
            table.move_cursor(row=ids.index(self.selected), scroll=False)
        self.query_one("#filter", Input).border_title = f"{len(rows)} of {len(st.jobs)} jobs"

    @staticmethod
    def _cells(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["id"], _state(r.get("state")), r.get("kind", ""), (r.get("target") or "")[:40],
                r.get("worker") or "-", str(r.get("attempts", 0)), r.get("dag") or "-")  # fmt: skip

    def _paint_dag(self, st: FeedState) -> None:
        table = self.query_one("#dag", DataTable)
        table.clear()
        title = self.query_one("#dagtitle", Static)
        if not st.dag_id:
            title.update("DAG (select a job of a DAG)")
            return
        done = sum(1 for r in st.dag_records if r.get("state") in ("succeeded", "failed", "cancelled", "dead"))
        title.update(f"DAG {st.dag_id}: {done}/{len(st.dag_records)} ended")
        for r in st.dag_records:
            table.add_row(r["id"], _state(r.get("state")), ", ".join(r.get("depends_on") or []) or "-")

    def _paint_log(self, st: FeedState) -> None:
        log = self.query_one("#log", RichLog)
        if st.log_job != self._log_job:
            log.clear()
            self._log_job, self._log_count = st.log_job, 0
        title = self.query_one("#logtitle", Static)
        if st.log_job is None:
            title.update("Log (select a job)")
            return
        state = (st.jobs.get(st.log_job) or {}).get("state")
        ended = st.log_ended or state in ("succeeded", "failed", "cancelled", "dead")
        what = f"Log of {st.log_job}" + (f" ({state or 'ended'})" if ended else " (live)")
        if self.selected is not None and self.reviewed(self.selected) == st.log_job:
            what += f", reviewed by gate {self.selected}: a approves, r rejects"
        title.update(what)
        for seq, ts, stream, text in st.log_lines[self._log_count :]:
            stamp = datetime.fromtimestamp(ts).strftime("%H:%M:%S") if seq else "--:--:--"
            log.write(Text.assemble((f"{stamp} ", "grey50"), (text, "red" if stream == "err" else "")))
        self._log_count = len(st.log_lines)

    # ---- events and actions -------------------------------------------------------------

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "jobs" and event.row_key is not None and event.row_key.value:
            self.selected = str(event.row_key.value)
            self.feed.follow = self.reviewed(self.selected) or self.selected
        elif event.data_table.id == "services" and event.row_key is not None and event.row_key.value:
            self.selected_service = str(event.row_key.value)

    def reviewed(self, job_id: str | None) -> str | None:
        """For an approval gate, the job whose output it reviews (its first parent): the log pane shows
        that output beside the gate, so a person decides with the evidence in view."""
        rec = self._last.jobs.get(job_id or "") or {}
        parents = rec.get("depends_on") or []
        return str(parents[0]) if rec.get("kind") == "approval" and parents else None

    def on_input_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self.query_one("#jobs", DataTable).clear()
        self._rows = []
        self._version = -1
        self.repaint()

    def action_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_clear_filter(self) -> None:
        self.query_one("#filter", Input).value = ""
        self.query_one("#jobs", DataTable).focus()

    def action_cancel(self) -> None:
        if self.selected is None:
            self.notify("select a job first", severity="warning")
            return
        jid = self.selected
        self._act(f"job {jid}", lambda c: c.cancel(jid).state.value)

    def action_approve(self) -> None:
        self._gate(True)

    def action_reject(self) -> None:
        self._gate(False)

    def _gate(self, approve: bool) -> None:
        if self.selected is None:
            self.notify("select an approval gate first", severity="warning")
            return
        jid = self.selected
        self._act(jid, lambda c: (c.approve if approve else c.reject)(jid, note="from titan-tui").state.value)

    def action_stop_service(self) -> None:
        if self.selected_service is None:
            self.notify("select a service in the services table first (tab to it)", severity="warning")
            return
        name = self.selected_service
        self._act(f"service {name}", lambda c: c.stop_service(name)["state"])

    @work(thread=True, group="actions")
    def _act(self, what: str, action: Callable[[TitanClient], str]) -> None:
        """Run a request off the UI thread; say how it went in a notification."""
        try:
            outcome = action(self.feed.client)
        except TitanError as exc:
            self.call_from_thread(self.notify, f"{what}: {exc}", severity="error")
        else:
            self.call_from_thread(self.notify, f"{what}: {outcome}")


def make_app(broker: str | None = None) -> TitanApp:
    """The dashboard for the broker at ``broker`` (``HOST[:PORT]``; default $TITAN_BROKER, localhost:5555)."""
    return TitanApp(broker)


def main(argv: Sequence[str] | None = None) -> int:
    """``titan-tui``: run the dashboard until q or Ctrl-C."""
    parser = argparse.ArgumentParser(prog="titan-tui", description="The titan_zmq terminal dashboard.")
    parser.add_argument("--broker", default=None, metavar="HOST[:PORT]",
                        help="the broker's front address (default: $TITAN_BROKER, else localhost:5555)")  # fmt: skip
    parser.add_argument("--keys", default=None, metavar="DIR",
                        help="CURVE key folder with the client pair (default: $TITAN_KEYS)")  # fmt: skip
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.keys:
        os.environ["TITAN_KEYS"] = os.path.abspath(args.keys)  # the dashboard's clients pick it up
    try:
        app = make_app(args.broker)
    except TitanError as exc:
        print(f"titan-tui: {exc}", file=sys.stderr)
        return 2
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
