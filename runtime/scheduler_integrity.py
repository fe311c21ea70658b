"""The scheduler's invariants, checked by tests and debug runs: queues that follow from the request statuses and
KV slots that are each exactly one of free, cached or request-owned (``Scheduler.check_integrity``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from radixgen.runtime.req import ReqStatus

if TYPE_CHECKING:
    from radixgen.runtime.scheduler import Scheduler


def check_scheduler(s: Scheduler) -> None:
    """Assert that the queues follow from the request statuses (every live request in exactly the queue of its
    status, nothing finished queued) and that every KV slot is exactly one of free, cached (evictable/protected) or
    request-owned; then the LoRA manager's and the speculative worker's own invariants.

    Raises:
        AssertionError: naming the inconsistency.
    """
    chunked = [s.chunked_req] if s.chunked_req is not None else []
    compiling = s.grammar.queued()
    fetching = s.disagg.queued() if s.disagg is not None else []  # hold a row: the KV received so far
    queued = [*s.waiting, *compiling, *fetching, *chunked, *s.running]
    assert len({id(r) for r in queued}) == len(queued), "a request is in two queues"
    assert {r.rid for r in queued} == set(s.reqs), "live requests and queues differ"
    expected = {ReqStatus.WAITING, ReqStatus.RETRACTED}
    for r in [*s.waiting, *compiling]:
        assert r.status in expected and r.req_pool_idx is None, f"{r} in the waiting queue"
    for r in chunked:
        assert r.status is ReqStatus.PREFILLING and r.req_pool_idx is not None, f"{r} as the chunked request"
    for r in s.running:
        assert r.status is ReqStatus.RUNNING and r.req_pool_idx is not None, f"{r} in the running batch"
    s.kv.check_integrity(queued)
    if s.lora.manager is not None:
        s.lora.manager.check_integrity()
    if s.spec is not None:
        s.spec.check_integrity(queued)
