"""Listening sockets shared by several servers: refuse a port another process already listens on.

SO_REUSEPORT lets several listeners of this process share one port, and would just as silently let a
second instance of the service join it and take half the connections; :func:`claim_port` probes the
port first.
"""

from __future__ import annotations

import errno
import socket


def claim_port(host: str, port: int) -> None:
    """Fail now if anything listens on ``host:port``: listeners sharing a port with SO_REUSEPORT would
    otherwise let a second instance (same user) join it and take half the connections unnoticed.

    The probe sets SO_REUSEADDR like grpc does, so connections of a previous run still in TIME_WAIT do
    not count as in use; Linux refuses it only where a socket listens.
    """
    try:
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        addresses = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise RuntimeError(f"gRPC host {host!r} does not resolve: {exc}") from None
    for family, kind, proto, _, address in addresses:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise RuntimeError(f"gRPC port {host_port(host, port)} is in use (RESNET_SERVE_GRPC_PORT)") from None


def host_port(host: str, port: int) -> str:
    """grpc's ``host:port``, with an IPv6 literal in brackets (``::1`` -> ``[::1]:8001``)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
