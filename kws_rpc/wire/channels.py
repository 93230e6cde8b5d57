"""The one way kws opens a gRPC channel to servers: one address, several, or a DNS name with many.

    127.0.0.1:50051                        one server
    10.0.0.5:50051,10.0.0.6:50051          several servers (IP literals), requests balanced over them
    dns:///kws.internal:50051              every address the name resolves to (a Kubernetes headless
                                           Service, a round-robin DNS record), re-resolved on failure

With more than one backend possible the channel uses gRPC's own ``round_robin`` policy with client-side
health checking: a server that reports NOT_SERVING (draining on SIGTERM) or cannot be reached gets no
calls until it is back. The edge client and a standalone gateway both call ``open_channel``.
"""

from __future__ import annotations

import ipaddress
import json

import grpc

SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": ""},  # grpc.health.v1, overall status (kws_rpc.serving.server sets it)
})


def channel_target(targets: str) -> tuple[str, bool]:
    """(gRPC target string, balanced?) for ``host:port``, a comma-separated list of ``ip:port``, or a
    ``dns:///name:port`` target. A list must use IP literals: gRPC's ipv4/ipv6 resolvers take no names."""
    parts = [t.strip() for t in targets.split(",") if t.strip()]
    if not parts:
        raise ValueError("no gRPC server address given")
    if len(parts) == 1:
        return parts[0], parts[0].startswith("dns:")
    hosts = []
    for part in parts:
        host, sep, port = part.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"{part!r} in the server list is not ip:port")
        try:
            hosts.append(ipaddress.ip_address(host.strip("[]")))
        except ValueError:
            raise ValueError(f"{part!r}: a list of servers takes IP addresses; for names use dns:///name:port "
                             "(every address the name resolves to)") from None
    if len({h.version for h in hosts}) != 1:
        raise ValueError("a server list mixes IPv4 and IPv6 addresses")
    return ("ipv4:" if hosts[0].version == 4 else "ipv6:") + ",".join(parts), True


def open_channel(targets: str, credentials: grpc.ChannelCredentials | None = None,
                 options: list[tuple[str, object]] | None = None) -> grpc.Channel:
    target, balanced = channel_target(targets)
    opts = list(options or [])
    if balanced:
        opts.append(("grpc.service_config", SERVICE_CONFIG))
    if credentials is not None:
        return grpc.secure_channel(target, credentials, options=opts)
    return grpc.insecure_channel(target, options=opts)
