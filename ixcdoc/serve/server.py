"""Binding the socket and running uvicorn: what ``ixcdoc serve`` calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ixcdoc.errors import UsageError
from ixcdoc.serve.app import create_app
from ixcdoc.serve.engine_backend import EngineBackend
from ixcdoc.vram import size_text


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: addresses only this machine can reach."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    model: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    announce: Callable[[str], None] | None = None,
    progress: Callable[[str], None] | None = None,
    log_level: str = "warning",
    **app_options: Any,
) -> None:
    """Bind host:port (port 0: any free one), call ``announce(url)``, then serve until stopped.

    Binding anywhere but loopback needs an API key (UsageError otherwise). ``progress(line)``
    hears what start-up is doing (the KV cache it allocates). ``app_options`` go to
    ``create_app``. Ctrl-C raises KeyboardInterrupt and SIGTERM ``ixcdoc.errors.Terminated``,
    once the requests in flight have been answered (503).
    """
    import socket

    from ixcdoc.serve import transport

    if not is_loopback(host) and not api_key:
        raise UsageError(
            f"--host {host} makes the server reachable from other machines: set --api-key "
            "(or IXCDOC_API_KEY) as well"
        )
    app = create_app(model, api_key=api_key, **app_options)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as e:  # socket.gaierror: a host name that does not resolve
        reason = getattr(e, "strerror", None) or e
        raise UsageError(f"cannot listen on {host}:{port}: {reason}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    # The engine's KV cache before the first connection is accepted: one that cannot fit is an
    # error line (and the port is let go), not a server that announces itself and then fails.
    backend = app.state.backend
    try:
        if isinstance(backend, EngineBackend):
            if progress is not None:
                progress(
                    f"allocating the KV cache: {backend.n_slots} slots × {backend.max_len:,} "
                    f"positions, {size_text(backend.cache_bytes)}"
                )
            backend.allocate()
    except BaseException:
        sock.close()
        raise
    sock.listen(2048)  # connections queue from here on, so announcing the URL is truthful
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if family == socket.AF_INET6 else bound[0]
    server = transport.Server(transport.config(app, log_level=log_level), app.state.backend.close)
    if announce is not None:
        announce(f"http://{shown}:{bound[1]}")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
