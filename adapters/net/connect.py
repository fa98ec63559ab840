"""Send one request to a user-given URL through the SSRF guard, to the address that was checked.

:func:`send_checked` resolves the URL's host once (:func:`~adapters.net.ssrf.resolve_checked`:
every address must be public or inside ``allowed_networks``), then sends the request to the IP
itself, so a second DNS answer cannot lead it elsewhere (DNS rebinding). The original ``Host``
header is kept, and for ``https`` the TLS server name too (the certificate is verified for the
name, not the IP). Redirects are never followed: a caller that follows them checks each hop by
calling again.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import httpx

from adapters.net.ssrf import Network, check_url, literal_address, resolve_checked

__all__ = ["send_checked"]


@contextlib.asynccontextmanager
async def send_checked(
    client: httpx.AsyncClient,
    method: str,
    url: str | httpx.URL,
    *,
    allowed_networks: Iterable[str | Network] = (),
    content: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    request_timeout: float | None = None,
) -> AsyncIterator[httpx.Response]:
    """The response to ``method url``, streamed (its body unread), closed on leaving the block.

    The host's addresses are tried in resolver order; a connection refused on one moves on to the
    next. ``request_timeout`` (seconds) applies to each phase of the request, as httpx means it;
    without it the client's own timeout does.

    Raises :class:`~adapters.net.DestinationRefused` (final: no connection was made) for a URL
    that is not http(s) with a host or a host with a refused address; ``OSError`` when the host
    does not resolve; httpx's errors (the last ``ConnectError`` if no address answered) otherwise.
    """
    parsed = check_url(url)
    host = parsed.raw_host.decode("ascii")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addresses = await resolve_checked(host, port, allowed_networks)
    send_headers = {**(headers or {}), "Host": parsed.netloc.decode("ascii")}
    extensions: dict[str, str] = {}
    if parsed.scheme == "https":
        # No connection reuse: a pooled connection to this IP may have been verified for another
        # name.
        send_headers["Connection"] = "close"
        if literal_address(host) is None:
            extensions["sni_hostname"] = host
    options: dict[str, Any] = {} if request_timeout is None else {"timeout": request_timeout}
    failure: httpx.ConnectError | None = None
    for address in addresses:
        request = client.build_request(
            method,
            parsed.copy_with(host=str(address)),
            content=content,
            headers=send_headers,
            extensions=extensions,
            **options,
        )
        try:
            response = await client.send(request, stream=True, follow_redirects=False)
        except httpx.ConnectError as exc:
            failure = exc  # try the host's next address, if any
            continue
        try:
            yield response
        finally:
            await response.aclose()
        return
    # resolve_checked never returns an empty list, so some address failed to connect.
    raise failure if failure is not None else OSError(f"{host} has no address")
