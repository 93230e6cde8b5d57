"""Topic layout, namespaced per deployment so several ensembles can share one broker.

    kws/<deployment>/clips                         PredictRequest, QoS 2, client -> every worker
    kws/<deployment>/predictions/<worker_id>       PredictResponse, QoS 0, worker -> client
    kws/<deployment>/workers/<worker_id>/status    WorkerStatus, retained; last will = OFFLINE

Each worker writes only topics that end in its own id, so a broker ACL (mosquitto's ``pattern write
.../%u``, deploy/mosquitto.acl) can bind a worker id to an authenticated user; the client then counts
a vote only if the id in its topic is the id in its payload.
"""

from __future__ import annotations

import dataclasses

ROOT = "kws"
_FORBIDDEN = set("/+#\0")


def check_segment(value: str, what: str) -> str:
    """A deployment or worker id must be one non-empty topic level without wildcards."""
    if not value or any(c in _FORBIDDEN for c in value):
        raise ValueError(f"{what} {value!r} must be non-empty and contain none of '/', '+', '#'")
    return value


@dataclasses.dataclass(frozen=True)
class Topics:
    deployment: str = "default"

    def __post_init__(self) -> None:
        check_segment(self.deployment, "deployment")

    @property
    def base(self) -> str:
        return f"{ROOT}/{self.deployment}"

    @property
    def clips(self) -> str:
        return f"{self.base}/clips"

    @property
    def all_predictions(self) -> str:
        """Subscription filter for every worker's votes."""
        return f"{self.base}/predictions/+"

    def predictions(self, worker_id: str) -> str:
        return f"{self.base}/predictions/{check_segment(worker_id, 'worker id')}"

    def voter_of(self, topic: str) -> str | None:
        """The worker id in a prediction topic of this deployment, else None."""
        prefix = f"{self.base}/predictions/"
        wid = topic[len(prefix):] if topic.startswith(prefix) else ""
        return wid if wid and "/" not in wid else None

    @property
    def all_status(self) -> str:
        """Subscription filter for every worker's presence message."""
        return f"{self.base}/workers/+/status"

    def status(self, worker_id: str) -> str:
        return f"{self.base}/workers/{check_segment(worker_id, 'worker id')}/status"

    def worker_of(self, topic: str) -> str | None:
        """The worker id in a status topic of this deployment, else None."""
        prefix, suffix = f"{self.base}/workers/", "/status"
        if topic.startswith(prefix) and topic.endswith(suffix):
            wid = topic[len(prefix) : -len(suffix)]
            return wid if wid and "/" not in wid else None
        return None
