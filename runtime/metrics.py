"""Prometheus metrics of the server (prometheus-client, a private registry per server).

Request metrics are recorded by the tokenizer manager when a request finishes; load and KV gauges come from
the SchedulerStats the scheduler process attaches to every output batch (and to InfoOut replies). Exposed at
``GET /metrics`` in the Prometheus text format when the server runs with ``--enable-metrics`` (404 otherwise).

Names (all prefixed ``radixgen_``): ``requests_total{finish_reason}``, ``prompt_tokens_total``,
``generation_tokens_total``, ``cached_tokens_total``, ``cache_hit_rate`` (cached / prompt tokens over all
finished requests), histograms ``time_to_first_token_seconds``, ``time_per_output_token_seconds``,
``e2e_request_latency_seconds``, gauges ``num_running_reqs``, ``num_waiting_reqs``, ``kv_used_tokens``,
``kv_cached_tokens``, ``kv_free_tokens``, ``max_total_tokens``, ``kv_usage`` (used / total); with speculative
decoding ``spec_accept_length`` (a histogram: tokens emitted per request per decode-phase target forward),
``spec_proposed_tokens_total``, ``spec_accepted_tokens_total`` and ``spec_acceptance_rate`` (accepted / proposed
draft tokens so far).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from radixgen.runtime.io_struct import SchedulerStats

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_ACCEPT_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16)
_TPOT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    """The metric objects of one server, in their own registry (so several servers in one process, e.g. in
    tests, do not clash)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "radixgen_requests", "Finished requests by finish reason", ["finish_reason"], registry=r
        )
        self.prompt_tokens = Counter("radixgen_prompt_tokens", "Prompt tokens of finished requests", registry=r)
        self.generation_tokens = Counter("radixgen_generation_tokens", "Generated tokens", registry=r)
        self.cached_tokens = Counter("radixgen_cached_tokens", "Prompt tokens served from the radix cache", registry=r)
        self.cache_hit_rate = Gauge("radixgen_cache_hit_rate", "cached_tokens / prompt_tokens so far", registry=r)
        self.ttft = Histogram(
            "radixgen_time_to_first_token_seconds", "Time to first token", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.tpot = Histogram(
            "radixgen_time_per_output_token_seconds",
            "Mean time per output token after the first",
            buckets=_TPOT_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "radixgen_e2e_request_latency_seconds", "End-to-end request latency", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.running = Gauge("radixgen_num_running_reqs", "Requests running in the scheduler", registry=r)
        self.waiting = Gauge("radixgen_num_waiting_reqs", "Requests waiting in the scheduler", registry=r)
        self.kv_used = Gauge("radixgen_kv_used_tokens", "KV slots held by queued or running requests", registry=r)
        self.kv_cached = Gauge("radixgen_kv_cached_tokens", "KV slots in the radix cache", registry=r)
        self.kv_free = Gauge("radixgen_kv_free_tokens", "Free KV slots", registry=r)
        self.kv_total = Gauge("radixgen_max_total_tokens", "KV pool size in tokens", registry=r)
        self.kv_usage = Gauge("radixgen_kv_usage", "kv_used_tokens / max_total_tokens", registry=r)
        self.spec_accept_length = Histogram(
            "radixgen_spec_accept_length",
            "Tokens emitted per request per decode-phase target forward (speculative decoding)",
            buckets=_ACCEPT_BUCKETS,
            registry=r,
        )
        self.spec_proposed = Counter("radixgen_spec_proposed_tokens", "Draft tokens proposed", registry=r)
        self.spec_accepted = Counter("radixgen_spec_accepted_tokens", "Draft tokens accepted", registry=r)
        self.spec_acceptance_rate = Gauge(
            "radixgen_spec_acceptance_rate", "Accepted / proposed draft tokens so far", registry=r
        )
        self._prompt_total = 0
        self._cached_total = 0
        self._spec_seen = SchedulerStats(0, 0, 0, 0, 0, 0, 0)  # the cumulative spec counters already recorded

    def observe_finished(
        self,
        finish_type: str,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int,
        ttft: float | None,
        e2e: float,
    ) -> None:
        """Record one finished request (latencies in seconds; ttft None when no token was generated)."""
        self.requests.labels(finish_reason=finish_type).inc()
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(completion_tokens)
        self.cached_tokens.inc(cached_tokens)
        self._prompt_total += prompt_tokens
        self._cached_total += cached_tokens
        if self._prompt_total:
            self.cache_hit_rate.set(self._cached_total / self._prompt_total)
        self.e2e.observe(e2e)
        if ttft is not None:
            self.ttft.observe(ttft)
            if completion_tokens > 1:
                self.tpot.observe((e2e - ttft) / (completion_tokens - 1))

    def observe_stats(self, stats: SchedulerStats) -> None:
        """Update the load and KV gauges from the scheduler's latest stats."""
        self.running.set(stats.num_running_reqs)
        self.waiting.set(stats.num_waiting_reqs)
        self.kv_used.set(stats.kv_used_tokens)
        self.kv_cached.set(stats.kv_cached_tokens)
        self.kv_free.set(stats.kv_free_tokens)
        self.kv_total.set(stats.max_total_tokens)
        self.kv_usage.set(stats.kv_used_tokens / stats.max_total_tokens if stats.max_total_tokens else 0.0)
        self._observe_spec(stats)

    def _observe_spec(self, stats: SchedulerStats) -> None:
        """Fold the growth of the scheduler's cumulative speculation counters into the spec metrics."""
        seen = self._spec_seen
        if stats.spec_verify_forwards <= seen.spec_verify_forwards:
            return
        old_hist = seen.spec_accept_hist
        for n, count in enumerate(stats.spec_accept_hist):
            for _ in range(count - (old_hist[n] if n < len(old_hist) else 0)):
                self.spec_accept_length.observe(n)
        self.spec_proposed.inc(stats.spec_proposed_tokens - seen.spec_proposed_tokens)
        self.spec_accepted.inc(stats.spec_accepted_tokens - seen.spec_accepted_tokens)
        if stats.spec_proposed_tokens:
            self.spec_acceptance_rate.set(stats.spec_accepted_tokens / stats.spec_proposed_tokens)
        self._spec_seen = stats

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
