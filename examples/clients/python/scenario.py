#!/usr/bin/env python3
"""Checks a live assay stack through its public contract only, as a client in another
language meets it (README "The public contract" and proto/).

    scenario.py --nats nats://127.0.0.1:4223 --grpc 127.0.0.1:7070 --workflow smoke \\
        [--other-workflow W2] [--event-source S --event-type T]

The workflow must report at least one test; a trigger must run it on an event with the
given source and type. Each check prints ``ok <name> (...)`` or ``FAIL <name>: <why>``
and has its own time limit (``--timeout``, default 60 s), after which it says what it was
waiting for. The exit code is 0 only when every check passed.

Checks:
  run-request          a RunRequest runs to a terminal update whose totals equal the
                       distinct results on the bus and the API's GetExecution; the same
                       request published again is a duplicate to the stream
  trigger-event        a TriggerEvent fires the trigger; the same checks on its execution
  reused-execution-id  a second RunRequest (another workflow, another key) naming a
                       finished execution's id is refused: a dead letter naming it, or an
                       errored update on another subject; the first execution is unchanged
  headerless-request   two RunRequests and a TriggerEvent without a Header are each
                       dead-lettered with a reason; none starts an execution
  non-ulid-execution-id  a RunRequest whose execution_id is not a ULID is dead-lettered
                       with a reason
  lowercase-execution-id a lowercase ULID runs under its upper-case form
  empty-workflow       a RunRequest with an empty workflow name ends ERRORED with a reason
                       on assay.v1.executions._.<id>, and the API has it
  dotted-workflow      a RunRequest for an unknown workflow named with dots ends ERRORED
                       with a reason on a subject whose workflow token has `_` for `.`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Awaitable, Callable, Dict, List, Optional

import assay_client as ac
from assay_client import AssayClient, Counts, Feed, Update, describe_update, status_name

ERRORED = ac.execution_pb2.EXECUTION_STATUS_ERRORED
PRODUCER_LABEL = {"client": "python-scenario"}


class CheckFailed(Exception):
    pass


class Check:
    """One check's progress: what it waits for now and what it saw, for the message when
    it fails or runs out of time."""

    def __init__(self, name: str):
        self.name = name
        self.waiting = "the check to start"
        self.seen: List[str] = []

    def wait(self, what: str) -> None:
        self.waiting = what

    def note(self, line: str) -> None:
        self.seen.append(line)
        del self.seen[:-8]

    def fail(self, why: str) -> None:
        raise CheckFailed(why)


@dataclass
class Finished:
    """An execution some check followed to its end."""

    execution_id: str
    workflow: str
    final: Update


@dataclass
class Context:
    client: AssayClient
    args: argparse.Namespace
    first: Optional[Finished] = None

    @property
    def api(self) -> bool:
        return bool(self.args.grpc)


async def merged(feeds: Dict[str, Feed]):
    """(name, item) from several feeds as they arrive; closes them all at the end."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(name: str, feed: Feed) -> None:
        async for item in feed:
            await queue.put((name, item))

    tasks = [asyncio.create_task(pump(n, f)) for n, f in feeds.items()]
    try:
        while True:
            yield await queue.get()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for f in feeds.values():
            await f.close()


async def api_until(
    c: Check,
    client: AssayClient,
    execution_id: str,
    what: str,
    done: Callable[[ac.api_pb2.ExecutionDetail], bool],
) -> ac.api_pb2.ExecutionDetail:
    """Asks GetExecution until ``done`` holds (the API may trail the bus by a write)."""
    c.wait(f"GetExecution({execution_id}) to show {what}")
    while True:
        detail = await client.get_execution(execution_id)
        if detail is not None:
            if done(detail):
                return detail
            c.note(f"API: {describe_update(detail.execution)}")
        else:
            c.note(f"API: {execution_id} not found")
        await asyncio.sleep(0.2)


async def follow(c: Check, client: AssayClient, execution_id: str, expect: str = "") -> Update:
    c.wait(
        f"a terminal ExecutionUpdate of {execution_id} on {ac.updates_of(execution_id)}"
        + (f" ({expect})" if expect else "")
    )
    return await client.follow(
        execution_id, on_update=lambda u: c.note(f"{u.subject}: {describe_update(u.update)}")
    )


async def verify_totals(c: Check, ctx: Context, final: Update) -> str:
    """The final update's totals = the distinct results on the bus = the API's counts."""
    client = ctx.client
    u = final.update
    c.wait(f"the results of {u.execution_id} on {ac.results_of(u.execution_id)}")
    results = await client.results(u.execution_id)
    bus, told = results.counts(), Counts.of(u)
    if told.total() == 0:
        c.fail(
            f"{describe_update(u)}: no test results at all, so there is nothing to compare "
            f"(use a workflow that reports tests)"
        )
    if bus != told:
        c.fail(
            f"the final update says {told}, the bus holds {bus} "
            f"({len(results.by_id)} distinct test ids in {results.batches} batches)"
        )
    detail = f"{status_name(u.status)} {told}, {len(results.by_id)} distinct results in {results.batches} batches"
    if results.duplicates:
        detail += f" ({results.duplicates} repeated reports ignored)"
    if ctx.api:
        d = await api_until(
            c, client, u.execution_id, "a terminal status", lambda d: ac.is_terminal(d.execution.status)
        )
        api = Counts.of(d.execution)
        if d.execution.status != u.status or api != told:
            c.fail(
                f"the final update says {status_name(u.status)} {told}, "
                f"GetExecution says {status_name(d.execution.status)} {api}"
            )
        api_ids = {t.id for s in d.shards for t in s.tests}
        if api_ids != set(results.by_id):
            only_bus = sorted(set(results.by_id) - api_ids)[:5]
            only_api = sorted(api_ids - set(results.by_id))[:5]
            c.fail(f"test ids differ: only on the bus {only_bus}, only in the API {only_api}")
        detail += ", the API agrees"
    return detail


# ---------------------------------------------------------------------------------------
# The checks


async def check_run_request(c: Check, ctx: Context) -> str:
    client, workflow = ctx.client, ctx.args.workflow
    req = await client.request_run(
        workflow, requested_by="python-scenario", labels=PRODUCER_LABEL
    )
    again = await client.publish(ac.RUN_REQUESTED, req)
    if not again.duplicate:
        c.fail(
            f"the same RunRequest published twice (Nats-Msg-Id {req.header.idempotency_key}) "
            f"was not a duplicate to the stream"
        )
    final = await follow(c, client, req.execution_id)
    want = ac.update_subject(workflow, req.execution_id)
    if final.subject != want:
        c.fail(f"the final update came on {final.subject}, not {want}")
    if final.update.workflow != workflow:
        c.fail(f"the final update names workflow {final.update.workflow!r}, not {workflow!r}")
    prov = final.update.provenance
    want_prov = ("run", "request", req.header.idempotency_key, req.header.event_id, "python-scenario")
    got_prov = (prov.source, prov.type, prov.idempotency_key, prov.event_id, prov.requested_by)
    if got_prov != want_prov or dict(prov.labels) != PRODUCER_LABEL:
        c.fail(
            f"the final update's provenance (source, type, idempotency key, event id, "
            f"requested by) is {got_prov} with labels {dict(prov.labels)}; expected {want_prov} "
            f"with labels {PRODUCER_LABEL}"
        )
    detail = await verify_totals(c, ctx, final)
    ctx.first = Finished(req.execution_id, workflow, final)
    return f"{req.execution_id}: {detail}, provenance says who asked"


async def check_trigger_event(c: Check, ctx: Context) -> str:
    client, args = ctx.client, ctx.args
    known = {ctx.first.execution_id} if ctx.first else set()
    feeds = {"update": await client.workflow_updates(args.workflow, from_now=True)}
    try:
        feeds["decision"] = await client.decisions(args.event_source, from_now=True)
    except Exception as e:  # noqa: BLE001 - an older stack without the decisions stream
        c.note(f"no decisions feed: {e!r}")
    sent_at = ac.now_ms()
    ev = await client.publish_event(
        args.event_source, args.event_type, labels=PRODUCER_LABEL
    )
    key = ev.header.idempotency_key
    c.wait(
        f"an execution of {args.workflow} started by event {key} "
        f"(on {ac.PREFIX}.executions.{ac.token(args.workflow)}.> or {ac.decisions_of(args.event_source)})"
    )
    execution_id, how = "", ""
    async with contextlib.aclosing(merged(feeds)) as events:
        async for kind, item in events:
            if kind == "decision":
                rec = item
                if rec.event.idempotency_key != key and rec.header.idempotency_key != key:
                    c.note(f"decision for another event: {rec.event.idempotency_key}")
                    continue
                started = [d.execution_id for d in rec.decisions if d.execution_id and d.workflow == args.workflow and not d.reason]
                if started:
                    execution_id, how = started[0], "the scheduler's decision record"
                    break
                why = "; ".join(
                    f"{d.trigger or '(run)'} -> {d.workflow or '?'}: {d.reason or 'matched'}" for d in rec.decisions
                )
                c.fail(f"the event started nothing: {rec.reason or why or 'no trigger considered'}")
            u: Update = item
            prov = u.update.provenance
            if prov.idempotency_key:
                if prov.idempotency_key == key:
                    execution_id, how = u.update.execution_id, "its provenance"
                    break
                continue
            if u.update.execution_id not in known and u.update.created_at_ms >= sent_at - 5000:
                execution_id, how = u.update.execution_id, "arrival (the update carries no provenance)"
                break
            c.note(f"ignored {u.subject}: {describe_update(u.update)}")
    final = await follow(c, client, execution_id)
    detail = await verify_totals(c, ctx, final)
    prov = final.update.provenance
    got_prov = (prov.source, prov.type, prov.idempotency_key, prov.event_id)
    want_prov = (args.event_source, args.event_type, key, ev.header.event_id)
    if got_prov != want_prov or not prov.trigger or dict(prov.labels) != PRODUCER_LABEL:
        c.fail(
            f"the final update's provenance (source, type, idempotency key, event id) is "
            f"{got_prov}, trigger {prov.trigger!r}, labels {dict(prov.labels)}; expected "
            f"{want_prov}, the trigger's name and labels {PRODUCER_LABEL}"
        )
    detail += f", provenance names trigger {prov.trigger}"
    return f"{execution_id} (found by {how}): {detail}"


async def finished_run(c: Check, ctx: Context) -> Finished:
    """The execution run-request finished, or a new one run to its end."""
    if ctx.first is not None:
        return ctx.first
    req = await ctx.client.request_run(ctx.args.workflow, requested_by="python-scenario")
    final = await follow(c, ctx.client, req.execution_id, "a finished execution to reuse the id of")
    ctx.first = Finished(req.execution_id, ctx.args.workflow, final)
    return ctx.first


async def check_reused_execution_id(c: Check, ctx: Context) -> str:
    client = ctx.client
    first = await finished_run(c, ctx)
    eid = first.execution_id
    own_subject = ac.update_subject(first.workflow, eid)
    other = ctx.args.other_workflow or first.workflow
    c.wait(f"the state of {eid} before reusing its id")
    before = await client.last_on(own_subject)
    if before is None:
        c.fail(f"no update of {eid} on {own_subject}")
    results_before = await client.results(eid)
    api_before = await client.get_execution(eid) if ctx.api else None

    feeds = {
        "dead": await client.dead_letters(),
        "update": await client.updates(eid, from_now=True),
    }
    key = f"python/reuse/{ac.new_ulid()}"
    await client.request_run(
        other, execution_id=eid, idempotency_key=key, requested_by="python-scenario"
    )
    c.wait(
        f"a dead letter on {ac.DEAD_ALL} for the RunRequest with key {key} (execution {eid}), "
        f"or an ERRORED update of {eid} on another subject than {own_subject}"
    )
    answer = ""
    async with contextlib.aclosing(merged(feeds)) as events:
        async for kind, item in events:
            if kind == "dead":
                rr = item.run_request()
                if rr is None or rr.header.idempotency_key != key:
                    continue
                if not item.reason:
                    c.fail(f"dead letter on {item.subject} without an {ac.DEAD_REASON} header")
                answer = f"dead letter: {item.reason}"
                break
            u: Update = item
            if u.subject == own_subject:
                c.fail(f"the finished execution changed: {describe_update(u.update)} (was {describe_update(before.update)})")
            if u.update.status == ERRORED:
                if not u.update.reason:
                    c.fail(f"errored update on {u.subject} without a reason")
                answer = f"errored update on {u.subject}: {u.update.reason}"
                break
            c.fail(
                f"the second request started a plan under the reused id: {u.subject}: "
                f"{describe_update(u.update)}"
            )

    c.wait(f"the state of {eid} after the refusal")
    after = await client.last_on(own_subject)
    if after is None or after.update.revision != before.update.revision or after.update.status != before.update.status:
        c.fail(
            f"the finished execution changed: {describe_update(after.update) if after else 'no update'} "
            f"(was {describe_update(before.update)})"
        )
    results_after = await client.results(eid)
    if results_after.counts() != results_before.counts() or results_after.batches != results_before.batches:
        c.fail(
            f"results of {eid} changed: {results_before.batches} batches {results_before.counts()} "
            f"-> {results_after.batches} batches {results_after.counts()}"
        )
    if api_before is not None:
        api_after = await client.get_execution(eid)
        b, a = api_before.execution, api_after.execution if api_after else None
        if a is None or (a.workflow, a.status, Counts.of(a)) != (b.workflow, b.status, Counts.of(b)):
            c.fail(
                f"GetExecution changed: {describe_update(a) if a else 'not found'} "
                f"(was {describe_update(b)})"
            )
    return f"{eid} reused for {other}: {answer}; the first execution is unchanged"


async def check_headerless(c: Check, ctx: Context) -> str:
    client, args = ctx.client, ctx.args
    ids = [ac.new_ulid(), ac.new_ulid()]
    probe = ac.new_ulid()
    feeds: Dict[str, Feed] = {
        "dead": await client.dead_letters(),
        "event-run": await client.workflow_updates(args.workflow, from_now=True),
    }
    for i in ids:
        feeds[i] = await client.updates(i)
    # Two requests: before the fix, the first was planned under an empty key and every
    # later one acknowledged and dropped. And an event that would fire the trigger.
    for i in ids:
        await client.request_run(
            args.workflow, execution_id=i, requested_by="python-scenario", with_header=False
        )
    await client.publish_event(
        args.event_source, args.event_type, labels={"probe": probe}, with_header=False
    )
    pending = set(ids) | {probe}
    reasons: List[str] = []

    def waiting() -> str:
        return (
            f"dead letters on {ac.DEAD_ALL} for the headerless messages {sorted(pending)} "
            f"(RunRequests by execution_id, the TriggerEvent by its label probe)"
        )

    c.wait(waiting())
    async with contextlib.aclosing(merged(feeds)) as events:
        async for kind, item in events:
            if kind == "event-run":
                prov = item.update.provenance
                if prov.labels.get("probe") == probe:
                    c.fail(f"the headerless event started {describe_update(item.update)}")
                continue
            if kind != "dead":
                c.fail(
                    f"a headerless request was planned instead of refused: {item.subject}: "
                    f"{describe_update(item.update)}"
                )
            rr, ev = item.run_request(), item.trigger_event()
            if rr is not None and rr.execution_id in pending and not rr.HasField("header"):
                found = rr.execution_id
            elif ev is not None and ev.labels.get("probe") == probe and not ev.HasField("header"):
                found = probe
            else:
                continue
            if not item.reason:
                c.fail(f"dead letter for {found} without an {ac.DEAD_REASON} header")
            reasons.append(item.reason)
            pending.discard(found)
            if not pending:
                break
            c.wait(waiting())
    for i in ids:
        n = await client.count_on(ac.STREAM_EXECUTIONS, ac.updates_of(i))
        if n:
            c.fail(f"{i} was dead-lettered but also has {n} execution update(s)")
        if ctx.api and await client.get_execution(i) is not None:
            c.fail(f"{i} was dead-lettered but GetExecution knows it")
    return f"two requests and an event dead-lettered: {reasons[0]}"


async def check_non_ulid_id(c: Check, ctx: Context) -> str:
    client = ctx.client
    bad = f"not-a-ulid-{ac.new_ulid().lower()}"
    key = f"python/bad-id/{ac.new_ulid()}"
    async with await client.dead_letters() as dead:
        await client.request_run(
            ctx.args.workflow, execution_id=bad, idempotency_key=key, requested_by="python-scenario"
        )
        c.wait(f"a dead letter on {ac.DEAD_ALL} for the RunRequest with execution_id {bad!r}")
        async for d in dead:
            rr = d.run_request()
            if rr is None or rr.header.idempotency_key != key:
                continue
            if not d.reason:
                c.fail(f"dead letter without an {ac.DEAD_REASON} header")
            return f"dead letter: {d.reason}"
    raise AssertionError("unreachable: a feed never ends")


async def check_lowercase_id(c: Check, ctx: Context) -> str:
    client = ctx.client
    upper = ac.new_ulid()
    await client.request_run(
        ctx.args.workflow, execution_id=upper.lower(), requested_by="python-scenario"
    )
    final = await follow(c, client, upper, "the lowercase id requested, kept in upper case")
    detail = f"{upper.lower()} runs as {upper}: {describe_update(final.update)}"
    if ctx.api:
        await api_until(c, client, upper, "a terminal status", lambda d: ac.is_terminal(d.execution.status))
        detail += "; the API has it"
    return detail


async def rejected_request(c: Check, ctx: Context, workflow: str) -> str:
    """A RunRequest the scheduler cannot plan ends ERRORED, with a reason, on the subject
    the contract gives, and the API has it."""
    client = ctx.client
    eid = ac.new_ulid()
    await client.request_run(workflow, execution_id=eid, requested_by="python-scenario")
    want = ac.update_subject(workflow, eid)
    final = await follow(c, client, eid, f"ERRORED on {want}")
    u = final.update
    if u.status != ERRORED or not u.reason:
        c.fail(f"expected ERRORED with a reason, got {describe_update(u)}")
    if final.subject != want:
        c.fail(f"the final update came on {final.subject}, not {want}")
    detail = f"{eid} on {final.subject}: {u.reason}"
    if ctx.api:
        d = await api_until(c, client, eid, "ERRORED", lambda d: d.execution.status == ERRORED)
        if not d.execution.reason:
            c.fail("GetExecution has it ERRORED but without a reason")
        detail += "; the API agrees"
    return detail


async def check_empty_workflow(c: Check, ctx: Context) -> str:
    return await rejected_request(c, ctx, "")


async def check_dotted_workflow(c: Check, ctx: Context) -> str:
    return await rejected_request(c, ctx, ctx.args.unknown_workflow)


CHECKS: List[tuple] = [
    ("run-request", check_run_request),
    ("trigger-event", check_trigger_event),
    ("reused-execution-id", check_reused_execution_id),
    ("headerless-request", check_headerless),
    ("non-ulid-execution-id", check_non_ulid_id),
    ("lowercase-execution-id", check_lowercase_id),
    ("empty-workflow", check_empty_workflow),
    ("dotted-workflow", check_dotted_workflow),
]


async def run_check(
    name: str, fn: Callable[[Check, Context], Awaitable[str]], ctx: Context
) -> bool:
    c = Check(name)
    started = time.monotonic()
    try:
        detail = await asyncio.wait_for(fn(c, ctx), ctx.args.timeout)
        print(f"ok {name} ({detail}) [{time.monotonic() - started:.1f}s]", flush=True)
        return True
    except CheckFailed as e:
        print(f"FAIL {name}: {e}", flush=True)
    except asyncio.TimeoutError:
        seen = "; ".join(c.seen) if c.seen else "nothing"
        print(
            f"FAIL {name}: nothing after {ctx.args.timeout:.0f}s waiting for {c.waiting}; "
            f"last seen: {seen}",
            flush=True,
        )
    except Exception as e:  # noqa: BLE001 - report, go on with the next check
        print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
        traceback.print_exc(file=sys.stderr)
    return False


async def main_async(args: argparse.Namespace) -> int:
    client = await AssayClient.connect(args.nats, args.grpc or None)
    ctx = Context(client, args)
    failed = []
    try:
        for name, fn in CHECKS:
            if args.only and name not in args.only:
                continue
            if not await run_check(name, fn, ctx):
                failed.append(name)
    finally:
        await client.close()
    ran = len(args.only) if args.only else len(CHECKS)
    if failed:
        print(f"scenario: {len(failed)} of {ran} checks failed: {', '.join(failed)}")
        return 1
    print(f"scenario: all {ran} checks ok")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nats", default=ac.DEFAULT_NATS, help="NATS URL (default %(default)s)")
    p.add_argument("--grpc", default=ac.DEFAULT_GRPC, help="result API HOST:PORT; empty: skip the API (default %(default)s)")
    p.add_argument("--workflow", required=True, help="a workflow that reports tests")
    p.add_argument("--other-workflow", help="the workflow of the request reusing an id (default: --workflow)")
    p.add_argument("--event-source", default="pyclient", help="source of the event that fires the trigger (default %(default)s)")
    p.add_argument("--event-type", default="push", help="type of that event (default %(default)s)")
    p.add_argument("--unknown-workflow", default="no.such.workflow", help="a workflow name with dots that does not exist (default %(default)s)")
    p.add_argument("--timeout", type=float, default=60, help="seconds per check (default %(default)s)")
    p.add_argument("--only", action="append", choices=[n for n, _ in CHECKS], help="run only these checks (repeatable)")
    args = p.parse_args()
    try:
        return asyncio.run(main_async(args))
    except ConnectionError as e:
        print(f"scenario: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
