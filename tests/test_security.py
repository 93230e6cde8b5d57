"""TLS, mutual TLS, bearer tokens and the rate limit on real servers (gRPC, the co-hosted and a standalone
gateway, /metrics) with the dev PKI of ``kws_rpc.security.certs``, refusals included; and the edge client over
TLS + token end to end on the fixture clips."""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from edge.lab import evaluate as client
from edge.transports import GrpcTransport, RestSpecTransport, RetryPolicy
from kws_rpc.audio.wav import decode_wav
from kws_rpc.errors import RateLimited, Unauthenticated
from kws_rpc.proto.kws.v1 import kws_pb2 as pb
from kws_rpc.proto.kws.v1 import kws_pb2_grpc as pb_grpc
from kws_rpc.security.auth import UNAUTHENTICATED, AuthConfig, Guard, RateLimiter, TokenStore, bearer, client_token
from kws_rpc.security.certs import make_dev_pki
from kws_rpc.security.tls import ClientTls, ServerTls
from kws_rpc.serving import gateway
from kws_rpc.serving.gateway import GatewayConfig, GatewayServer
from kws_rpc.serving.server import ServerConfig, ServerHandle, parse_args, serve
from kws_rpc.wire.service import SERVICE

EDGE_TOKEN = "edge-token-0123456789abcdef"
COOP_TOKEN = "coop-token-0123456789abcdef"
TOKENS = f"# name:token\nedge:{EDGE_TOKEN}\ncoop:{COOP_TOKEN}\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    paths = make_dev_pki(tmp_path_factory.mktemp("pki"))
    token_file = paths["ca.pem"].parent / "tokens.txt"
    token_file.write_text(TOKENS)
    return {**paths, "tokens": token_file}


def server_tls(pki: dict[str, Path], mutual: bool) -> ServerTls:
    return ServerTls(pki["server.pem"], pki["server.key"], pki["ca.pem"] if mutual else None)


@pytest.fixture(scope="module")
def tls_server(pki: dict[str, Path], served_model_path: Path) -> Iterator[ServerHandle]:
    """TLS without client certificates or tokens: encryption only."""
    handle = serve(ServerConfig(models=(served_model_path,), gateway_port=0, log_level="WARNING",
                                tls=server_tls(pki, mutual=False)))
    yield handle
    handle.stop(grace=1)


@pytest.fixture(scope="module")
def secure_server(pki: dict[str, Path], served_model_path: Path) -> Iterator[ServerHandle]:
    """What the README's Pi setup runs: mutual TLS, tokens, introspection behind auth."""
    handle = serve(ServerConfig(models=(served_model_path,), gateway_port=0, metrics_port=0, log_level="WARNING",
                                tls=server_tls(pki, mutual=True),
                                auth=AuthConfig(TokenStore.load(pki["tokens"]), protect_introspection=True)))
    yield handle
    handle.stop(grace=1)


def channel(target: str, pki: dict[str, Path], ca: str = "ca.pem", cert: str | None = "edge") -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(pki[ca].read_bytes(), pki[f"{cert}.key"].read_bytes() if cert else None,
                                         pki[f"{cert}.pem"].read_bytes() if cert else None)
    return grpc.secure_channel(target, creds)


def predict(ch: grpc.Channel, wav: bytes, token: str | None = None) -> pb.PredictResponse:
    md = (("authorization", f"Bearer {token}"),) if token else None
    return pb_grpc.KeywordSpottingStub(ch).Predict(pb.PredictRequest(audio=pb.Audio(wav=wav)), timeout=10, metadata=md)


def grpc_code(fn) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code()


def spec_body(wav: bytes) -> str:
    record = {"n": "audio", "u": "/", "t": 0, "vd": base64.b64encode(wav).decode()}
    return json.dumps({"bn": "dev", "bt": 1, "e": [record]})


# --- the dev PKI -----------------------------------------------------------------------------------------

def test_dev_pki(pki: dict[str, Path]) -> None:
    for name in ("ca", "server", "edge", "coop", "w0", "w1", "w2", "other-ca", "other-client"):
        assert pki[f"{name}.pem"].is_file()
        assert stat.S_IMODE(pki[f"{name}.key"].stat().st_mode) == 0o600, name
    server = x509.load_pem_x509_certificate(pki["server.pem"].read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    w1 = x509.load_pem_x509_certificate(pki["w1.pem"].read_bytes())
    assert w1.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "w1"
    ca = x509.load_pem_x509_certificate(pki["ca.pem"].read_bytes())
    other = x509.load_pem_x509_certificate(pki["other-client.pem"].read_bytes())
    w1.verify_directly_issued_by(ca)
    with pytest.raises(ValueError):
        other.verify_directly_issued_by(ca)
    with pytest.raises(ValueError, match="bad client name"):
        make_dev_pki(pki["ca.pem"].parent / "x", clients=("server",))


# --- TLS -------------------------------------------------------------------------------------------------

def test_tls_grpc_and_gateway(tls_server: ServerHandle, pki: dict[str, Path], clip_wavs: dict[str, bytes]) -> None:
    with channel(tls_server.target, pki, cert=None) as ch:
        assert predict(ch, clip_wavs["yes"]).prediction.label == "yes"
    with grpc.insecure_channel(tls_server.target) as ch:  # plaintext to a TLS port
        assert grpc_code(lambda: predict(ch, clip_wavs["yes"])) == grpc.StatusCode.UNAVAILABLE
    with channel(tls_server.target, pki, ca="other-ca.pem", cert=None) as ch:  # the wrong CA
        assert grpc_code(lambda: predict(ch, clip_wavs["yes"])) == grpc.StatusCode.UNAVAILABLE
    assert tls_server.gateway is not None and tls_server.gateway.url.startswith("https://")
    url = tls_server.gateway.url
    r = requests.put(url + "/", data=spec_body(clip_wavs["no"]), verify=pki["ca.pem"], timeout=10)
    assert r.status_code == 200 and r.json()["label"] == "no"
    assert requests.get(url + "/readyz", verify=pki["ca.pem"], timeout=5).json()["status"] == "SERVING"
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(url + "/healthz", verify=pki["other-ca.pem"], timeout=5)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url.replace("https://", "http://") + "/healthz", timeout=5)


# --- mutual TLS ------------------------------------------------------------------------------------------

def test_mtls_grpc(secure_server: ServerHandle, pki: dict[str, Path], clip_wavs: dict[str, bytes]) -> None:
    with channel(secure_server.target, pki) as ch:
        assert predict(ch, clip_wavs["up"], EDGE_TOKEN).prediction.label == "up"
    refused = {"no client certificate": dict(cert=None),
               "a client certificate from another CA": dict(cert="other-client"),
               "the client trusts another CA": dict(ca="other-ca.pem")}
    for why, kw in refused.items():
        with channel(secure_server.target, pki, **kw) as ch:  # type: ignore[arg-type]
            assert grpc_code(lambda: predict(ch, clip_wavs["up"], EDGE_TOKEN)) == grpc.StatusCode.UNAVAILABLE, why


def test_mtls_gateway(secure_server: ServerHandle, pki: dict[str, Path], clip_wavs: dict[str, bytes]) -> None:
    assert secure_server.gateway is not None
    url, auth = secure_server.gateway.url, {"Authorization": f"Bearer {EDGE_TOKEN}"}
    cert = (str(pki["edge.pem"]), str(pki["edge.key"]))
    r = requests.put(url + "/", data=spec_body(clip_wavs["go"]), headers=auth, verify=pki["ca.pem"], cert=cert,
                     timeout=10)
    assert r.status_code == 200 and r.json()["label"] == "go"
    other = (str(pki["other-client.pem"]), str(pki["other-client.key"]))
    refused = {"no client certificate": dict(verify=pki["ca.pem"]),
               "a client certificate from another CA": dict(verify=pki["ca.pem"], cert=other),
               "the client trusts another CA": dict(verify=pki["other-ca.pem"], cert=cert)}
    for why, kw in refused.items():
        with pytest.raises(requests.exceptions.ConnectionError):  # SSLError or a reset after the handshake
            requests.get(url + "/healthz", timeout=5, **kw)  # type: ignore[arg-type]
            pytest.fail(why)


# --- bearer tokens ---------------------------------------------------------------------------------------

def test_tokens_on_grpc(secure_server: ServerHandle, pki: dict[str, Path], clip_wavs: dict[str, bytes]) -> None:
    with channel(secure_server.target, pki) as ch:
        for token in (None, "not-a-token-at-all-0000", EDGE_TOKEN[:-1], EDGE_TOKEN + "x"):
            with pytest.raises(grpc.RpcError) as e:
                predict(ch, clip_wavs["yes"], token)
            assert (e.value.code(), e.value.details()) == (grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)
        assert predict(ch, clip_wavs["yes"], COOP_TOKEN).prediction.label == "yes"
        health = health_pb2_grpc.HealthStub(ch)  # open without a token
        assert health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)  # behind auth here (--auth-introspection)
        ask = [reflection_pb2.ServerReflectionRequest(list_services="")]
        assert grpc_code(lambda: next(refl.ServerReflectionInfo(iter(ask), timeout=5))) == \
            grpc.StatusCode.UNAUTHENTICATED
        md = (("authorization", f"Bearer {EDGE_TOKEN}"),)
        reply = next(refl.ServerReflectionInfo(iter(ask), timeout=5, metadata=md))
        assert SERVICE in {s.name for s in reply.list_services_response.service}


def test_tokens_on_the_gateway_and_metrics(secure_server: ServerHandle, pki: dict[str, Path],
                                           clip_wavs: dict[str, bytes]) -> None:
    assert secure_server.gateway is not None
    s = requests.Session()  # verify and cert per request: a Session's own lose to $REQUESTS_CA_BUNDLE
    s.request = functools.partial(s.request, verify=str(pki["ca.pem"]),  # type: ignore[method-assign]
                                  cert=(str(pki["edge.pem"]), str(pki["edge.key"])))
    url = secure_server.gateway.url
    bodies = set()
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": EDGE_TOKEN},
                    {"Authorization": f"Basic {EDGE_TOKEN}"}):
        r = s.put(url + "/", data=spec_body(clip_wavs["yes"]), headers=headers, timeout=10)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
        bodies.add(r.text)
    assert len(bodies) == 1  # the same answer whatever was wrong
    assert r.json()["error"] == {"code": 401, "status": "UNAUTHENTICATED", "message": UNAUTHENTICATED}
    assert s.get(url + "/healthz", timeout=5).status_code == 200  # health stays open
    assert s.get(url + "/readyz", timeout=5).json()["status"] == "SERVING"
    auth = {"Authorization": f"Bearer {EDGE_TOKEN}"}
    for path in ("/docs", "/openapi.json", "/v1/models/big"):
        assert s.get(url + path, timeout=5).status_code == 401, path
    assert s.get(url + "/openapi.json", headers=auth, timeout=5).status_code == 200
    r = s.post(url + "/v1/predict", json={"audio": {"wav": base64.b64encode(clip_wavs["left"]).decode()}},
               headers=auth, timeout=10)
    assert r.status_code == 200 and r.json()["prediction"]["label"] == "left"
    metrics = f"https://127.0.0.1:{secure_server.metrics_port}/metrics"
    assert s.get(metrics, timeout=5).status_code == 401
    text = s.get(metrics, headers=auth, timeout=5).text
    assert 'kws_requests_total{code="UNAUTHENTICATED",method="Predict"}' in text


def test_standalone_gateway_forwards_the_token_over_mtls(secure_server: ServerHandle, pki: dict[str, Path],
                                                         clip_wavs: dict[str, bytes]) -> None:
    """A gateway in its own process (here a thread) reaches gRPC over mTLS with no token of its own: each
    client's Authorization is forwarded, so the gRPC server decides, and its 401 comes back as JSON."""
    backend_tls = ClientTls(pki["ca.pem"], pki["w0.pem"], pki["w0.key"])
    gw = GatewayServer(GatewayConfig(secure_server.target, port=0, log_level="warning", backend_tls=backend_tls))
    try:
        body = spec_body(clip_wavs["right"])
        r = requests.put(gw.url + "/", data=body, headers={"Authorization": f"Bearer {EDGE_TOKEN}"}, timeout=10)
        assert r.status_code == 200 and r.json()["label"] == "right"
        for headers in ({}, {"Authorization": "Bearer \xff not ascii".encode("latin-1")}):
            r = requests.put(gw.url + "/", data=body, headers=headers, timeout=10)
            assert r.status_code == 401 and r.json()["error"]["message"] == UNAUTHENTICATED
        # a control character is not a header value at all: the HTTP parser answers 400 itself
        r = requests.put(gw.url + "/", data=body, headers={"Authorization": b"Bearer \x01"}, timeout=10)
        assert r.status_code == 400
    finally:
        gw.stop()


# --- rate limit ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def limited_server(pki: dict[str, Path], served_model_path: Path) -> Iterator[ServerHandle]:
    """1 request/s, burst 2, loopback included; one bucket per token name."""
    handle = serve(ServerConfig(models=(served_model_path,), gateway_port=0, log_level="WARNING",
                                auth=AuthConfig(TokenStore.load(pki["tokens"]), rate=1.0, burst=2,
                                                rate_limit_loopback=True)))
    yield handle
    handle.stop(grace=1)


def test_rate_limit_grpc_and_rest(limited_server: ServerHandle, clip_wavs: dict[str, bytes]) -> None:
    with grpc.insecure_channel(limited_server.target) as ch:
        for _ in range(2):
            predict(ch, clip_wavs["yes"], COOP_TOKEN)
        with pytest.raises(grpc.RpcError) as e:
            predict(ch, clip_wavs["yes"], COOP_TOKEN)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "rate limit" in e.value.details()
        assert 0 < float(dict(e.value.trailing_metadata())["retry-after"]) <= 1.0
        health = health_pb2_grpc.HealthStub(ch)  # never limited
        for _ in range(5):
            health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert limited_server.gateway is not None
    url, auth = limited_server.gateway.url, {"Authorization": f"Bearer {COOP_TOKEN}"}
    r = requests.put(url + "/", data=spec_body(clip_wavs["yes"]), headers=auth, timeout=10)  # the same bucket
    assert r.status_code == 429 and r.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert r.headers["retry-after"] == "1"
    assert all(requests.get(url + "/healthz", timeout=5).status_code == 200 for _ in range(5))


@pytest.mark.parametrize("kind", ["rest", "grpc"])
def test_edge_honours_retry_after(limited_server: ServerHandle, clip_wavs: dict[str, bytes], kind: str) -> None:
    """Within max_retry_after_s the edge waits as told and gets its answer; beyond it, it keeps the little
    answer and sends nothing until the server's time has passed."""
    audio, _ = decode_wav(clip_wavs["stop"])
    assert limited_server.gateway is not None

    url = limited_server.gateway.url + "/"

    def transport(policy: RetryPolicy) -> RestSpecTransport | GrpcTransport:
        if kind == "rest":
            return RestSpecTransport(url, "0x1", policy, token=EDGE_TOKEN)
        return GrpcTransport(limited_server.target, "wav", policy, token=EDGE_TOKEN)

    time.sleep(2.0)  # a full bucket for "edge"
    t = transport(RetryPolicy(timeout_s=10, retries=1, backoff_s=0.01))
    try:
        answers = [t.ask(audio, str(i)) for i in range(3)]
    finally:
        t.close()
    assert [a.label for a in answers] == ["stop"] * 3
    assert [a.attempts for a in answers] == [1, 1, 2]
    t = transport(RetryPolicy(timeout_s=10, retries=3, backoff_s=0.01, max_retry_after_s=0.01))
    try:
        late = [t.ask(audio, str(i)) for i in range(2)]
    finally:
        t.close()
    assert late[0].label is None and late[0].attempts == 1 and late[0].bytes_sent > 0
    assert late[1].label is None and late[1].attempts == 0 and late[1].error == "server asked to retry later"


# --- the edge client end to end over TLS + token ---------------------------------------------------------

@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_edge_client_over_mtls_and_token(secure_server: ServerHandle, pki: dict[str, Path], clip_wavs: dict[str, bytes],
                                         transport: str, tmp_path: Path) -> None:
    assert secure_server.gateway is not None
    token_file = tmp_path / "token"
    token_file.write_text(EDGE_TOKEN + "\n")
    cfg = client.config_from_args(client.parse_args([
        "--transport", transport, "--url", secure_server.gateway.url + "/", "--grpc", secure_server.target,
        "--payload", "mfcc-f32", "--tls-ca", str(pki["ca.pem"]), "--tls-cert", str(pki["edge.pem"]),
        "--tls-key", str(pki["edge.key"]), "--token", f"@{token_file}", "--timeout", "10"]))
    assert EDGE_TOKEN not in repr(cfg)
    t = client.make_transport(cfg)
    try:
        for word, wav in clip_wavs.items():
            audio, rate = decode_wav(wav)
            assert rate == 16000
            answer = t.ask(audio, word)
            assert (answer.label, answer.attempts, answer.error) == (word, 1, ""), word
    finally:
        t.close()
    bad = dataclasses.replace(cfg, token="not-the-token-0123456789")
    t = client.make_transport(bad)
    try:
        answer = t.ask(np.zeros(16000, np.float32), "x")
    finally:
        t.close()
    assert answer.label is None and answer.attempts == 1
    assert ("HTTP 401" if transport == "rest" else "UNAUTHENTICATED") in answer.error


@pytest.mark.parametrize("route", ["rest-adpcm", "grpc-mfcc-q5z"])
def test_calibrate_and_payload_reach_a_secure_server(secure_server: ServerHandle, pki: dict[str, Path],
                                                    clip_wavs: dict[str, bytes], route: str) -> None:
    """edge.lab.calibrate and edge.lab.payload ask big through edge.cascade.remote: the same --tls-* and --token
    flags as the client (add_remote_args), so their remote modes work against the Pi setup too."""
    from edge.cascade import remote
    from edge.lab import calibrate

    assert secure_server.gateway is not None
    flags = ["--url", secure_server.gateway.url + "/", "--grpc", secure_server.target, "--tls-ca", str(pki["ca.pem"]),
             "--tls-cert", str(pki["edge.pem"]), "--tls-key", str(pki["edge.key"]), "--timeout", "10"]
    for token, ok in ((EDGE_TOKEN, True), ("not-the-token-0123456789", False)):
        t = remote(route, calibrate.parse_args([*flags, "--token", token]))
        try:
            word, wav = next(iter(clip_wavs.items()))
            answer = t.ask(decode_wav(wav)[0], word)
        finally:
            t.close()
        assert (answer.label == word) is ok, answer
        if not ok:
            assert ("HTTP 401" if route.startswith("rest") else "UNAUTHENTICATED") in answer.error


# --- configuration ---------------------------------------------------------------------------------------

def test_plaintext_off_loopback_is_refused(served_model_path: Path, pki: dict[str, Path],
                                           capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ValueError, match="--insecure"):
        serve(ServerConfig(models=(served_model_path,), host="0.0.0.0"))
    with pytest.raises(SystemExit):
        gateway.main(["--grpc-target", "127.0.0.1:1", "--host", "0.0.0.0"])
    assert "--insecure" in capsys.readouterr().err
    cfg = parse_args(["--model", str(served_model_path), "--host", "0.0.0.0", "--tls-cert", str(pki["server.pem"]),
                      "--tls-key", str(pki["server.key"]), "--tls-ca", str(pki["ca.pem"]),
                      "--token-file", str(pki["tokens"]), "--rate-limit", "50"])
    assert cfg.tls is not None and cfg.tls.mutual and cfg.auth.tokens is not None and cfg.auth.rate == 50
    assert EDGE_TOKEN not in repr(cfg)
    with pytest.raises(SystemExit):
        parse_args(["--model", str(served_model_path), "--tls-ca", str(pki["ca.pem"])])  # no server certificate
    with pytest.raises(ValueError, match="not a usable"):  # a key that is not the certificate's
        serve(ServerConfig(models=(served_model_path,), tls=ServerTls(pki["server.pem"], pki["edge.key"])))


def test_token_store() -> None:
    store = TokenStore.parse(["# comment", "", "edge: abcdefghijklmnop1", "qrstuvwxyz0123456789  # bare"], "t")
    assert store.names == ["edge", "token-4"]
    assert store.authenticate("Bearer abcdefghijklmnop1") == "edge"
    assert store.authenticate("bearer  qrstuvwxyz0123456789 ") == "token-4"
    for bad in (None, "", "Bearer", "Bearer abcdefghijklmnop", "Basic abcdefghijklmnop1", "abcdefghijklmnop1"):
        assert store.authenticate(bad) is None, bad
    assert "abcdefghijklmnop1" not in repr(store) and "edge" in repr(store)
    for lines, words in ((["x:short"], "at least 16"), (["a:abcdefghijklmnop1", "a:abcdefghijklmnop2"], "twice"),
                         (["a:abcdefghijklmnop1", "b:abcdefghijklmnop1"], "share"), ([], "no tokens"),
                         (["a:abc defghijklmnop1"], "visible")):
        with pytest.raises(ValueError, match=words):
            TokenStore.parse(lines, "t")
    assert bearer("Bearer x") == b"x" and client_token(None, {"KWS_TOKEN": "from-env"}) == "from-env"


def test_rate_limiter_and_guard() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.acquire("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.acquire("a") == pytest.approx(0.5) and limiter.acquire("b") == 0
    now[0] = 0.5
    assert limiter.acquire("a") == 0 and limiter.acquire("a") > 0
    guard = Guard(AuthConfig(rate=1.0, burst=1), clock=lambda: now[0])
    for _ in range(3):  # loopback is exempt by default
        assert guard.admit(None, "ipv4:127.0.0.1:5000") == "127.0.0.1"
        assert guard.admit(None, "ipv6:%5B::1%5D:5000") == "::1"
    assert guard.admit(None, "ipv4:10.0.0.5:5000") == "10.0.0.5"
    with pytest.raises(RateLimited) as e:
        guard.admit(None, "ipv4:10.0.0.5:5001")
    assert e.value.retry_after_s == pytest.approx(1.0)
    tokens = Guard(AuthConfig(TokenStore.parse([f"edge:{EDGE_TOKEN}"], "t"), rate=0))
    with pytest.raises(Unauthenticated):
        tokens.admit("Bearer nope-nope-nope-nope", "ipv4:10.0.0.5:1")
    assert tokens.admit(f"Bearer {EDGE_TOKEN}", "ipv4:10.0.0.5:1") == "edge"


def test_grpc_guard_is_installed_when_it_can_refuse_someone() -> None:
    """On a server bound to loopback with no tokens, every peer is exempt from the rate limit: no interceptor."""
    from kws_rpc.serving.grpc_auth import GuardInterceptor

    limited, open_ = Guard(AuthConfig(rate=10.0)), Guard(AuthConfig(rate=0))
    assert not GuardInterceptor.needed(limited, "127.0.0.1") and not GuardInterceptor.needed(limited, "[::1]")
    assert GuardInterceptor.needed(limited, "0.0.0.0") and GuardInterceptor.needed(limited, "server.lan")
    assert GuardInterceptor.needed(Guard(AuthConfig(rate=10.0, rate_limit_loopback=True)), "127.0.0.1")
    assert GuardInterceptor.needed(Guard(AuthConfig(TokenStore.parse([f"edge:{EDGE_TOKEN}"], "t"), rate=0)), "localhost")
    assert not GuardInterceptor.needed(open_, "0.0.0.0")
