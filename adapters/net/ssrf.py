"""Keep requests to user-given URLs away from private networks (server-side request forgery).

A webhook URL, or an input URL in a plan, comes from a user, and the engine sends a request to it
from inside your network. So a destination is refused unless every address its host stands for
is public: not loopback, private (10/8, 172.16/12, 192.168/16, fc00::/7), link-local
(169.254/16, fe80::/10), carrier-grade NAT (100.64/10), multicast, unspecified, reserved or
otherwise special-purpose, and not an IPv6 form (IPv4-mapped, 6to4, NAT64) of such an IPv4
address. Networks listed in ``allowed_networks`` (CIDR strings such as ``"127.0.0.0/8"``) are
permitted anyway.

Hosts that spell an IPv4 address oddly (``2130706433``, ``0x7f.0.0.1``, ``127.1``; httpx itself
rejects ``0177.0.0.1``) are read the way ``inet_aton`` reads them and the address they mean is
judged like any other, so the answer never depends on the resolver's taste.

The caller must connect to the address that was checked, not resolve the name again (DNS
rebinding): :func:`adapters.net.send_checked` does that, sending the request to the IP and keeping
the original ``Host`` header and TLS server name.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable

import anyio
import httpx

from engine.errors import ConfigError, EngineError

__all__ = [
    "Address",
    "DestinationRefused",
    "Network",
    "WebhookRefused",
    "check_url",
    "inet_aton",
    "judge",
    "literal_address",
    "parse_networks",
    "refusal_reason",
    "resolve_checked",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class DestinationRefused(EngineError):
    """A destination is not allowed: not an http(s) URL with a host, or a host that stands for an
    address inside a refused network. Final: trying again will not help."""


#: The name ``adapters.http`` has exported since webhooks were the only user of the guard.
WebhookRefused = DestinationRefused


_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network
_CGNAT = _V4("100.64.0.0/10")
_PRIVATE: tuple[Network, ...] = (
    _V4("10.0.0.0/8"),
    _V4("172.16.0.0/12"),
    _V4("192.168.0.0/16"),
    _V6("fc00::/7"),
)
_NAT64 = _V6("64:ff9b::/96")
_NAT64_LOCAL = _V6("64:ff9b:1::/48")
_INET_PART = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*")


def parse_networks(networks: Iterable[str | Network]) -> tuple[Network, ...]:
    """CIDR strings (or networks) as networks; a bad one is a :class:`~engine.ConfigError`."""
    if isinstance(networks, str):
        raise ConfigError("allowed_networks must be a sequence of CIDR strings, not one string")
    out: list[Network] = []
    for item in networks:
        if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
            out.append(item)
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except (TypeError, ValueError):
            raise ConfigError(f"allowed_networks: {item!r} is not a CIDR network") from None
    return tuple(out)


def check_url(url: str | httpx.URL) -> httpx.URL:
    """Refuse a URL that is not ``http``/``https`` with a host; return it parsed.

    Only the URL's form is checked here; where its host leads is :func:`resolve_checked`'s job.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise DestinationRefused(f"URL is not valid: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise DestinationRefused(
            f"URL scheme must be http or https, not {parsed.scheme or 'missing'!r}"
        )
    if not parsed.host:
        raise DestinationRefused("URL has no host")
    return parsed


def inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address ``host`` spells in ``inet_aton``'s grammar, or ``None``.

    One to four parts, each decimal, octal (leading ``0``) or hex (``0x``); the last part fills
    the remaining bytes: ``127.1`` is ``127.0.0.1`` and ``2130706433`` is ``127.0.0.1`` too.
    A single trailing dot is ignored.
    """
    if host.endswith("."):
        host = host[:-1]
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_INET_PART.fullmatch(part) for part in parts):
        return None
    values: list[int] = []
    for part in parts:
        if part[:2].lower() == "0x":
            values.append(int(part[2:] or "0", 16))
        elif part.startswith("0"):
            values.append(int(part, 8))
        else:
            values.append(int(part, 10))
    *leading, last = values
    if any(v > 0xFF for v in leading) or last >= 1 << (8 * (5 - len(values))):
        return None
    number = 0
    for v in leading:
        number = number << 8 | v
    number = number << (8 * (5 - len(values))) | last
    return ipaddress.IPv4Address(number)


def literal_address(host: str) -> Address | None:
    """The address a URL host spells literally (IPv6, IPv4, or an odd IPv4 spelling), or None."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return inet_aton(host)


def refusal_reason(address: Address) -> str | None:
    """Why ``address`` is not a public destination, or ``None`` if it is one."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            inner = refusal_reason(address.ipv4_mapped)
            return None if inner is None else f"IPv4-mapped {inner}"
        if address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
            inner = refusal_reason(embedded)
            return None if inner is None else f"NAT64 form of a {inner}"
        if address in _NAT64_LOCAL:
            return "local-use NAT64"
        if address.sixtofour is not None:
            inner = refusal_reason(address.sixtofour)
            if inner is not None:
                return f"6to4 form of a {inner}"
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address in _CGNAT:
        return "carrier-grade NAT"
    if any(address in net for net in _PRIVATE):
        return "private"
    if address.is_reserved:
        return "reserved"
    if not address.is_global:
        return "special-purpose (not globally routable)"
    return None


def _allowed(address: Address, allowed: Iterable[Network]) -> bool:
    forms: list[Address] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        forms.append(address.ipv4_mapped)
    return any(form in net for form in forms for net in allowed if form.version == net.version)


def judge(address: Address, allowed: Iterable[Network] = ()) -> str | None:
    """Why ``address`` is refused, or ``None`` if it is public or inside an allowed network."""
    if _allowed(address, allowed):
        return None
    return refusal_reason(address)


async def resolve_checked(
    host: str, port: int, allowed_networks: Iterable[str | Network] = ()
) -> list[Address]:
    """Every address ``host`` resolves to, in resolver order, once all of them are permitted.

    Raises :class:`DestinationRefused` naming the first refused address and why. A host that does
    not resolve raises ``OSError`` (``socket.gaierror``): that is a failure worth retrying, not a
    refusal.
    """
    allowed = parse_networks(allowed_networks)
    literal = literal_address(host)
    if literal is not None:
        addresses: list[Address] = [literal]
    else:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = []
        for _family, _type, _proto, _name, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]))
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise socket.gaierror(f"{host} resolved to no address")
    for address in addresses:
        reason = judge(address, allowed)
        if reason is not None:
            spelled = literal is not None and host != str(address)
            shown = f"{host} (that is {address})" if spelled else host
            raise DestinationRefused(
                f"destination {shown} refused: {address} is a {reason} address; "
                "list its network in allowed_networks to permit it"
            )
    return addresses
