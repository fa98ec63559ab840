"""The result-link options ``contrib.serve`` and ``contrib.worker`` share (see
:mod:`contrib.results` and :mod:`contrib.s3`), and what they build.

========================== =========================== ==========================================
option                     environment                 meaning
========================== =========================== ==========================================
``--public-url URL``       ``VIDEOFLOW_PUBLIC_URL``    the API as clients reach it; links in
                                                       webhooks point there (default: the
                                                       server's ``http://host:port``; links read
                                                       from the API use the request's ``Host``)
``--result-secret S``      ``VIDEOFLOW_RESULT_SECRET`` the links' HMAC key, 16 bytes or more
                                                       (default: random per process)
``--result-ttl SECONDS``                               link lifetime when read (default 86400)
``--webhook-result-ttl S``                             link lifetime in webhooks (default 604800)
``--s3-bucket NAME``       ``VIDEOFLOW_S3_BUCKET``     upload results there, show presigned URLs
``--s3-endpoint-url URL``  ``VIDEOFLOW_S3_ENDPOINT_URL`` another S3-protocol server
``--s3-prefix PREFIX``                                 key prefix in the bucket
========================== =========================== ==========================================

Prefer the environment for the secret (a command line is visible to every user of the host).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from contrib.results import DEFAULT_TTL, DEFAULT_WEBHOOK_TTL, ResultLinks
from engine import ConfigError, VideoProvider

__all__ = ["add_result_options", "result_setup"]

log = logging.getLogger("contrib.results")

EPHEMERAL_WARNING = (
    "result links are signed with a random secret made by this process: they stop working "
    "when it exits; set VIDEOFLOW_RESULT_SECRET (the same on every API node and worker) to keep "
    "them"
)


def add_result_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("results (how clients fetch videos)")
    group.add_argument(
        "--public-url",
        metavar="URL",
        help="the API's address as clients reach it, for result links in webhooks "
        "(default: $VIDEOFLOW_PUBLIC_URL, else http://HOST:PORT)",
    )
    group.add_argument(
        "--result-secret",
        metavar="SECRET",
        help="HMAC key of result links (default: $VIDEOFLOW_RESULT_SECRET, else random per "
        "process: links then die with it)",
    )
    group.add_argument(
        "--result-ttl",
        type=float,
        default=DEFAULT_TTL,
        metavar="SECONDS",
        help="how long a link read from the API lasts (default 86400: 24 h)",
    )
    group.add_argument(
        "--webhook-result-ttl",
        type=float,
        default=DEFAULT_WEBHOOK_TTL,
        metavar="SECONDS",
        help="how long a link in a webhook lasts (default 604800: 7 days)",
    )
    group.add_argument(
        "--s3-bucket",
        metavar="NAME",
        help="upload results to this bucket and show presigned URLs (default: "
        "$VIDEOFLOW_S3_BUCKET; credentials and region as boto3 reads them)",
    )
    group.add_argument(
        "--s3-endpoint-url",
        metavar="URL",
        help="an S3-compatible server (default: $VIDEOFLOW_S3_ENDPOINT_URL, else AWS)",
    )
    group.add_argument("--s3-prefix", default="", metavar="PREFIX", help="key prefix in the bucket")


#: Logged when a hosted model's results cannot be kept (no ``--output-dir``).
UNKEPT_WARNING = (
    "results stay at the hosted model's own URLs, which expire (Replicate deletes outputs after "
    "about an hour): give --output-dir DIR to keep each result on this server"
)


def result_setup(
    provider: VideoProvider,
    *,
    output_dir: str | None,
    public_url: str | None = None,
    secret: str | None = None,
    ttl: float = DEFAULT_TTL,
    webhook_ttl: float = DEFAULT_WEBHOOK_TTL,
    s3_bucket: str | None = None,
    s3_endpoint_url: str | None = None,
    s3_prefix: str = "",
    environ: Mapping[str, str] | None = None,
    keep_results: bool = False,
    allowed_networks: Sequence[str] = (),
) -> tuple[VideoProvider, ResultLinks]:
    """The provider to run (wrapped to upload to S3 when a bucket is set) and the links.

    The links serve files under ``output_dir`` (the provider's, or on an API node the
    directory the workers share), or the provider's own ``output_dir`` when not given.
    ``keep_results`` (a hosted model's provider, whose output URLs expire): with an
    ``output_dir``, each result is copied there before its job completes and inputs reach the
    model as signed links (:class:`contrib.keep.KeepingProvider`, downloading through the SSRF
    guard with ``allowed_networks``); without one, a warning says results stay at the model's
    URLs.
    """
    env = os.environ if environ is None else environ
    public_url = public_url or env.get("VIDEOFLOW_PUBLIC_URL") or None
    secret = secret or env.get("VIDEOFLOW_RESULT_SECRET") or None
    s3_bucket = s3_bucket or env.get("VIDEOFLOW_S3_BUCKET") or None
    s3_endpoint_url = s3_endpoint_url or env.get("VIDEOFLOW_S3_ENDPOINT_URL") or None
    root: str | Path | None = output_dir
    if root is None:
        found = getattr(provider, "output_dir", None)
        root = found if isinstance(found, str | Path) else None
    store = None
    if s3_bucket is not None:
        from contrib.s3 import S3Store

        store = S3Store(s3_bucket, prefix=s3_prefix, endpoint_url=s3_endpoint_url)
    links = ResultLinks(
        root=root, secret=secret, ttl=ttl, webhook_ttl=webhook_ttl, public_url=public_url, s3=store
    )
    if keep_results and root is not None:
        from contrib.keep import KeepingProvider

        Path(root).mkdir(parents=True, exist_ok=True)
        provider = KeepingProvider(
            provider, root, links=links, allowed_networks=tuple(allowed_networks)
        )
    elif keep_results:
        log.warning(UNKEPT_WARNING)
    if store is not None and root is not None:
        from contrib.s3 import S3UploadingProvider

        provider = S3UploadingProvider(provider, store, output_dir=root)
    if links.ephemeral and store is None and links.root is not None:
        log.warning(EPHEMERAL_WARNING)
    return provider, links


def require_webhook_links(links: ResultLinks) -> None:
    """A worker sends webhooks but serves no link: own-served links need the API's address and
    its secret (or results in S3)."""
    if links.root is None or links.s3 is not None:
        return
    if links.public_url is None or links.ephemeral:
        raise ConfigError(
            "a worker whose provider writes files needs --s3-bucket, or --public-url (the API "
            "node's address) and VIDEOFLOW_RESULT_SECRET (the API node's), so that the result "
            "links in its webhooks work; the API node must also see --output-dir"
        )
