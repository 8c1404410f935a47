"""The client's pure parts, without a stack: subject tokens as assay writes them, ULIDs,
headers, and counting results delivered twice or replaced by a retry.

    ../../../.tools/bin/python -m pytest -q test_assay_client.py
"""

import time

import assay_client as ac
from assay_client import Counts, Results, results_pb2

PASSED = results_pb2.TEST_STATUS_PASSED
FAILED = results_pb2.TEST_STATUS_FAILED
SKIPPED = results_pb2.TEST_STATUS_SKIPPED


def test_tokens_match_libs_bus_subjects():
    # The vectors of libs/bus/src/subjects.rs.
    assert ac.event_subject("ci.github") == "assay.v1.events.ci_github"
    assert ac.update_subject("a.b", "x") == "assay.v1.executions.a_b.x"
    assert ac.token("") == "_"
    assert ac.token("a *>b") == "a___b"
    assert ac.token("tab\there") == "tab_here"
    exact = "a" * ac.MAX_TOKEN_BYTES
    assert ac.token(exact) == exact
    a, b = ac.token(exact + "a"), ac.token(exact + "b")
    assert len(a.encode()) == ac.MAX_TOKEN_BYTES and a != b and a == ac.token(exact + "a")
    wide = ac.token("é." * 1000)
    assert len(wide.encode()) <= ac.MAX_TOKEN_BYTES and wide.startswith("é_é_")
    assert ac.update_subject("", "01X") == "assay.v1.executions._.01X"


def test_ulids_are_crockford_time_ordered():
    now = int(time.time() * 1000)
    ids = [ac.new_ulid() for _ in range(100)]
    assert len(set(ids)) == 100
    for u in ids:
        assert len(u) == 26 and set(u) <= set(ac._CROCKFORD) and u[0] <= "7"
        ms = 0
        for ch in u[:10]:
            ms = ms * 32 + ac._CROCKFORD.index(ch)
        assert abs(ms - now) < 60_000
    assert ac.new_ulid(1) < ac.new_ulid(2)


def test_header_has_every_field():
    h = ac.make_header("ci/pipeline/7/attempt/1")
    assert h.idempotency_key == "ci/pipeline/7/attempt/1"
    assert len(h.event_id) == 26 and h.occurred_at_ms > 0 and h.producer == ac.PRODUCER
    assert h.traceparent.startswith("00-") and len(h.traceparent) == 55


def batch(shard, attempt, number, *cases):
    return results_pb2.TestCaseBatch(
        execution_id="01X",
        shard_index=shard,
        attempt=attempt,
        batch=number,
        results=[results_pb2.TestCaseResult(id=i, status=s) for i, s in cases],
    )


def test_a_batch_delivered_twice_counts_once():
    b = batch(0, 1, 0, ("a", PASSED), ("b", FAILED), ("c", SKIPPED))
    once = Results.of([b])
    twice = Results.of([b, b])
    assert once.counts() == twice.counts() == Counts(passed=1, failed=1, skipped=1)
    assert twice.duplicates == 3 and twice.batches == 2


def test_a_retried_shard_counts_only_its_latest_attempt():
    results = Results.of(
        [
            batch(0, 1, 0, ("a", FAILED), ("b", FAILED)),
            batch(1, 1, 0, ("c", PASSED)),
            batch(0, 2, 0, ("a", PASSED), ("b", FAILED)),
        ]
    )
    assert results.counts() == Counts(passed=2, failed=1)
    assert results.by_id["a"].status == PASSED


def test_terminal_statuses():
    names = {ac.status_name(s) for s in ac.TERMINAL}
    assert names == {"PASSED", "FAILED", "ERRORED", "CANCELLED", "TIMED_OUT"}
    assert not ac.is_terminal(ac.execution_pb2.EXECUTION_STATUS_QUEUED)


def test_later_pages_add_their_cases_to_their_shards():
    api_pb2 = ac.api_pb2

    def shard(index, ids):
        s = api_pb2.ShardDetail()
        s.summary.index = index
        for i in ids:
            s.tests.add(id=i, status=PASSED)
        return s

    first = api_pb2.ExecutionDetail(shards=[shard(0, ["a", "b"]), shard(1, [])], next_page_token="t")
    ac.merge_page(first, api_pb2.ExecutionDetail(shards=[shard(0, ["c"]), shard(1, ["d"])]))
    ac.merge_page(first, api_pb2.ExecutionDetail(shards=[shard(2, ["e"])]))
    assert [[t.id for t in s.tests] for s in first.shards] == [["a", "b", "c"], ["d"], ["e"]]
