"""cimid's figures for /metrics, as plain data (the wire renders them): what each family service exports
(the sampler's latest readings, Jobs by state) and the HTTP requests served."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# Request latency buckets, in seconds: a GET is ~1 ms, a create that queues a Job a few.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class MetricFamily:
    """One metric: its name, Prometheus type (gauge, counter, histogram), help, and samples as
    (sample name, labels, value)."""

    name: str
    type: str
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


class RequestFigures:
    """Requests served, by method and status, and their latency histogram; updated by the HTTP layer."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, int]] = Counter()
        self.buckets = [0] * len(LATENCY_BUCKETS)
        self.total_seconds = 0.0
        self.total = 0

    def record(self, method: str, status: int, seconds: float) -> None:
        self.counts[(method, status)] += 1
        self.total += 1
        self.total_seconds += seconds
        for index, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.buckets[index] += 1
                break

    def families(self) -> list[MetricFamily]:
        requests = MetricFamily("cimid_http_requests_total", "counter", "HTTP requests answered")
        requests.samples = [(requests.name, {"method": method, "code": str(status)}, count)
                            for (method, status), count in sorted(self.counts.items())]
        latency = MetricFamily("cimid_http_request_duration_seconds", "histogram",
                               "time from a request's arrival to its answer")
        running = 0
        for bound, count in zip(LATENCY_BUCKETS, self.buckets, strict=True):
            running += count
            latency.samples.append((latency.name + "_bucket", {"le": repr(bound)}, running))
        latency.samples += [(latency.name + "_bucket", {"le": "+Inf"}, self.total),
                            (latency.name + "_sum", {}, self.total_seconds),
                            (latency.name + "_count", {}, self.total)]
        return [requests, latency]
