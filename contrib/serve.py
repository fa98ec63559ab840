"""Serve the HTTP API with uvicorn: ``python -m contrib.serve --db engine.db --port 8000``.

With ``--postgres DSN`` instead of ``--db``, the server is an API node of a fleet: it submits,
reads, cancels and resumes, and ``python -m contrib.worker`` processes run the jobs.
``--provider SPEC`` (``fake``, ``ffmpeg``, ``http``, ``module:attribute``) says what runs them
here. Videos are shown at signed, expiring links the server serves (or presigned S3 URLs): see
:mod:`contrib.results` and the options of :mod:`contrib.result_options`.

API keys come from ``ENGINE_API_KEYS`` (``"key1=tenant1,key2=tenant2"``) or ``--keys-file`` (one
``key=tenant`` a line). The engine (``Engine.sqlite(--db)``) and uvicorn run in one task group. On
SIGINT or SIGTERM the server stops accepting, lets requests in flight finish, and then the engine
is left (``async with``): jobs in flight are released to the store, not lost, and picked up by the
next start. A second signal stops at once.

:func:`serve_app` runs any ASGI app under uvicorn inside a task group (``await tg.start(...)``
returns a :class:`RunningServer` once it listens); tests and benchmarks use it too.

Hostile clients (flags, with their defaults):

- ``--header-timeout 10``: seconds a request's line and headers may take (408, then closed);
  ``--body-timeout 30``: seconds its body may take (408 from the app while it reads; closed by
  the server otherwise); ``--max-connections`` (default: 1000, or less when the process may
  open fewer files): connections over it are answered 503 and closed at once
  (:mod:`contrib.connections`; the server speaks HTTP/1.1 through h11).
- ``--auth-failures 20/60``: failed API keys per client address per 60 s; an address over it
  gets 429 with ``Retry-After`` for every keyed request until its budget refills;
  ``--auth-failure-ceiling 1000/60``: the same over all addresses, refusing only the addresses
  that failed recently (:class:`contrib.auth.FailureLimiter`). Behind a reverse proxy every
  client has the proxy's address: limit failures at the proxy then, and pass ``none``.
- ``--max-live-plan-bytes 16777216``: bytes of plans one tenant may have live on this server
  (429 over it; :mod:`contrib.budget`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import resource
import signal
import socket
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import anyio
import anyio.abc

from contrib.auth import parse_keys
from contrib.connections import guarded_protocol
from contrib.result_options import add_result_options
from contrib.types import ASGIApp
from contrib.worker import add_provider_options, result_arguments
from engine import ConfigError, StorageError

try:
    import uvicorn
    import uvicorn.config
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "contrib.serve needs uvicorn: pip install 'videoflow-engine[server]'"
    ) from exc

log = logging.getLogger("contrib.serve")


class RunningServer:
    """A uvicorn server started by :func:`serve_app`: where it listens, and how to stop it."""

    def __init__(self, server: uvicorn.Server, host: str, port: int) -> None:
        self._server = server
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, *, force: bool = False) -> None:
        """Stop accepting and finish the requests in flight (``force``: do not wait for them)."""
        self._server.should_exit = True
        if force:
            self._server.force_exit = True


class AccessLogFilter(logging.Filter):
    """Keeps query strings out of uvicorn's access log: a line shows the path only.

    A query string may carry a credential (a client's ``?api_key=...``) or a signed result link's
    ``sig``; nothing in the log may be replayed. (uvicorn never logs headers, so the
    ``Authorization`` key is not in it either.) Installed on the ``uvicorn.access`` logger by
    :func:`serve_app`, whatever the log configuration."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            path = args[2].split("?", 1)[0].split("#", 1)[0]
            record.args = (*args[:2], path, *args[3:])
        return True


def install_access_log_filter() -> None:
    """Add :class:`AccessLogFilter` to ``uvicorn.access`` (once)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, AccessLogFilter) for f in access.filters):
        access.addFilter(AccessLogFilter())


def _make_server(config: uvicorn.Config, ready: anyio.Event) -> uvicorn.Server:
    class Server(uvicorn.Server):
        """uvicorn without its own signal handling (whoever runs it decides when it stops; uvicorn
        would re-raise the signal after its shutdown, before the engine's), telling when it
        listens."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            ready.set()

    return Server(config)


async def serve_app(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "warning",
    log_config: dict[str, Any] | None = None,
    access_log: bool = False,
    timeout_graceful_shutdown: int | None = 30,
    header_timeout: float | None = 10.0,
    body_timeout: float | None = 30.0,
    max_connections: int | None = None,
    task_status: anyio.abc.TaskStatus[RunningServer] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until stopped or cancelled; either way requests in flight finish first.

    ``port=0`` picks a free port; ``task_status.started`` gets the :class:`RunningServer`.
    ``header_timeout``, ``body_timeout`` and ``max_connections`` (default
    :func:`default_max_connections`) bound slow and excess clients
    (:mod:`contrib.connections`); ``None``: no bound.
    """
    config = uvicorn.Config(
        app,
        http=guarded_protocol(
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            max_connections=default_max_connections()
            if max_connections is None
            else max_connections,
        ),
        host=host,
        port=port,
        lifespan="on",
        log_level=log_level,
        log_config=log_config,
        access_log=access_log,
        timeout_graceful_shutdown=timeout_graceful_shutdown,
        server_header=False,
    )
    install_access_log_filter()  # after the Config, which (re)configures logging
    ready = anyio.Event()
    server = _make_server(config, ready)

    async def announce() -> None:
        try:
            await ready.wait()
            if not server.started:
                return
            sockets = [sock for s in server.servers for sock in (s.sockets or ())]
            bound = sockets[0].getsockname()[1] if sockets else port
            task_status.started(RunningServer(server, host, bound))
            await anyio.sleep_forever()
        finally:
            server.should_exit = True  # cancelled: shut down gracefully, not mid-request

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(announce)
        with anyio.CancelScope(shield=True):
            await server.serve()
        task_group.cancel_scope.cancel()


def default_max_connections() -> int:
    """1000, or fewer when the process may not open that many files (64 kept for the rest)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1000
    return max(1, min(1000, soft - 64))


async def _stop_on_signals(running: RunningServer) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        count = 0
        async for signum in signals:
            count += 1
            name = signal.Signals(signum).name
            if count == 1:
                log.info("%s: finishing requests in flight, then stopping the engine", name)
                running.stop()
            else:
                log.warning("%s again: stopping now", name)
                running.stop(force=True)


async def run(
    db: str | None,
    *,
    api_keys: dict[str, str],
    postgres: str | None = None,
    schema: str = "videoflow",
    provider_spec: str = "fake",
    output_dir: str | None = None,
    input_dirs: Sequence[str] = (),
    host: str = "127.0.0.1",
    port: int = 8000,
    max_body_bytes: int = 1 << 20,
    rate_limit: tuple[float, float] | None = (100, 2.0),
    concurrency: int | None = None,
    allowed_networks: Sequence[str] = (),
    access_log: bool = True,
    provider_config: str | None = None,
    results: Mapping[str, Any] | None = None,
    header_timeout: float | None = 10.0,
    body_timeout: float | None = 30.0,
    max_connections: int | None = None,
    auth_failures: tuple[float, float] | None = (20, 60.0),
    auth_failure_ceiling: tuple[float, float] | None = (1000, 60.0),
    max_live_plan_bytes: int | None = 16 << 20,
    operator_keys: Sequence[str] = (),
) -> None:
    """Run the engine (``Engine.sqlite(db)``, or ``Engine.postgres(postgres)``: an API node
    that runs no job unless ``concurrency`` says so) and the HTTP API over it until SIGINT or
    SIGTERM. ``results``: the keyword arguments of :func:`contrib.result_options.result_setup`
    (the links videos are shown at)."""
    from adapters.http import HttpNotifier
    from contrib.asgi import create_app
    from contrib.providers import HOSTED, load_provider
    from contrib.result_options import result_setup
    from contrib.results import ResultLinkNotifier
    from engine import Engine

    provider = load_provider(
        provider_spec,
        output_dir=output_dir,
        input_dirs=input_dirs,
        allowed_networks=allowed_networks,
        config_file=provider_config,
    )
    provider, links = result_setup(
        provider,
        output_dir=output_dir,
        keep_results=provider_spec in HOSTED,
        allowed_networks=allowed_networks,
        **(results or {}),
    )
    if links.public_url is None and port != 0:
        links.server_url = _own_url(host, port)
    notifier = ResultLinkNotifier(HttpNotifier(allowed_networks=tuple(allowed_networks)), links)
    if postgres is not None:
        engine = Engine.postgres(
            postgres,
            provider,
            notifier,
            schema=schema,
            concurrency=0 if concurrency is None else concurrency,
        )
        where = f"PostgreSQL schema {schema}"
    elif db is not None:
        engine = Engine.sqlite(
            db, provider, notifier, concurrency=4 if concurrency is None else concurrency
        )
        where = db
    else:
        raise ConfigError("serve needs --db FILE or --postgres DSN")
    async with engine:
        app = create_app(
            engine,
            api_keys=api_keys,
            max_body_bytes=max_body_bytes,
            rate_limit=rate_limit,
            results=links,
            auth_failures=auth_failures,
            auth_failure_ceiling=auth_failure_ceiling,
            body_timeout=body_timeout,
            max_live_plan_bytes=max_live_plan_bytes,
            input_dirs=input_dirs,
            operator_keys=operator_keys,
        )
        async with anyio.create_task_group() as task_group:

            async def serve_then_stop(task_status: anyio.abc.TaskStatus[RunningServer]) -> None:
                await serve_app(
                    app,
                    host=host,
                    port=port,
                    log_level="info",
                    log_config=uvicorn.config.LOGGING_CONFIG,
                    access_log=access_log,
                    header_timeout=header_timeout,
                    body_timeout=body_timeout,
                    max_connections=max_connections,
                    task_status=task_status,
                )
                task_group.cancel_scope.cancel()  # stop listening for signals

            running = await task_group.start(serve_then_stop)
            if links.public_url is None and links.server_url is None:
                links.server_url = _own_url(host, running.port)
            task_group.start_soon(_stop_on_signals, running)
            log.info("serving %s on %s (%d API keys)", where, running.url, len(api_keys))
        # The server has stopped; leaving ``async with engine`` releases its jobs in flight.
    log.info("engine stopped")


def _own_url(host: str, port: int) -> str:
    """The server's address for links in webhooks when ``--public-url`` is not given."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
        log.warning(
            "result links in webhooks use http://%s:%d; pass --public-url if clients reach the "
            "server by another address",
            host,
            port,
        )
    name = f"[{host}]" if ":" in host else host
    return f"http://{name}:{port}"


def _rate_limit(text: str) -> tuple[float, float] | None:
    if text.lower() in ("none", "off", "0"):
        return None
    requests, _, seconds = text.partition("/")
    try:
        return float(requests), float(seconds or "1")
    except ValueError:
        raise argparse.ArgumentTypeError("expected REQUESTS/SECONDS, such as 100/2") from None


def _budget(text: str) -> tuple[float, float] | None:
    if text.lower() in ("none", "off", "0"):
        return None
    count, _, seconds = text.partition("/")
    try:
        return float(count), float(seconds or "60")
    except ValueError:
        raise argparse.ArgumentTypeError("expected FAILURES/SECONDS, such as 20/60") from None


def _seconds(text: str) -> float | None:
    if text.lower() in ("none", "off"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number of seconds, or none") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("expected a positive number of seconds, or none")
    return value


def _positive_or_none(text: str) -> int | None:
    if text.lower() in ("none", "off"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a positive whole number, or none") from None
    if value < 1:
        raise argparse.ArgumentTypeError("expected a positive whole number, or none")
    return value


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _load_keys(keys_file: str | None) -> dict[str, str]:
    if keys_file is not None:
        with open(keys_file, encoding="utf-8") as handle:
            return parse_keys(handle.read(), separator="\n")
    return parse_keys(os.environ.get("ENGINE_API_KEYS", ""))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m contrib.serve", description="Serve the engine's HTTP API with uvicorn."
    )
    store = parser.add_mutually_exclusive_group(required=True)
    store.add_argument("--db", help="the SQLite file of the engine")
    store.add_argument(
        "--postgres", metavar="DSN", help="a PostgreSQL database shared with workers"
    )
    parser.add_argument("--schema", default="videoflow", help="the board's schema (--postgres)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--keys-file", help="one key=tenant a line (default: $ENGINE_API_KEYS, key=tenant,...)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="jobs run by this process at once (default: 4 with --db, 0 with --postgres, where "
        "python -m contrib.worker runs them)",
    )
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20)
    parser.add_argument(
        "--rate-limit",
        type=_rate_limit,
        default=(100.0, 2.0),
        help="per key: REQUESTS/SECONDS (a burst of REQUESTS, refilled over SECONDS), or none",
    )
    parser.add_argument(
        "--header-timeout",
        type=_seconds,
        default=10.0,
        help="seconds a request's line and headers may take (408, then closed), or none",
    )
    parser.add_argument(
        "--body-timeout",
        type=_seconds,
        default=30.0,
        help="seconds a request body may take (408, or closed), or none",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=None,
        help="open connections at most; more are answered 503 and closed (default: 1000, or "
        "less when the process may open fewer files)",
    )
    parser.add_argument(
        "--auth-failures",
        type=_budget,
        default=(20.0, 60.0),
        help="failed API keys per client address: FAILURES/SECONDS; over it every keyed "
        "request from the address is answered 429 until the budget refills; or none",
    )
    parser.add_argument(
        "--auth-failure-ceiling",
        type=_budget,
        default=(1000.0, 60.0),
        help="failed API keys over all addresses: FAILURES/SECONDS; over it addresses that "
        "failed recently are refused, others are not; or none",
    )
    parser.add_argument(
        "--max-live-plan-bytes",
        type=_positive_or_none,
        default=16 << 20,
        help="bytes of plans one tenant may have live on this server (429 over it), or none "
        "(default: 16 MiB)",
    )
    parser.add_argument(
        "--operator-key",
        action="append",
        default=[],
        metavar="KEY",
        help="a key that reads the fleet-wide /metrics (tenants' keys read only their own); "
        "repeatable; also $ENGINE_OPERATOR_KEYS, comma-separated",
    )
    add_provider_options(parser)
    add_result_options(parser)
    parser.add_argument("--no-access-log", action="store_true")
    args = parser.parse_args(argv)
    try:
        keys = _load_keys(args.keys_file)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    if not keys:
        parser.error("no API keys: set ENGINE_API_KEYS=key=tenant,... or pass --keys-file")
    operator_keys = [*args.operator_key, *_split(os.environ.get("ENGINE_OPERATOR_KEYS", ""))]
    if set(operator_keys) & set(keys):
        parser.error("an operator key must not also be a tenant's API key")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s %(message)s")
    try:
        anyio.run(
            lambda: run(
                args.db,
                api_keys=keys,
                postgres=args.postgres,
                schema=args.schema,
                provider_spec=args.provider,
                output_dir=args.output_dir,
                input_dirs=args.input_dir,
                host=args.host,
                port=args.port,
                max_body_bytes=args.max_body_bytes,
                rate_limit=args.rate_limit,
                concurrency=args.concurrency,
                allowed_networks=args.allow_webhook_network,
                access_log=not args.no_access_log,
                provider_config=args.provider_config,
                results=result_arguments(args),
                header_timeout=args.header_timeout,
                body_timeout=args.body_timeout,
                max_connections=args.max_connections,
                auth_failures=args.auth_failures,
                auth_failure_ceiling=args.auth_failure_ceiling,
                max_live_plan_bytes=args.max_live_plan_bytes,
                operator_keys=operator_keys,
            )
        )
    except (ConfigError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0)


if __name__ == "__main__":
    main()
