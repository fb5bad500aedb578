"""The demo's agents spread over worker processes, so that their latency is the system's, not one
interpreter's: a hundred agents as tasks of the demo process shared one GIL with the API emulator,
the churn and the display, and an update waited for the others' renders.

Each worker (`python -m typha.demo.workers`) runs the real felix-client and confd-client of some
nodes (`typha.demo.agents`) as trio tasks and writes the same per-node files under OUT as before.
It speaks JSON lines: every `REPORT_INTERVAL` it writes each of its agents' state to stdout (and
the latency samples measured since the last report, and its CPU seconds); on stdin it takes
`{"start": true}` (start the agents: the demo spawns workers while typha starts, so that their
imports are not counted as the agents' time), `{"marker": STAMP}` (report whether each
felix-client has applied since receiving the write stamped STAMP) and `{"stop": true}` (or end of
file: stop). Monotonic times are comparable across processes (CLOCK_MONOTONIC).

The demo side keeps a `FelixView` / `ConfdView` per agent with the attributes the runner and the
summary read, updated from those reports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from typha.demo.agents import DemoConfdAgent, DemoFelixAgent, LatencyLog

log = logging.getLogger("typha.demo.workers")

REPORT_INTERVAL = 0.1
NODES_PER_PROCESS = 8  # agents (two per node, each with a stream thread) sharing one GIL: see process_count
PROCESSES_PER_CPU = 4
MAX_LINE = 16 << 20  # a report line is a few KB per agent; anything longer is a broken worker


def process_count(nodes: int, requested: int = 0) -> int:
    """`requested` if set, else one process per NODES_PER_PROCESS nodes, at most PROCESSES_PER_CPU per CPU.

    More processes than CPUs on purpose: inside one worker the agents' latency is set by the GIL,
    not by the CPU. Each agent's Sync stream has its own thread, and every blocking call of the
    trio thread (a file write, waking a stream's loop) waits for the GIL behind them. Measured with
    the demo's defaults on 2 CPUs (50 nodes, the machine loaded by other work, one run each):
    API write → agent p99 about 470 ms with 2 workers, 290 ms with 4, 90 to 220 ms with 8, for about
    a quarter more agent CPU with 8 than with 2."""
    if requested > 0:
        return min(requested, nodes)
    bound = PROCESSES_PER_CPU * (os.cpu_count() or 1)
    return max(1, min(bound, math.ceil(nodes / NODES_PER_PROCESS), nodes))


# -- the demo's side ------------------------------------------------------------------------------


@dataclass
class _Stats:
    applies: int = 0
    updates: int = 0
    in_sync: bool = False


@dataclass
class _Counters:
    renders: int = 0
    writes: int = 0


@dataclass
class FelixView:
    """A felix-client in a worker, as its last report described it."""

    node: str
    out: Path
    started_at: float = field(default_factory=time.monotonic)
    in_sync_at: float | None = None
    first_apply_at: float | None = None
    last_apply_at: float | None = None
    skipped_applies: int = 0
    stats: _Stats = field(default_factory=_Stats)
    settled_marker: str | None = None

    def settled(self, stamp: str) -> bool:
        return self.settled_marker == stamp

    def update(self, state: dict[str, Any]) -> None:
        self.started_at = state["started_at"]
        self.in_sync_at = state["in_sync_at"]
        self.first_apply_at = state["first_apply_at"]
        self.last_apply_at = state["last_apply_at"]
        self.skipped_applies = state["skipped_applies"]
        self.stats = _Stats(state["applies"], state["updates"], state["in_sync"])
        self.settled_marker = state["settled"]


@dataclass
class ConfdView:
    """A confd-client in a worker, as its last report described it."""

    node: str
    out: Path
    started_at: float = field(default_factory=time.monotonic)
    in_sync: bool = False
    in_sync_at: float | None = None
    first_render_at: float | None = None
    updates: int = 0
    counters: _Counters = field(default_factory=_Counters)

    def update(self, state: dict[str, Any]) -> None:
        self.started_at = state["started_at"]
        self.in_sync = state["in_sync"]
        self.in_sync_at = state["in_sync_at"]
        self.first_render_at = state["first_render_at"]
        self.updates = state["updates"]
        self.counters = _Counters(state["renders"], state["writes"])


class WorkerFailed(Exception):
    """A worker process exited before it was asked to stop."""


class AgentWorker:
    """One worker process and the views of its agents."""

    def __init__(self, index: int, nodes: Sequence[str], typha: str, nodes_dir: Path, log_path: Path,
                 felix_debounce: float, confd_debounce: float, latency: LatencyLog) -> None:
        self.index = index
        self.latency = latency
        self.felix = {n: FelixView(n, nodes_dir / n / "felix") for n in nodes}
        self.confd = {n: ConfdView(n, nodes_dir / n / "bird") for n in nodes}
        self.command = [
            sys.executable, "-m", "typha.demo.workers", "--typha", typha, "--nodes-dir", str(nodes_dir),
            "--log", str(log_path), "--felix-debounce", str(felix_debounce),
            "--confd-debounce", str(confd_debounce), *nodes,
        ]
        self.process: trio.Process | None = None
        self.stopping = False
        self.cpu_secs = 0.0  # the worker's own CPU time (all its threads), as last reported
        self.done = trio.Event()  # set when the process has exited and its reports are read

    async def run(self) -> None:
        """Start the worker and follow its reports until it exits; raises WorkerFailed if it exits unasked."""
        # Its own session: a Ctrl-C in the terminal reaches only the demo, which then stops it in order.
        # No PR_SET_PDEATHSIG: it fires when the *thread* that forked exits, and trio forks from a
        # worker thread. A demo that dies closes the worker's stdin, which stops it as well.
        self.process = await trio.lowlevel.open_process(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
        )
        assert self.process.stdout is not None
        buffer = b""
        try:
            async for chunk in self.process.stdout:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    self._report(line)
                if len(buffer) > MAX_LINE:
                    raise WorkerFailed(f"agent worker {self.index}: a report line over {MAX_LINE} bytes")
        finally:
            asked = self.stopping
            with trio.CancelScope(shield=True):
                await self.stop()
            self.done.set()
        if not asked:
            raise WorkerFailed(f"agent worker {self.index} exited with {self.process.returncode}")

    def _report(self, line: bytes) -> None:
        try:
            report = json.loads(line)
        except ValueError:
            log.warning("agent worker %d: not a report: %r", self.index, line[:200])
            return
        for node, state in report.get("felix", {}).items():
            self.felix[node].update(state)
        for node, state in report.get("confd", {}).items():
            self.confd[node].update(state)
        for at, latency in report.get("latency", ()):
            self.latency.add(latency, at)
        self.cpu_secs = report.get("cpu_secs", self.cpu_secs)

    async def send(self, command: dict[str, Any]) -> None:
        if self.process is None or self.process.stdin is None:
            return
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.process.stdin.send_all(json.dumps(command).encode() + b"\n")

    async def request_stop(self) -> None:
        """Ask the worker to stop (end of its stdin); `run` reads its last report and returns."""
        self.stopping = True
        if self.process is not None and self.process.stdin is not None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.process.stdin.aclose()

    async def stop(self) -> None:
        """Ask the worker to stop, then wait; SIGKILL if it does not go."""
        await self.request_stop()
        process = self.process
        if process is None:
            return
        with trio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


# -- the worker's side ----------------------------------------------------------------------------


class Worker:
    """The agents of some nodes, reporting on stdout and taking commands on stdin."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.latency = LatencyLog(keep_unsent=True)
        nodes_dir = Path(args.nodes_dir)
        self.felix = [DemoFelixAgent(n, args.typha, nodes_dir / n / "felix", self.latency, args.felix_debounce)
                      for n in args.nodes]
        self.confd = [DemoConfdAgent(n, args.typha, nodes_dir / n / "bird", args.confd_debounce)
                      for n in args.nodes]
        self.marker: str | None = None
        self.start = trio.Event()

    def report(self) -> bytes:
        marker, now = self.marker, time.monotonic()
        for f in self.felix:
            if f.in_sync_at is None and f.stats.in_sync:
                f.in_sync_at = now
        report = {
            "felix": {f.node: {
                "started_at": f.started_at, "in_sync_at": f.in_sync_at, "first_apply_at": f.first_apply_at,
                "last_apply_at": f.last_apply_at, "skipped_applies": f.skipped_applies, "applies": f.stats.applies,
                "updates": f.stats.updates, "in_sync": f.stats.in_sync,
                "settled": marker if marker is not None and f.settled(marker) else None,
            } for f in self.felix},
            "confd": {c.node: {
                "started_at": c.started_at, "in_sync": c.in_sync, "in_sync_at": c.in_sync_at,
                "first_render_at": c.first_render_at, "updates": c.updates, "renders": c.counters.renders,
                "writes": c.counters.writes,
            } for c in self.confd},
            "latency": self.latency.take_unsent(),
            "cpu_secs": time.process_time(),
        }
        return json.dumps(report, separators=(",", ":")).encode() + b"\n"

    async def run(self) -> None:
        out = trio.lowlevel.FdStream(os.dup(sys.stdout.fileno()))
        commands = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._agents)
            nursery.start_soon(self._report_loop, out)
            await self._read_commands(commands)
            nursery.cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            await out.send_all(self.report())  # the last word: what each agent had when it stopped

    async def _agents(self) -> None:
        await self.start.wait()
        async with trio.open_nursery() as nursery:
            now = time.monotonic()
            for felix, confd in zip(self.felix, self.confd, strict=True):
                felix.started_at = confd.started_at = now
                nursery.start_soon(_guard, felix.run, f"felix-client {felix.node}")
                nursery.start_soon(_guard, confd.run, f"confd-client {confd.node}")

    async def _report_loop(self, out: trio.lowlevel.FdStream) -> None:
        while True:
            await out.send_all(self.report())
            await trio.sleep(REPORT_INTERVAL)

    async def _read_commands(self, commands: trio.lowlevel.FdStream) -> None:
        buffer = b""
        async for chunk in commands:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                try:
                    command = json.loads(line)
                except ValueError:
                    log.warning("agent worker: not a command: %r", line[:200])
                    continue
                if command.get("stop"):
                    return
                if command.get("start"):
                    self.start.set()
                if "marker" in command:
                    self.marker = str(command["marker"])
        # End of file: the demo is done with us (or gone).


async def _guard(run: Any, what: str) -> None:
    try:
        await run()
    except Exception:
        log.exception("%s failed", what)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m typha.demo.workers", description=__doc__.splitlines()[0])
    parser.add_argument("--typha", required=True)
    parser.add_argument("--nodes-dir", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--felix-debounce", type=float, default=0.5)
    parser.add_argument("--confd-debounce", type=float, default=0.2)
    parser.add_argument("nodes", nargs="+")
    args = parser.parse_args(argv)
    handler = logging.FileHandler(args.log)  # appends, next to the demo's own lines
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the demo stops us (stdin), in order
    try:
        trio.run(Worker(args).run)
    except Exception:
        logging.getLogger("typha.demo.workers").exception("agent worker failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
