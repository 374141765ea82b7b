"""A load-generating client process: separate from the servers and from the harness's parent.

Each process (started with the `spawn` context) opens `channels` connections to each server,
every one created with `grpc.use_local_subchannel_pool` so that they really are separate TCP
connections, which SO_REUSEPORT spreads over the server's workers (a shared subchannel would
put all of a process's calls on one worker). It then obeys the parent's commands, one phase at
a time, over a multiprocessing pipe:

- `closed`: saturation. `concurrency` requests in flight all the time (unary), or `window`
  messages in flight on each of `streams` streams; completions inside the measuring window
  give the throughput. Latency here is only indicative: a closed loop waits for its answers.
- `open`: the open loop. Request i is due at t0 + i/rate and is sent then, never held back by
  earlier answers; its latency is answer time minus *scheduled* time, so a stalled server or a
  stalled client shows as latency instead of silently lowering the rate (no coordinated
  omission). Requests still unanswered when the drain time ends are recorded with the time they
  had waited and counted as `incomplete`.

Latencies go into an HdrHistogram (1 us to 60 s, 3 significant digits), sent back encoded;
the parent merges the processes' histograms.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import uvloop
from hdrh.histogram import HdrHistogram

from benchmarks.e2e.dataset import Card
from benchmarks.e2e.mix import Mix
from payauth.clients import AsyncAcquirerClient
from payauth.v1 import authorizer_pb2

LOWEST_US = 1
HIGHEST_US = 60_000_000
SIGNIFICANT_DIGITS = 3
CALL_TIMEOUT_S = 30.0
# Connections per client process to each server, and AuthorizeStream calls per client process
# (16: the layout of the stream's highest throughput here, README "Streams per gateway").
# The harnesses' --channels and --streams default to these.
CHANNELS = 4
STREAMS = 16
# gRPC core's settings of the client processes, put into their environment as they are
# spawned (gRPC reads them when it is imported): their connections served by iomgr's
# endpoints, as the servers' accepted ones are (payauth.server.app.GRPC_ENVIRONMENT), instead
# of the EventEngine's, whose threads hand every read and write to the thread polling the
# completion queue. Run beside the default, the load generator spent 10-25 % less CPU per
# request in every mode and half the context switches (RUNS.md, "Kept, 2026-12-03
# 21:20-21:30Z"): less of the two shared cores taken from the servers it measures.
CLIENT_GRPC_ENVIRONMENT = {"GRPC_EXPERIMENTS": "-event_engine_client"}


def new_histogram() -> HdrHistogram:
    """The histogram every process and the parent use, so encodings merge."""
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


@dataclass
class ClientConfig:
    """What a client process needs; pickled to it at spawn."""

    index: int
    targets: dict[str, str]  # server name ("empty", "payauth") -> host:port
    cards: list[Card]
    run_id: str
    seed: int
    channels: int = CHANNELS
    streams: int = STREAMS
    cpus: set[int] | None = None  # the CPUs the process may run on (None: any)


@dataclass
class PhaseResult:
    """One process's share of a phase, as sent back to the parent."""

    histogram: bytes
    lag_histogram: bytes = b""  # how late requests left the client after their scheduled time
    sent: int = 0
    completed: int = 0
    incomplete: int = 0
    first_send: float = 0.0
    last_answer: float = 0.0
    window_completed: int = 0  # decisions (not failures) answered inside the measuring window
    window_s: float = 0.0
    cpu_s: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    error_samples: dict[str, str] = field(default_factory=dict)  # first message per error


def outcome_of(response: authorizer_pb2.AuthorizeResponse) -> str:
    """The outcome label of an answer: "replayed" or its ISO 8583 response code."""
    return "replayed" if response.replayed else (response.iso_response_code or "?")


def error_label(exc: BaseException) -> str:
    """The outcome label of a failed call: its gRPC status code name."""
    code = getattr(exc, "code", None)
    return f"error:{getattr(code, 'name', type(exc).__name__)}"


def failed(outcome: str) -> bool:
    """Whether an outcome is not a decision: a gRPC error, no answer by the end of the drain,
    or the stream's 91 (the server took no decision: its Redis did not answer in time)."""
    return outcome.startswith("error") or outcome in ("incomplete", "91")


class Recorder:
    """Latencies and outcomes of one phase in one process."""

    def __init__(self, window: tuple[float, float] | None = None) -> None:
        self.histogram = new_histogram()
        self.lag = new_histogram()
        self.outcomes: Counter[str] = Counter()
        self.error_samples: dict[str, str] = {}
        self.completed = 0
        self.last_answer = 0.0
        self.window = window
        self.window_completed = 0

    def sending(self, scheduled: float) -> None:
        """A request leaves now: record how late that is against its schedule (the client's
        own share of the latency; timers are millisecond-grained, so it is not zero)."""
        micros = int((time.perf_counter() - scheduled) * 1e6)
        self.lag.record_value(min(max(micros, LOWEST_US), HIGHEST_US))

    def record(self, scheduled: float, outcome: str, error: BaseException | None = None) -> None:
        """One answer (or failure) of a request scheduled (or sent) at `scheduled`."""
        if error is not None and outcome not in self.error_samples:
            self.error_samples[outcome] = str(error)[:300]
        now = time.perf_counter()
        micros = int((now - scheduled) * 1e6)
        self.histogram.record_value(min(max(micros, LOWEST_US), HIGHEST_US))
        self.outcomes[outcome] += 1
        self.completed += 1
        self.last_answer = now
        if (self.window is not None and self.window[0] <= now < self.window[1]
                and not failed(outcome)):
            self.window_completed += 1


class StreamSet:
    """`n` AuthorizeStream calls; requests go round-robin, answers are matched by request_id
    (the server answers in any order), and `on_answer` is told the outcome."""

    def __init__(self, clients: list[AsyncAcquirerClient], n: int,
                 on_answer: Callable[[int, float, authorizer_pb2.AuthorizeRequest | None, str],
                                     None]) -> None:
        self.queues: list[asyncio.Queue[authorizer_pb2.AuthorizeRequest | None]] = [
            asyncio.Queue() for _ in range(n)]
        # request_id -> (stream, scheduled time, request) of the messages awaiting an answer;
        # a replay can have the same request_id pending twice, hence the deque.
        self.pending: dict[str, deque[tuple[int, float, authorizer_pb2.AuthorizeRequest]]] = {}
        self._on_answer = on_answer
        self._next = 0
        self.error: BaseException | None = None  # what broke a stream, if one broke
        self.readers = [asyncio.create_task(self._read(i, clients[i % len(clients)]))
                        for i in range(n)]

    async def _requests(self, i: int) -> AsyncIterator[authorizer_pb2.AuthorizeRequest]:
        queue = self.queues[i]
        while (request := await queue.get()) is not None:
            yield request

    async def _read(self, i: int, client: AsyncAcquirerClient) -> None:
        try:
            async for response in client.authorize_stream(self._requests(i)):
                waiting = self.pending.get(response.request_id)
                if not waiting:
                    continue
                stream, scheduled, request = waiting.popleft()
                if not waiting:
                    del self.pending[response.request_id]
                self._on_answer(stream, scheduled, request, outcome_of(response))
        except Exception as exc:  # noqa: BLE001 - a broken stream fails its pending requests
            label = error_label(exc)
            self.error = exc
            for rid, waiting in list(self.pending.items()):
                for entry in [e for e in waiting if e[0] == i]:
                    waiting.remove(entry)
                    self._on_answer(entry[0], entry[1], None, label)
                if not waiting:
                    del self.pending[rid]

    def send(self, request: authorizer_pb2.AuthorizeRequest, scheduled: float,
             stream: int | None = None) -> int:
        """Queue a request on a stream (round-robin unless given); return the stream."""
        if stream is None:
            stream = self._next
            self._next = (self._next + 1) % len(self.queues)
        self.pending.setdefault(request.request_id, deque()).append((stream, scheduled, request))
        self.queues[stream].put_nowait(request)
        return stream

    async def close(self, drain_s: float) -> int:
        """End every stream, wait up to `drain_s` for the answers; return how many never came."""
        for queue in self.queues:
            queue.put_nowait(None)
        done, running = await asyncio.wait(self.readers, timeout=drain_s)
        for task in running:
            task.cancel()
        for task in running:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return sum(len(w) for w in self.pending.values())


class Driver:
    """The command loop of one client process."""

    def __init__(self, conn: Connection, config: ClientConfig) -> None:
        self.conn = conn
        self.config = config
        self.mix = Mix(config.cards, config.run_id, config.index, config.seed)
        self.clients: dict[str, list[AsyncAcquirerClient]] = {}

    async def connect(self) -> None:
        """Open the channels and wait until every server serves."""
        options = [("grpc.use_local_subchannel_pool", 1)]
        for name, target in self.config.targets.items():
            self.clients[name] = [
                AsyncAcquirerClient(target, timeout=CALL_TIMEOUT_S, max_attempts=1,
                                    options=options)
                for _ in range(self.config.channels)]
            for client in self.clients[name]:
                await client.wait_until_serving(60)

    async def reconnect(self, server: str, channel: int) -> str:
        """Replace one channel by a new connection (which SO_REUSEPORT may give another
        worker); the parent uses it to even out the connections over the workers."""
        clients = self.clients[server]
        await clients[channel].close()
        clients[channel] = AsyncAcquirerClient(
            self.config.targets[server], timeout=CALL_TIMEOUT_S, max_attempts=1,
            options=[("grpc.use_local_subchannel_pool", 1)])
        await clients[channel].wait_until_serving(60)
        return "ok"

    async def close(self) -> None:
        """Close every channel."""
        for clients in self.clients.values():
            for client in clients:
                await client.close()

    async def serve(self) -> None:
        """Connect, say ready, then run the parent's commands until told to stop."""
        await self.connect()
        self.conn.send("ready")
        loop = asyncio.get_running_loop()
        try:
            while True:
                command: dict[str, Any] = await loop.run_in_executor(None, self.conn.recv)
                if command["op"] == "stop":
                    break
                if command["op"] == "reconnect":
                    self.conn.send(await self.reconnect(**command["args"]))
                    continue
                self.conn.send(await self.run_phase(command["op"], dict(command["args"])))
        finally:
            await self.close()

    async def run_phase(self, op: str, args: dict[str, Any]) -> PhaseResult:
        """One phase the parent asked for ("open" or "closed"), with the CPU it took."""
        cpu_started = time.process_time()
        if op == "open":
            # Build the requests first, then wait for the common start time, so building
            # them never delays the schedule.
            loop = asyncio.get_running_loop()
            plan = self.mix.plan(max(1, int(args["rate"] * args["duration_s"])), time.time())
            self.conn.send("armed")
            t0 = await loop.run_in_executor(None, self.conn.recv)
            cpu_started = time.process_time()
            result = await self.phase_open(plan=plan, t0=t0, **args)
        else:
            result = await self.phase_closed(**args)
        result.cpu_s = time.process_time() - cpu_started
        return result

    def _result(self, recorder: Recorder, sent: int, first_send: float, incomplete: int,
                window_s: float = 0.0) -> PhaseResult:
        return PhaseResult(
            histogram=recorder.histogram.encode(), lag_histogram=recorder.lag.encode(),
            sent=sent, completed=recorder.completed,
            incomplete=incomplete, first_send=first_send, last_answer=recorder.last_answer,
            window_completed=recorder.window_completed, window_s=window_s,
            outcomes=dict(recorder.outcomes), error_samples=recorder.error_samples)

    # -- unary ----------------------------------------------------------------

    async def _call(self, server: str, client: AsyncAcquirerClient,
                    request: authorizer_pb2.AuthorizeRequest, scheduled: float,
                    recorder: Recorder) -> None:
        recorder.sending(scheduled)
        try:
            response = await client.authorize(request)
        except asyncio.CancelledError:
            recorder.record(scheduled, "incomplete")  # still unanswered when the drain ended
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is an outcome to count
            recorder.record(scheduled, error_label(exc), exc)
            return
        recorder.record(scheduled, outcome_of(response))
        self._answered(server, request, response)

    def _answered(self, server: str, request: authorizer_pb2.AuthorizeRequest,
                  response: authorizer_pb2.AuthorizeResponse) -> None:
        """What an answered unary call leaves behind: a new request joins the mix's
        replays."""
        if not response.replayed:
            self.mix.answered(server, request)

    async def phase_open(self, server: str, stream: bool, rate: float, duration_s: float,
                         t0: float, drain_s: float,
                         plan: list[authorizer_pb2.AuthorizeRequest | None]) -> PhaseResult:
        """Open loop: the requests of `plan` at `rate` per second from `t0` (a perf_counter
        time, which is CLOCK_MONOTONIC and so common to all processes) for `duration_s`."""
        n = len(plan)
        recorder = Recorder()
        if stream:
            return await self._open_stream(server, plan, rate, t0, drain_s, recorder)
        clients = self.clients[server]
        tasks: set[asyncio.Task[None]] = set()
        i = 0
        interval = 1.0 / rate
        await _sleep_until(t0)
        while i < n:
            due = min(n, int((time.perf_counter() - t0) * rate) + 1)
            while i < due:
                request = plan[i] or self.mix.replay_or_fresh(server, time.time())
                task = asyncio.create_task(self._call(server, clients[i % len(clients)],
                                                      request, t0 + i * interval, recorder))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            if i < n:
                await _sleep_until(t0 + i * interval)
        incomplete = await _drain(tasks, drain_s)
        return self._result(recorder, n, t0, incomplete)

    async def phase_closed(self, server: str, stream: bool, concurrency: int, warmup_s: float,
                           measure_s: float) -> PhaseResult:
        """Saturation: keep `concurrency` requests in flight (per stream when streaming) for
        warm-up plus measuring time; count the completions inside the measuring window."""
        start = time.perf_counter()
        window = (start + warmup_s, start + warmup_s + measure_s)
        recorder = Recorder(window)
        if stream:
            return await self._closed_stream(server, concurrency, window, recorder, start)
        clients = self.clients[server]
        sent = 0

        async def loop(client: AsyncAcquirerClient) -> None:
            nonlocal sent
            while time.perf_counter() < window[1]:
                sent += 1
                await self._call(server, client, self.mix.next(server, time.time()),
                                 time.perf_counter(), recorder)

        await asyncio.gather(*(loop(clients[k % len(clients)]) for k in range(concurrency)))
        return self._result(recorder, sent, start, 0, measure_s)

    # -- streams --------------------------------------------------------------

    def _stream_answer(self, server: str, recorder: Recorder) -> Callable[..., None]:
        def on_answer(stream: int, scheduled: float,
                      request: authorizer_pb2.AuthorizeRequest | None, outcome: str) -> None:
            recorder.record(scheduled, outcome)
            if request is not None and outcome != "replayed" and not failed(outcome):
                self.mix.answered(server, request)
        return on_answer

    async def _open_stream(self, server: str, plan: list, rate: float, t0: float,
                           drain_s: float, recorder: Recorder) -> PhaseResult:
        streams = StreamSet(self.clients[server], self.config.streams,
                            self._stream_answer(server, recorder))
        n = len(plan)
        i = 0
        interval = 1.0 / rate
        await _sleep_until(t0)
        while i < n:
            due = min(n, int((time.perf_counter() - t0) * rate) + 1)
            while i < due:
                recorder.sending(t0 + i * interval)
                streams.send(plan[i] or self.mix.replay_or_fresh(server, time.time()),
                             t0 + i * interval)
                i += 1
            if i < n:
                await _sleep_until(t0 + i * interval)
        incomplete = await self._close_streams(streams, drain_s, recorder)
        return self._result(recorder, n, t0, incomplete)

    async def _closed_stream(self, server: str, window_size: int, window: tuple[float, float],
                             recorder: Recorder, start: float) -> PhaseResult:
        n_streams = self.config.streams
        credits = [asyncio.Semaphore(window_size) for _ in range(n_streams)]
        answer = self._stream_answer(server, recorder)

        def on_answer(stream: int, scheduled: float,
                      request: authorizer_pb2.AuthorizeRequest | None, outcome: str) -> None:
            answer(stream, scheduled, request, outcome)
            credits[stream].release()

        streams = StreamSet(self.clients[server], n_streams, on_answer)
        sent = 0

        async def writer(k: int) -> None:
            nonlocal sent
            while time.perf_counter() < window[1]:
                await credits[k].acquire()
                sent += 1
                streams.send(self.mix.next(server, time.time()), time.perf_counter(), k)

        # The writers stop when the window ends, whether or not a credit came back: one
        # timer for the phase, not a timeout per message (the unary loop has none either).
        writers = [asyncio.create_task(writer(k)) for k in range(n_streams)]
        await asyncio.wait(writers, timeout=max(0.0, window[1] - time.perf_counter()))
        for task in writers:
            task.cancel()
        await asyncio.gather(*writers, return_exceptions=True)
        incomplete = await self._close_streams(streams, 10.0, recorder)
        return self._result(recorder, sent, start, incomplete, window[1] - window[0])

    @staticmethod
    async def _close_streams(streams: StreamSet, drain_s: float, recorder: Recorder) -> int:
        incomplete = await streams.close(drain_s)
        if streams.error is not None:
            recorder.error_samples.setdefault(error_label(streams.error),
                                              str(streams.error)[:300])
        for waiting in streams.pending.values():
            for _, scheduled, _ in waiting:
                recorder.record(scheduled, "incomplete")
        return incomplete


async def _sleep_until(when: float) -> None:
    delay = when - time.perf_counter()
    await asyncio.sleep(delay if delay > 0 else 0)


async def _drain(tasks: set[asyncio.Task[None]], drain_s: float) -> int:
    """Wait up to `drain_s` for the requests in flight; cancel the rest and return how many.
    A cancelled call records the time it waited, as an `incomplete` outcome."""
    if not tasks:
        return 0
    done, running = await asyncio.wait(set(tasks), timeout=drain_s)
    for task in running:
        task.cancel()
    if running:
        await asyncio.wait(running)
    return len(running)


@contextlib.contextmanager
def client_environment() -> Iterator[dict[str, str]]:
    """CLIENT_GRPC_ENVIRONMENT in this process's environment while client processes are
    spawned (they inherit it), and out of it again after; a variable the run's environment
    sets already is kept as it is. Yields the settings the clients start with."""
    added = [name for name in CLIENT_GRPC_ENVIRONMENT if name not in os.environ]
    for name in added:
        os.environ[name] = CLIENT_GRPC_ENVIRONMENT[name]
    try:
        yield {name: os.environ[name] for name in CLIENT_GRPC_ENVIRONMENT}
    finally:
        for name in added:
            os.environ.pop(name, None)


def pin_process(cpus: set[int] | None) -> None:
    """Keep this process on `cpus` (--client-cpus); None or empty leaves it anywhere."""
    if cpus:
        os.sched_setaffinity(0, cpus)


def client_main(conn: Connection, config: ClientConfig) -> None:
    """Entry point of a client process (multiprocessing spawn target)."""
    pin_process(config.cpus)
    try:
        uvloop.run(Driver(conn, config).serve())
    except KeyboardInterrupt:
        pass
