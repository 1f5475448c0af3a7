"""Listening sockets shared by several servers: refuse a port another process already listens on.

SO_REUSEPORT lets several listeners share one port (the gRPC door's listeners, the worker processes of
``WORKERS``), and would just as silently let a second instance of the service join it and take half the
connections; :func:`claim_port` probes the port first.
"""

from __future__ import annotations

import errno
import socket


def claim_port(host: str, port: int, what: str = "gRPC", setting: str = "GRPC_PORT") -> None:
    """Fail now if anything listens on ``host:port``: listeners sharing a port with SO_REUSEPORT would
    otherwise let a second instance (same user) join it and take half the connections unnoticed.

    The probe sets SO_REUSEADDR like grpc does, so connections of a previous run still in TIME_WAIT do
    not count as in use; Linux refuses it only where a socket listens.
    """
    for family, kind, proto, address in _addresses(host, port, what):
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise RuntimeError(f"{what} port {host_port(host, port)} is in use (RESNET_SERVE_{setting})") from None


def shared_listeners(host: str, port: int, *, listen: bool, backlog: int) -> list[socket.socket]:
    """SO_REUSEPORT sockets on every address ``host`` names, as uvicorn's own would bind (IPv6 only on v6).

    Bound but not listening (``listen=False``), a socket takes no connections yet: a worker that
    replaces a dead one joins the port only once its models are loaded. Call :func:`claim_port` first.
    """
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, address in _addresses(host, port, "HTTP"):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:  # every address on the port the kernel gave the first one
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            if listen:
                sock.listen(backlog)
            sock.set_inheritable(True)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _addresses(host: str, port: int, what: str) -> list[tuple[socket.AddressFamily, socket.SocketKind, int, tuple]]:
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        found = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise RuntimeError(f"{what} host {host!r} does not resolve: {exc}") from None
    unique: dict[tuple, tuple[socket.AddressFamily, socket.SocketKind, int, tuple]] = {}
    for family, kind, proto, _, address in found:
        unique.setdefault((family, address[:2]), (family, kind, proto, address))
    return list(unique.values())


def host_port(host: str, port: int) -> str:
    """grpc's ``host:port``, with an IPv6 literal in brackets (``::1`` -> ``[::1]:8001``)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
