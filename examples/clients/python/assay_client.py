#!/usr/bin/env python3
"""A client of assay's public NATS contract, written from README.md and proto/ alone.

Uses nothing but nats-py, grpcio and the modules generate.sh builds from proto/:

- publish a RunRequest on ``assay.v1.runs.requested`` or a TriggerEvent on
  ``assay.v1.events.<source>``, each with a full Header and ``Nats-Msg-Id`` set to the
  header's idempotency key;
- follow the ExecutionUpdates of one execution on ``assay.v1.executions.*.<id>`` (stream
  ASSAY_EXECUTIONS) until a terminal status, keeping the highest ``revision``;
- read the TestCaseBatches of one execution on ``assay.v1.results.<id>.>`` (stream
  ASSAY_RESULTS) and count distinct test ids;
- read dead letters on ``assay.v1.dead.>`` (stream ASSAY_DEAD);
- ask the result API (``assay.v1.Results/GetExecution``) over gRPC.

As a library::

    client = await AssayClient.connect("nats://127.0.0.1:4223", grpc="127.0.0.1:7070")
    req = await client.request_run("smoke")
    final = await asyncio.wait_for(client.follow(req.execution_id), 600)
    results = await client.results(req.execution_id)
    print(final.update.status, results.counts())

As a program: ``assay_client.py --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

HERE = Path(__file__).resolve().parent
GEN = HERE / "gen"


def _die(message: str) -> None:
    print(f"assay_client: {message}", file=sys.stderr)
    raise SystemExit(2)


if not (GEN / "assay" / "v1" / "events_pb2.py").is_file():
    _die(f"generated modules missing in {GEN}: run {HERE / 'generate.sh'} first")
sys.path.insert(0, str(GEN))

try:
    import google.protobuf  # noqa: F401 - the generated modules need it
    import grpc
    import nats
    import nats.errors
    import nats.js.errors
    from nats.js import api as js_api
except ImportError as e:  # pragma: no cover - depends on the environment
    package = {"google": "protobuf", "grpc": "grpcio", "nats": "nats-py"}.get(
        (e.name or "").split(".")[0], e.name
    )
    _die(
        f"{package} is not installed for {sys.executable}: run `make tools` "
        f"(or pip install -r {HERE / 'requirements.txt'})"
    )

from assay.v1 import api_pb2, api_pb2_grpc  # noqa: E402
from assay.v1 import common_pb2, events_pb2, execution_pb2, results_pb2  # noqa: E402

# ---------------------------------------------------------------------------------------
# The contract's names (README "The public contract", libs/bus/src/{subjects,streams}.rs).

PRODUCER = "assay-python-client"
DEFAULT_NATS = "nats://127.0.0.1:4223"
DEFAULT_GRPC = "127.0.0.1:7070"

PREFIX = "assay.v1"
RUN_REQUESTED = f"{PREFIX}.runs.requested"
DEAD_ALL = f"{PREFIX}.dead.>"

STREAM_EVENTS = "ASSAY_EVENTS"
STREAM_EXECUTIONS = "ASSAY_EXECUTIONS"
STREAM_RESULTS = "ASSAY_RESULTS"
STREAM_DEAD = "ASSAY_DEAD"
STREAM_DECISIONS = "ASSAY_DECISIONS"

MSG_ID = "Nats-Msg-Id"
TRACEPARENT = "traceparent"
DEAD_REASON = "Assay-Dead-Reason"
DEAD_SUBJECT = "Assay-Original-Subject"
DEAD_DELIVERIES = "Assay-Deliveries"

Status = execution_pb2.ExecutionStatus
TERMINAL = frozenset(
    {
        execution_pb2.EXECUTION_STATUS_PASSED,
        execution_pb2.EXECUTION_STATUS_FAILED,
        execution_pb2.EXECUTION_STATUS_ERRORED,
        execution_pb2.EXECUTION_STATUS_CANCELLED,
        execution_pb2.EXECUTION_STATUS_TIMED_OUT,
    }
)

MAX_TOKEN_BYTES = 128


def status_name(status: int) -> str:
    """``EXECUTION_STATUS_PASSED`` -> ``PASSED``."""
    try:
        return Status.Name(status).removeprefix("EXECUTION_STATUS_")
    except ValueError:
        return f"status {status}"


def is_terminal(status: int) -> bool:
    return status in TERMINAL


def _fnv1a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x00000100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def token(value: str) -> str:
    """One subject token, as assay writes it: ``.``, ``*``, ``>``, whitespace and control
    characters become ``_``; empty becomes ``_``; a value longer than 128 bytes keeps its
    head and ends in ``~`` and a 64-bit FNV-1a hash of the whole value."""
    if not value:
        return "_"
    safe = "".join(
        "_" if c in ".*>" or c.isspace() or unicodedata.category(c) == "Cc" else c
        for c in value
    )
    raw = safe.encode()
    if len(raw) <= MAX_TOKEN_BYTES:
        return safe
    head = raw[: MAX_TOKEN_BYTES - 17].decode("utf-8", errors="ignore")
    return f"{head}~{_fnv1a(value.encode()):016x}"


def event_subject(source: str) -> str:
    return f"{PREFIX}.events.{token(source)}"


def update_subject(workflow: str, execution: str) -> str:
    return f"{PREFIX}.executions.{token(workflow)}.{token(execution)}"


def updates_of(execution: str) -> str:
    return f"{PREFIX}.executions.*.{token(execution)}"


def results_of(execution: str) -> str:
    return f"{PREFIX}.results.{token(execution)}.>"


def decisions_of(source: str) -> str:
    return f"{PREFIX}.decisions.{token(source)}"


# ---------------------------------------------------------------------------------------
# Headers

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_ulid(now_ms: Optional[int] = None) -> str:
    """A ULID: 48 bits of Unix milliseconds and 80 random bits, 26 Crockford base32
    characters, upper case."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = ((ms & ((1 << 48) - 1)) << 80) | secrets.randbits(80)
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def now_ms() -> int:
    return int(time.time() * 1000)


def new_traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def make_header(idempotency_key: str, producer: str = PRODUCER) -> common_pb2.Header:
    """Every field the contract asks for: a fresh ULID, the business key, now, who we are,
    and a new W3C trace."""
    return common_pb2.Header(
        event_id=new_ulid(),
        idempotency_key=idempotency_key,
        occurred_at_ms=now_ms(),
        producer=producer,
        traceparent=new_traceparent(),
    )


# ---------------------------------------------------------------------------------------
# What the client reads back


@dataclass
class Counts:
    passed: int = 0
    failed: int = 0
    errored: int = 0
    skipped: int = 0

    @classmethod
    def of(cls, msg) -> "Counts":
        """The totals of an ExecutionUpdate."""
        return cls(msg.passed, msg.failed, msg.errored, msg.skipped)

    def total(self) -> int:
        return self.passed + self.failed + self.errored + self.skipped

    def __str__(self) -> str:
        return (
            f"passed={self.passed} failed={self.failed} "
            f"errored={self.errored} skipped={self.skipped}"
        )


@dataclass
class Results:
    """The test cases of one execution as the bus has them.

    Only each shard's latest attempt counts (a redelivered shard job runs as the next
    attempt and replaces the earlier one's results); within it the first report of a test
    id wins, so a redelivered batch changes nothing."""

    batches: int = 0
    duplicates: int = 0
    by_id: Dict[str, results_pb2.TestCaseResult] = field(default_factory=dict)

    @classmethod
    def of(cls, batches: List[results_pb2.TestCaseBatch]) -> "Results":
        latest: Dict[int, int] = {}
        for b in batches:
            latest[b.shard_index] = max(latest.get(b.shard_index, 0), b.attempt)
        out = cls(batches=len(batches))
        for b in batches:
            if b.attempt != latest[b.shard_index]:
                continue
            for r in b.results:
                if r.id in out.by_id:
                    out.duplicates += 1
                else:
                    out.by_id[r.id] = r
        return out

    def counts(self) -> Counts:
        c = Counts()
        for r in self.by_id.values():
            if r.status == results_pb2.TEST_STATUS_PASSED:
                c.passed += 1
            elif r.status == results_pb2.TEST_STATUS_FAILED:
                c.failed += 1
            elif r.status == results_pb2.TEST_STATUS_ERRORED:
                c.errored += 1
            elif r.status == results_pb2.TEST_STATUS_SKIPPED:
                c.skipped += 1
        return c


@dataclass
class Update:
    """An ExecutionUpdate and the subject it came on."""

    subject: str
    update: results_pb2.ExecutionUpdate
    stream_seq: int


@dataclass
class DeadLetter:
    subject: str
    reason: str
    original_subject: str
    deliveries: str
    headers: Dict[str, str]
    payload: bytes

    def run_request(self) -> Optional[events_pb2.RunRequest]:
        """The payload as a RunRequest, if it came from the run subject and decodes."""
        if self.original_subject != RUN_REQUESTED:
            return None
        try:
            return events_pb2.RunRequest.FromString(self.payload)
        except Exception:  # noqa: BLE001 - a dead letter may be any bytes
            return None


    def trigger_event(self) -> Optional[events_pb2.TriggerEvent]:
        """The payload as a TriggerEvent, if it came from an event subject and decodes."""
        if not self.original_subject.startswith(f"{PREFIX}.events."):
            return None
        try:
            return events_pb2.TriggerEvent.FromString(self.payload)
        except Exception:  # noqa: BLE001 - a dead letter may be any bytes
            return None


def describe_update(u: results_pb2.ExecutionUpdate) -> str:
    reason = f' "{u.reason}"' if u.reason else ""
    queue = f" queue_position={u.queue_position}" if u.queue_position else ""
    return (
        f"{u.execution_id} {u.workflow or '(no workflow)'} rev {u.revision} "
        f"{status_name(u.status)}{reason} {Counts.of(u)}{queue}"
    )


# ---------------------------------------------------------------------------------------
# Feeds


def _update(msg) -> Update:
    return Update(
        msg.subject,
        results_pb2.ExecutionUpdate.FromString(msg.data),
        msg.metadata.sequence.stream,
    )


def _dead_letter(msg) -> DeadLetter:
    headers = dict(msg.headers or {})
    return DeadLetter(
        subject=msg.subject,
        reason=headers.get(DEAD_REASON, ""),
        original_subject=headers.get(DEAD_SUBJECT, ""),
        deliveries=headers.get(DEAD_DELIVERIES, ""),
        headers=headers,
        payload=bytes(msg.data),
    )


class Feed:
    """The messages of one ordered consumer, decoded, in stream order. Never ends by
    itself: iterate with a timeout (``asyncio.wait_for``) or ``next(timeout)``, and close
    it (``async with``) when done."""

    def __init__(self, sub, queue: "asyncio.Queue", decode: Callable[[object], object]):
        self._sub = sub
        self._queue = queue
        self._decode = decode

    def __aiter__(self) -> "Feed":
        return self

    async def __anext__(self):
        return self._decode(await self._queue.get())

    async def next(self, timeout: Optional[float] = None):
        return self._decode(await asyncio.wait_for(self._queue.get(), timeout))

    async def close(self) -> None:
        try:
            await self._sub.unsubscribe()
        except nats.errors.Error:
            pass  # the connection is closing anyway

    async def __aenter__(self) -> "Feed":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


# ---------------------------------------------------------------------------------------
# The client


class AssayClient:
    def __init__(self, nc, grpc_target: Optional[str] = None):
        self.nc = nc
        self.js = nc.jetstream()
        self.grpc_target = grpc_target
        self._channel = None

    @classmethod
    async def connect(
        cls, nats_url: str = DEFAULT_NATS, grpc: Optional[str] = None
    ) -> "AssayClient":
        errors: List[str] = []

        async def on_error(e: Exception) -> None:
            # nats-py's default prints a traceback per attempt; keep the last one for the
            # message below, and say once that the connection is troubled.
            if not errors:
                print(f"assay_client: nats {nats_url}: {e}", file=sys.stderr)
            errors.append(str(e) or type(e).__name__)

        try:
            nc = await nats.connect(
                servers=[nats_url],
                name=PRODUCER,
                connect_timeout=5,
                max_reconnect_attempts=5,
                error_cb=on_error,
            )
        except Exception as e:  # noqa: BLE001 - nats-py raises several kinds
            last = errors[-1] if errors else repr(e)
            raise ConnectionError(
                f"cannot reach nats at {nats_url}: {last} (is the stack up? `make up`)"
            ) from e
        errors.clear()
        return cls(nc, grpc)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        await self.nc.drain()

    # -- publishing ----------------------------------------------------------------

    async def publish(self, subject: str, msg, with_msg_id: bool = True) -> js_api.PubAck:
        """Publishes to JetStream and waits for the stream's ack. ``Nats-Msg-Id`` is the
        header's idempotency key (none when the message has no header)."""
        headers: Dict[str, str] = {}
        if msg.HasField("header"):
            if with_msg_id and msg.header.idempotency_key:
                headers[MSG_ID] = msg.header.idempotency_key
            if msg.header.traceparent:
                headers[TRACEPARENT] = msg.header.traceparent
        return await self.js.publish(
            subject, msg.SerializeToString(), headers=headers or None, timeout=10
        )

    async def request_run(
        self,
        workflow: str,
        *,
        execution_id: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        config: Optional[Dict[str, str]] = None,
        labels: Optional[Dict[str, str]] = None,
        requested_by: str = "python-client",
        with_header: bool = True,
    ) -> events_pb2.RunRequest:
        """Publishes a RunRequest and returns it. The execution id is chosen here (a new
        ULID unless given), so updates can be followed before the scheduler answers; the
        idempotency key defaults to ``python/run/<execution id>``."""
        execution_id = execution_id or new_ulid()
        req = events_pb2.RunRequest(
            workflow=workflow,
            config=config or {},
            labels=labels or {},
            requested_by=requested_by,
            execution_id=execution_id,
        )
        if with_header:
            req.header.CopyFrom(
                make_header(idempotency_key or f"python/run/{execution_id}")
            )
        await self.publish(RUN_REQUESTED, req)
        return req

    async def publish_event(
        self,
        source: str,
        type_: str,
        *,
        labels: Optional[Dict[str, str]] = None,
        payload: bytes = b"",
        idempotency_key: Optional[str] = None,
        with_header: bool = True,
    ) -> events_pb2.TriggerEvent:
        """Publishes a TriggerEvent on ``assay.v1.events.<source>``; the idempotency key
        defaults to ``python/event/<event id>``."""
        ev = events_pb2.TriggerEvent(
            source=source,
            type=type_,
            labels=labels or {},
            payload=payload,
        )
        if with_header:
            header = make_header("")
            header.idempotency_key = idempotency_key or f"python/event/{header.event_id}"
            ev.header.CopyFrom(header)
        await self.publish(event_subject(source), ev)
        return ev

    # -- reading streams -----------------------------------------------------------

    async def feed(
        self,
        subject: str,
        stream: str,
        policy: js_api.DeliverPolicy,
        decode: Callable[[object], object],
    ) -> "Feed":
        """An ordered consumer on ``subject`` (ephemeral, in stream order, no acks),
        created before this returns, so nothing published afterwards is missed."""
        queue: asyncio.Queue = asyncio.Queue()

        async def put(msg) -> None:
            await queue.put(msg)

        sub = await self.js.subscribe(
            subject,
            stream=stream,
            cb=put,
            ordered_consumer=True,
            deliver_policy=policy,
        )
        return Feed(sub, queue, decode)

    async def updates(self, execution_id: str, *, from_now: bool = False) -> "Feed":
        """The ExecutionUpdates of one execution, whatever its workflow: the last one kept
        per subject first (only new ones with ``from_now``), then each new one."""
        policy = js_api.DeliverPolicy.NEW if from_now else js_api.DeliverPolicy.LAST_PER_SUBJECT
        return await self.feed(updates_of(execution_id), STREAM_EXECUTIONS, policy, _update)

    async def workflow_updates(self, workflow: str, *, from_now: bool = True) -> "Feed":
        """The ExecutionUpdates of every execution of one workflow."""
        policy = js_api.DeliverPolicy.NEW if from_now else js_api.DeliverPolicy.LAST_PER_SUBJECT
        subject = f"{PREFIX}.executions.{token(workflow)}.>"
        return await self.feed(subject, STREAM_EXECUTIONS, policy, _update)

    async def dead_letters(self) -> "Feed":
        """Every dead letter the stream holds, then each new one."""
        return await self.feed(DEAD_ALL, STREAM_DEAD, js_api.DeliverPolicy.ALL, _dead_letter)

    async def decisions(self, source: str, *, from_now: bool = True) -> "Feed":
        """The scheduler's EventRecords for events of ``source``: what each started, or
        why nothing."""
        policy = js_api.DeliverPolicy.NEW if from_now else js_api.DeliverPolicy.ALL
        return await self.feed(
            decisions_of(source),
            STREAM_DECISIONS,
            policy,
            lambda m: events_pb2.EventRecord.FromString(m.data),
        )

    async def follow(
        self,
        execution_id: str,
        *,
        on_update: Optional[Callable[[Update], None]] = None,
    ) -> Update:
        """Follows one execution until an update with a terminal status and returns it.
        An update whose revision is not above the highest seen is skipped (revisions grow
        per execution; the stream keeps the last 64 updates per subject, not every one)."""
        best: Optional[Update] = None
        async with await self.updates(execution_id) as feed:
            async for u in feed:
                if best is not None and u.update.revision <= best.update.revision:
                    continue
                best = u
                if on_update is not None:
                    on_update(u)
                if is_terminal(u.update.status):
                    return u
        raise RuntimeError("unreachable: a feed never ends")

    async def last_on(self, subject: str) -> Optional[Update]:
        """The last ExecutionUpdate on one exact subject, if any."""
        try:
            msg = await self.js.get_last_msg(STREAM_EXECUTIONS, subject)
        except nats.js.errors.NotFoundError:
            return None
        return Update(subject, results_pb2.ExecutionUpdate.FromString(msg.data), msg.seq)

    async def count_on(self, stream: str, subject: str) -> int:
        """How many messages ``stream`` holds on subjects matching ``subject``."""
        info = await self.js.stream_info(stream, subjects_filter=subject)
        return sum((info.state.subjects or {}).values())

    async def results(self, execution_id: str) -> Results:
        """Every TestCaseBatch of the execution the stream holds now. Read once the
        execution is final: its results are then all on the bus (runners publish them
        before their shard's final status, and the aggregator ends an execution only
        after it counted every batch its shards announced)."""
        subject = results_of(execution_id)
        if await self.count_on(STREAM_RESULTS, subject) == 0:
            return Results()
        batches: List[results_pb2.TestCaseBatch] = []
        async with await self.feed(
            subject, STREAM_RESULTS, js_api.DeliverPolicy.ALL, lambda m: m
        ) as feed:
            while True:
                msg = await feed.next(timeout=30)
                batches.append(results_pb2.TestCaseBatch.FromString(msg.data))
                if msg.metadata.num_pending == 0:
                    break
        return Results.of(batches)

    # -- the result API ------------------------------------------------------------

    def _stub(self) -> api_pb2_grpc.ResultsStub:
        if not self.grpc_target:
            raise ValueError("no gRPC address given (--grpc HOST:PORT)")
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.grpc_target)
        return api_pb2_grpc.ResultsStub(self._channel)

    async def get_execution(self, execution_id: str) -> Optional[api_pb2.ExecutionDetail]:
        """``assay.v1.Results/GetExecution``, every page of test cases; None when the API
        does not know the id.

        Test cases come in pages (each under gRPC's 4 MiB message limit); the later pages'
        cases are added to their shards of the first page, whose head (status, counters,
        shard summaries) is kept.
        """
        detail: Optional[api_pb2.ExecutionDetail] = None
        token = ""
        while True:
            try:
                page = await self._stub().GetExecution(
                    api_pb2.GetExecutionRequest(
                        id=execution_id, page_size=PAGE_SIZE, page_token=token
                    ),
                    timeout=10,
                )
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    return None
                raise
            if detail is None:
                detail = page
            else:
                merge_page(detail, page)
            if not page.next_page_token:
                detail.next_page_token = ""
                return detail
            if page.next_page_token == token:
                raise RuntimeError(
                    f"the result API handed out the same page token twice for {execution_id}"
                )
            token = page.next_page_token


# Test cases asked for per GetExecution page (the server's maximum).
PAGE_SIZE = 10_000


def merge_page(into: "api_pb2.ExecutionDetail", page: "api_pb2.ExecutionDetail") -> None:
    """Adds a later page's test cases to their shards (by index) in ``into``."""
    by_index = {s.summary.index: s for s in into.shards}
    for shard in page.shards:
        if not shard.tests:
            continue
        existing = by_index.get(shard.summary.index)
        if existing is None:
            into.shards.add().CopyFrom(shard)
        else:
            existing.tests.extend(shard.tests)


# ---------------------------------------------------------------------------------------
# The program


def _pairs(items: Optional[List[str]], flag: str) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _die(f"{flag} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _print_update(u: Update) -> None:
    print(f"  {describe_update(u.update)}  [{u.subject}]", flush=True)


async def _follow_and_report(client: AssayClient, execution_id: str, timeout: float) -> int:
    try:
        final = await asyncio.wait_for(
            client.follow(execution_id, on_update=_print_update), timeout
        )
    except asyncio.TimeoutError:
        print(f"no terminal update for {execution_id} within {timeout:.0f}s", file=sys.stderr)
        return 3
    results = await client.results(execution_id)
    print(
        f"{status_name(final.update.status)}: {Counts.of(final.update)} "
        f"({len(results.by_id)} distinct results in {results.batches} batches on the bus: "
        f"{results.counts()})"
    )
    return 0 if final.update.status == execution_pb2.EXECUTION_STATUS_PASSED else 1


async def _main(args: argparse.Namespace) -> int:
    client = await AssayClient.connect(args.nats, args.grpc)
    try:
        if args.command == "run":
            req = await client.request_run(
                args.workflow,
                execution_id=args.execution_id,
                idempotency_key=args.idempotency_key,
                config=_pairs(args.set, "--set"),
                labels=_pairs(args.label, "--label"),
            )
            print(req.execution_id, flush=True)
            if args.detach:
                return 0
            return await _follow_and_report(client, req.execution_id, args.timeout)
        if args.command == "event":
            ev = await client.publish_event(
                args.source,
                args.type,
                labels=_pairs(args.label, "--label"),
                idempotency_key=args.idempotency_key,
            )
            print(f"published {ev.header.event_id} (idempotency key {ev.header.idempotency_key})")
            return 0
        if args.command == "watch":
            return await _follow_and_report(client, args.execution_id, args.timeout)
        if args.command == "results":
            results = await client.results(args.execution_id)
            for tid, r in sorted(results.by_id.items()):
                status = results_pb2.TestStatus.Name(r.status).removeprefix("TEST_STATUS_")
                print(f"{status:8} {tid}")
            print(f"{results.counts()} ({results.batches} batches, {results.duplicates} repeated reports)")
            return 0
        if args.command == "get":
            detail = await client.get_execution(args.execution_id)
            if detail is None:
                print(f"execution {args.execution_id} not found", file=sys.stderr)
                return 1
            print(describe_update(detail.execution))
            for s in detail.shards:
                print(f"  shard {s.summary.index}: {len(s.tests)} tests, {s.summary.reason or ''}")
            return 0
        raise AssertionError(args.command)
    finally:
        await client.close()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="A Python client of assay's public NATS contract.")
    p.add_argument("--nats", default=os.environ.get("ASSAY_NATS_URL", DEFAULT_NATS), help="NATS URL (env ASSAY_NATS_URL; default %(default)s)")
    p.add_argument("--grpc", default=DEFAULT_GRPC, help="result API HOST:PORT (default %(default)s)")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="request a run and follow it (exit 0 only if it passed)")
    run.add_argument("workflow")
    run.add_argument("--set", action="append", metavar="K=V", help="config override")
    run.add_argument("--label", action="append", metavar="K=V", help="request label")
    run.add_argument("--execution-id", help="a ULID (default: a new one)")
    run.add_argument("--idempotency-key", help="default: python/run/<execution id>")
    run.add_argument("--detach", action="store_true", help="print the id and return")
    run.add_argument("--timeout", type=float, default=3600, help="seconds to follow (default %(default)s)")

    ev = sub.add_parser("event", help="publish a trigger event")
    ev.add_argument("source")
    ev.add_argument("type")
    ev.add_argument("--label", action="append", metavar="K=V")
    ev.add_argument("--idempotency-key", help="default: python/event/<event id>")

    watch = sub.add_parser("watch", help="follow an execution to its end")
    watch.add_argument("execution_id")
    watch.add_argument("--timeout", type=float, default=3600)

    res = sub.add_parser("results", help="the distinct test results of an execution on the bus")
    res.add_argument("execution_id")

    get = sub.add_parser("get", help="the execution as the result API has it")
    get.add_argument("execution_id")
    return p


def main() -> int:
    args = parser().parse_args()
    try:
        return asyncio.run(_main(args))
    except ConnectionError as e:
        print(f"assay_client: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
