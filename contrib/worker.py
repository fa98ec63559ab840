"""Run jobs from a PostgreSQL job board: ``python -m contrib.worker --postgres DSN``.

A worker is an :class:`~engine.Engine` on the shared database with no HTTP API: it claims the
ready jobs of the types it serves (``--types generate`` or ``--types merge,lipSync``; default
all), at most ``--concurrency`` at once, runs them on ``--provider`` and records their outcomes.
Start as many as you like, on any hosts.

``--lease`` is how long the fleet waits for a silent worker before its running jobs are rescued
(run again elsewhere, same idempotency key); ``--heartbeat`` how often the worker renews its
lease and rescues the jobs of workers whose lease expired. Keep the heartbeat well under the lease.

On SIGTERM or SIGINT it stops claiming, lets its running jobs finish for up to ``--grace``
seconds, then hands back whatever still runs (another worker takes it at once, same idempotency
key) and exits 0. A second signal hands back at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import anyio

from contrib.providers import HOSTED, NAMED, load_provider
from contrib.result_options import add_result_options, require_webhook_links, result_setup
from contrib.results import ResultLinkNotifier
from engine import ConfigError, Engine, StorageError
from engine.catalogue import JOB_TYPES

log = logging.getLogger("contrib.worker")


def parse_types(text: str) -> list[str]:
    """``"merge,lipSync"`` -> ``["merge", "lipSync"]``, each a known wire type."""
    kinds = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [kind for kind in kinds if kind not in JOB_TYPES]
    if not kinds or unknown:
        raise argparse.ArgumentTypeError(
            f"expected wire types separated by commas, from {', '.join(JOB_TYPES)}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
        )
    return kinds


def parse_limit(text: str) -> tuple[str, int]:
    """``"generate=4"`` -> ``("generate", 4)``."""
    kind, _, count = text.partition("=")
    if kind not in JOB_TYPES or not count.isdigit():
        raise argparse.ArgumentTypeError(
            f"expected TYPE=N with TYPE one of {', '.join(JOB_TYPES)}, such as generate=4"
        )
    return kind, int(count)


def add_provider_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--provider",
        default="fake",
        metavar="SPEC",
        help=f"{', '.join(NAMED)}, or module:attribute (a provider or a factory); default fake",
    )
    parser.add_argument(
        "--provider-config",
        metavar="FILE",
        help="settings of --provider http (JSON, or TOML by its .toml name; see contrib.providers)",
    )
    parser.add_argument(
        "--output-dir",
        help="where --provider ffmpeg writes its videos, and where a hosted model's (--provider "
        "http) are kept: its output URLs expire",
    )
    parser.add_argument(
        "--allow-input-dir",
        "--input-dir",
        dest="input_dir",
        action="append",
        default=[],
        metavar="DIR",
        help="for one trusted tenant: let plans name file:// URLs under DIR (audioUrl, srtUrl), "
        "which --provider ffmpeg reads; repeatable. Without it tenants send http(s) URLs",
    )
    parser.add_argument(
        "--allow-webhook-network",
        action="append",
        default=[],
        metavar="CIDR",
        help="let webhooks (and provider downloads) reach this private network; repeatable",
    )


async def run(
    dsn: str,
    *,
    schema: str,
    provider_spec: str,
    job_types: Sequence[str] | None,
    concurrency: int,
    limits: dict[str, int],
    grace: float,
    lease: float = 30.0,
    heartbeat: float = 5.0,
    output_dir: str | None = None,
    input_dirs: Sequence[str] = (),
    allowed_networks: Sequence[str] = (),
    provider_config: str | None = None,
    results: Mapping[str, Any] | None = None,
) -> None:
    """Run a worker until SIGTERM or SIGINT. ``results``: the keyword arguments of
    :func:`contrib.result_options.result_setup` (the links in its webhooks)."""
    from adapters.http import HttpNotifier

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
    require_webhook_links(links)
    engine = Engine.postgres(
        dsn,
        provider,
        ResultLinkNotifier(HttpNotifier(allowed_networks=tuple(allowed_networks)), links),
        schema=schema,
        job_types=job_types,
        limits=limits or None,
        concurrency=concurrency,
        lease=lease,
        sweep_interval=heartbeat,
    )
    async with engine:
        served = ", ".join(job_types) if job_types else "every type"
        log.info(
            "worker %s (pid %d on %s) runs %s, %d at once",
            engine.owner,
            os.getpid(),
            socket.gethostname(),
            served,
            concurrency,
        )
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as task_group:

                async def drain_then_stop(name: str) -> None:
                    log.info("%s: finishing running jobs (%.0f s at most)", name, grace)
                    left = await engine.drain(grace)
                    if left:
                        log.info("handing back %d running jobs", left)
                    task_group.cancel_scope.cancel()

                draining = False
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if not draining:
                        draining = True
                        task_group.start_soon(drain_then_stop, name)
                    else:
                        log.warning("%s again: handing back running jobs now", name)
                        task_group.cancel_scope.cancel()
    log.info("worker stopped")


def result_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``result_setup`` from parsed :func:`add_result_options`."""
    return {
        "public_url": args.public_url,
        "secret": args.result_secret,
        "ttl": args.result_ttl,
        "webhook_ttl": args.webhook_result_ttl,
        "s3_bucket": args.s3_bucket,
        "s3_endpoint_url": args.s3_endpoint_url,
        "s3_prefix": args.s3_prefix,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m contrib.worker",
        description="Run the jobs of a PostgreSQL job board until SIGTERM or SIGINT.",
    )
    parser.add_argument("--postgres", required=True, metavar="DSN", help="the shared database")
    parser.add_argument("--schema", default="videoflow", help="the board's schema")
    parser.add_argument(
        "--types",
        type=parse_types,
        default=None,
        metavar="TYPES",
        help=f"the job types to run, such as generate or merge,lipSync (default: all of "
        f"{','.join(JOB_TYPES)})",
    )
    parser.add_argument("--concurrency", type=int, default=8, help="jobs at once (default 8)")
    parser.add_argument(
        "--limit",
        type=parse_limit,
        action="append",
        default=[],
        metavar="TYPE=N",
        help="at most N jobs of TYPE running at once across the whole fleet; repeatable",
    )
    parser.add_argument(
        "--grace", type=float, default=30.0, help="seconds running jobs may take to finish"
    )
    parser.add_argument(
        "--lease",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long this worker may go silent before its running jobs are rescued by others "
        "(default 30)",
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how often this worker renews its lease and rescues the jobs of expired workers "
        "(default 5; keep it well under --lease)",
    )
    add_provider_options(parser)
    add_result_options(parser)
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1 (an API node is contrib.serve)")
    if not args.heartbeat > 0 or not args.lease > args.heartbeat:
        parser.error("--heartbeat must be positive and shorter than --lease")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s %(message)s")
    try:
        anyio.run(
            lambda: run(
                args.postgres,
                schema=args.schema,
                provider_spec=args.provider,
                job_types=args.types,
                concurrency=args.concurrency,
                limits=dict(args.limit),
                grace=args.grace,
                lease=args.lease,
                heartbeat=args.heartbeat,
                output_dir=args.output_dir,
                input_dirs=args.input_dir,
                allowed_networks=args.allow_webhook_network,
                provider_config=args.provider_config,
                results=result_arguments(args),
            )
        )
    except (ConfigError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0)


if __name__ == "__main__":
    main()
