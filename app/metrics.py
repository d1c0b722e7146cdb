"""Prometheus metrics at /metrics: the instrumentator's request counts and latencies, plus
images scored and anomalies flagged per model.

Each app gets its own CollectorRegistry, so several apps in one process (tests) do not
collide on metric names.
"""

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry, Counter
from prometheus_fastapi_instrumentator import Instrumentator

from app.schemas import ScoreResponse

_EXAMPLE = (
    "# TYPE images_scored_total counter\n"
    'images_scored_total{model="aae"} 1024.0\n'
    "# TYPE anomalies_flagged_total counter\n"
    'anomalies_flagged_total{model="aae"} 57.0\n'
    'http_requests_total{handler="/score",method="POST",status="200"} 32.0\n'
)


class ScoringMetrics:
    """The service's own counters, labelled by model (ensemble counts as its own model)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.images_scored = Counter(
            "images_scored", "Images scored (readable files only)", ["model"], registry=registry
        )
        self.anomalies_flagged = Counter(
            "anomalies_flagged", "Images flagged as anomalous", ["model"], registry=registry
        )
        self.unreadable_files = Counter(
            "unreadable_files", "Uploaded files that could not be read", registry=registry
        )

    def record_unreadable(self, count: int) -> None:
        """Count the files of a request refused as a whole (422: none could be read)."""
        self.unreadable_files.inc(count)

    def record(self, outcome: ScoreResponse) -> None:
        """Count one request's results."""
        scored = [r for r in outcome.results if r.error is None]
        self.images_scored.labels(outcome.model).inc(len(scored))
        self.anomalies_flagged.labels(outcome.model).inc(sum(bool(r.is_anomaly) for r in scored))
        self.unreadable_files.inc(len(outcome.results) - len(scored))


def install_metrics(app: FastAPI) -> ScoringMetrics:
    """Instrument `app`, expose GET /metrics and return the scoring counters."""
    registry = CollectorRegistry()
    Instrumentator(
        registry=registry, excluded_handlers=["/metrics"], should_group_status_codes=False
    ).instrument(app).expose(
        app,
        endpoint="/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        description="Request counts and latencies per route and status, images_scored_total"
        "{model}, anomalies_flagged_total{model}, unreadable_files_total (text format 0.0.4).",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"example": _EXAMPLE}}}},
    )
    return ScoringMetrics(registry)
