"""How the edge asks the big model: the spec's REST body or gRPC, behind one ``ask`` interface. What each
request carries (its encoding) is built by ``kws_rpc.wire.encodings``.

A remote answer is an optimisation, never a dependency: every failure (refused, slow, bad answer) ends
in ``Answer(None, ...)`` so the caller keeps the little model's label, and is counted. Retries are bounded
and back off; after ``open_after`` consecutive failures a breaker skips the network for ``cooldown_s``, so
a dead server costs a run seconds, not ``clips x timeout``. A server that says when to come back
(HTTP 429 ``Retry-After``, the gRPC ``retry-after`` trailer) is waited for up to ``max_retry_after_s``;
a longer wait keeps the little answer and sends nothing until then.

Both transports take TLS settings (``kws_rpc.security.tls.ClientTls``: the CA to trust, a client certificate for
mutual TLS) and a bearer token, sent as ``authorization: Bearer <token>`` on every request.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from kws_rpc.audio.features import FeatureConfig
from kws_rpc.audio.wav import WAV_CODECS
from kws_rpc.errors import KwsError
from kws_rpc.proto.kws.v1 import kws_pb2 as pb
from kws_rpc.security.tls import ClientTls
from kws_rpc.wire.codec import config_from_proto
from kws_rpc.wire import encodings
from kws_rpc.wire.encodings import build_request, spec_body
from kws_rpc.wire.senml import label_from_reply

log = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Per-attempt timeout, bounded retries with exponential backoff, and a failure breaker."""

    timeout_s: float = 2.0
    retries: int = 2  # extra attempts after the first
    backoff_s: float = 0.1  # sleep before retry k is backoff_s * 2**k
    open_after: int = 5  # consecutive failed asks that open the breaker
    cooldown_s: float = 5.0  # how long an open breaker skips the network
    max_retry_after_s: float = 1.0  # longest a clip waits on a server's Retry-After before a retry

    def __post_init__(self) -> None:
        if (self.timeout_s <= 0 or self.retries < 0 or self.backoff_s < 0 or self.open_after < 1
                or self.max_retry_after_s < 0):
            raise ValueError(f"bad retry policy: {self}")


@dataclasses.dataclass(frozen=True)
class Answer:
    label: str | None  # None: no usable remote answer, keep the little label
    bytes_sent: int  # request bytes put on the wire, summed over attempts
    attempts: int = 0
    error: str = ""
    score: float | None = None  # big's probability of its label, when the reply carries it


Reply = tuple[str, float | None]  # what one attempt got: the label and its probability, if given


OVER_BUDGET = "over budget"


class Transport(Protocol):
    failures: int

    def ask(self, audio: np.ndarray, clip_id: str, max_bytes: int | None = None) -> Answer:
        """Big's label for a clip; sends nothing that would take the bytes of this ask past max_bytes."""
        ...

    def close(self) -> None: ...


class Retryable(Exception):
    """An attempt failed in a way a retry may fix; ``sent`` says whether the request left the edge;
    ``retry_after`` is the server's own word on when to try again (seconds), if it gave one."""

    def __init__(self, reason: str, sent: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.sent = sent
        self.retry_after = retry_after


class Rejected(Exception):
    """The server answered, but not with a label (4xx, INVALID_ARGUMENT, malformed reply): no retry."""


class _Caller:
    """Runs one attempt function under a RetryPolicy and a breaker; shared by both transports."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.failures = 0
        self._streak = 0
        self._open_until = 0.0
        self._open_reason = "breaker open"

    def call(self, attempt: Callable[[], Reply], size: int, max_bytes: int | None = None) -> Answer:
        if max_bytes is not None and size > max_bytes:
            return Answer(None, 0, 0, OVER_BUDGET)  # not a remote failure: the breaker is not involved
        if time.monotonic() < self._open_until:
            self.failures += 1
            return Answer(None, 0, 0, self._open_reason)
        sent, error, retry_after = 0, "", 0.0
        for k in range(self.policy.retries + 1):
            if k and max_bytes is not None and sent + size > max_bytes:
                error = f"{error}; no retry: {OVER_BUDGET}"
                break
            if k:
                time.sleep(max(self.policy.backoff_s * 2 ** (k - 1), retry_after))
            try:
                label, score = attempt()
                self._streak = 0
                return Answer(label, sent + size, k + 1, score=score)
            except Retryable as e:
                sent += size if e.sent else 0
                error = str(e)
                retry_after = e.retry_after or 0.0
                if retry_after > self.policy.max_retry_after_s:  # longer than a clip may wait: stay away
                    self._open_until = max(self._open_until, time.monotonic() + retry_after)
                    self._open_reason = "server asked to retry later"
                    break
            except Rejected as e:  # resending the same request would get the same answer
                sent += size
                error = str(e)
                break
        self.failures += 1
        self._streak += 1
        if self._streak >= self.policy.open_after:
            self._open_until = max(self._open_until, time.monotonic() + self.policy.cooldown_s)
            self._open_reason = "breaker open"
            log.warning("%d remote failures in a row (%s); local answers only for %.1f s",
                        self._streak, error, self.policy.cooldown_s)
        return Answer(None, sent, k + 1, error[:300])


class RestSpecTransport:
    """PUTs the spec body to the REST gateway; big's answer is the reply's ``label``, or, from the
    reference service, its label_idx record in the course's label order. ``wav_codec`` is the WAV's
    sample coding (see spec_body)."""

    def __init__(self, url: str, device: str, policy: RetryPolicy = RetryPolicy(), tls: ClientTls | None = None,
                 token: str | None = None, wav_codec: str = "pcm16") -> None:
        import requests

        if tls is not None and not url.lower().startswith("https://"):
            raise ValueError(f"TLS settings were given, but {url[:200]} is not an https:// URL")
        self._requests = requests
        if wav_codec not in WAV_CODECS:
            raise ValueError(f"unknown WAV codec {wav_codec!r}; choose from {WAV_CODECS}")
        self.url, self.device, self.wav_codec = url, device, wav_codec
        self._session = requests.Session()
        # per request: a Session's own verify loses to $REQUESTS_CA_BUNDLE, a request's does not
        self._tls = tls.requests_kwargs() if tls is not None else {}
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"
        self._caller = _Caller(policy)

    @property
    def failures(self) -> int:
        return self._caller.failures

    def ask(self, audio: np.ndarray, clip_id: str, max_bytes: int | None = None) -> Answer:
        data = json.dumps(spec_body(audio, self.device, wav_codec=self.wav_codec))
        rq = self._requests

        def attempt() -> Reply:
            try:
                r = self._session.put(self.url, data=data, timeout=self._caller.policy.timeout_s, **self._tls)
            except rq.ConnectionError as e:  # includes ConnectTimeout: the body never left
                raise Retryable(f"connection: {e}", sent=False) from None
            except rq.Timeout as e:
                raise Retryable(f"timeout: {e}", sent=True) from None
            if r.status_code in (429, 502, 503, 504):
                raise Retryable(f"HTTP {r.status_code}", sent=True, retry_after=_seconds(r.headers.get("retry-after")))
            try:
                r.raise_for_status()
                reply = r.json()
                return label_from_reply(reply), _score(reply)
            except (rq.HTTPError, ValueError, KeyError, TypeError) as e:
                raise Rejected(f"HTTP {r.status_code}: {r.text[:200]!r} ({type(e).__name__})") from None

        return self._caller.call(attempt, len(data), max_bytes)

    def close(self) -> None:
        self._session.close()


def _score(reply: Any) -> float | None:
    """kws's ``score`` (the probability of the label); the reference service's reply has none."""
    score = reply.get("score") if isinstance(reply, dict) else None
    return float(score) if isinstance(score, (int, float)) and not isinstance(score, bool) else None


def _seconds(value: str | None) -> float | None:
    """A Retry-After value in seconds (an HTTP-date is not worth parsing here: treated as absent)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


_RETRY_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED")


class GrpcTransport:
    """Unary Predict over one channel; for log-mel encodings the features are computed here, as the
    server's GetModelMetadata says, with the same ``kws_rpc.audio.features.log_mel`` the server uses."""

    def __init__(self, target: str, encoding: str = "wav", policy: RetryPolicy = RetryPolicy(),
                 tls: ClientTls | None = None, token: str | None = None, model: str = "") -> None:
        """``model``: the served model to ask by name ("" = the server's default)."""
        import grpc

        from kws_rpc.proto.kws.v1 import kws_pb2_grpc

        self._grpc = grpc
        self.target, self.encoding = target, encodings.encoding(encoding)  # ValueError if unknown
        self.model = model
        from kws_rpc.wire.channels import open_channel

        # one server, an ip:port list or dns:///name:port: balanced with round_robin, health-checked
        self._channel = open_channel(target, tls.grpc_credentials() if tls is not None else None)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._stub = kws_pb2_grpc.KeywordSpottingStub(self._channel)
        self._caller = _Caller(policy)
        self.config: FeatureConfig | None = None

    @property
    def failures(self) -> int:
        return self._caller.failures

    def _rpc_error(self, e: Any) -> Exception:
        code = e.code().name if e.code() is not None else "UNKNOWN"
        if code in _RETRY_CODES:
            trailers = dict(e.trailing_metadata() or ())
            return Retryable(f"{code}: {e.details()}", sent=code != "UNAVAILABLE",
                             retry_after=_seconds(trailers.get("retry-after")))
        if code == "INVALID_ARGUMENT":  # e.g. the server now runs another model: relearn its features
            self.config = None
        return Rejected(f"{code}: {e.details()}")

    def _fetch_config(self) -> Reply:
        try:
            meta = self._stub.GetModelMetadata(pb.ModelMetadataRequest(model=self.model), timeout=self._caller.policy.timeout_s,
                                               metadata=self._metadata)
        except self._grpc.RpcError as e:
            raise self._rpc_error(e) from None
        try:
            self.config = config_from_proto(meta.feature_config)
        except KwsError as e:
            raise Rejected(f"unusable model metadata: {e}") from None
        return meta.name, None

    def ask(self, audio: np.ndarray, clip_id: str, max_bytes: int | None = None) -> Answer:
        if encodings.is_logmel(self.encoding) and self.config is None:
            first = self._caller.call(self._fetch_config, 0)  # learnt once; a failure fails this ask
            if self.config is None:
                return first
        request = build_request(audio, self.encoding, clip_id, self.config)
        request.model = self.model

        def attempt() -> Reply:
            try:
                reply = self._stub.Predict(request, timeout=self._caller.policy.timeout_s, metadata=self._metadata)
            except self._grpc.RpcError as e:
                raise self._rpc_error(e) from None
            p = reply.prediction
            if not p.label:
                raise Rejected("the reply carries no label")
            return p.label, (p.probabilities[p.index] if p.index < len(p.probabilities) else None)

        return self._caller.call(attempt, request.ByteSize(), max_bytes)

    def close(self) -> None:
        self._channel.close()
