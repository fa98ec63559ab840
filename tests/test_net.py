"""``adapters.net``: the SSRF guard address by address, the checked request against a real
loopback server, ``Retry-After`` in every spelling, and backoff's bounds."""

from __future__ import annotations

import contextlib
import email.utils
import ipaddress
import math
import random
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from anyio.abc import SocketAttribute, SocketStream, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream
from attrs import define, field
from hypothesis import given
from hypothesis import strategies as st

import adapters.http
from adapters.net import (
    DestinationRefused,
    WebhookRefused,
    check_url,
    exponential,
    jittered,
    judge,
    parse_networks,
    parse_retry_after,
    refusal_reason,
    resolve_checked,
    send_checked,
)
from adapters.net.ssrf import inet_aton
from engine.errors import EngineError

pytestmark = pytest.mark.anyio

LOOPBACK = ("127.0.0.0/8",)


def test_refusals_are_final_engine_errors_under_both_names() -> None:
    assert issubclass(DestinationRefused, EngineError)
    assert WebhookRefused is DestinationRefused
    assert adapters.http.WebhookRefused is DestinationRefused


# --- the SSRF guard, address by address ----------------------------------------------------------

REFUSED = {
    "127.0.0.1": "loopback",
    "127.255.255.254": "loopback",
    "::1": "loopback",
    "10.0.0.1": "private",
    "10.255.255.255": "private",
    "172.16.0.1": "private",
    "172.31.255.255": "private",
    "192.168.1.1": "private",
    "fc00::1": "private",
    "fd12:3456::1": "private",
    "169.254.169.254": "link-local",
    "fe80::1": "link-local",
    "100.64.0.1": "carrier-grade NAT",
    "100.127.255.255": "carrier-grade NAT",
    "224.0.0.1": "multicast",
    "239.255.255.250": "multicast",
    "ff02::1": "multicast",
    "0.0.0.0": "unspecified",
    "::": "unspecified",
    "240.0.0.1": "reserved",
    "255.255.255.255": "reserved",
    "::ffff:127.0.0.1": "IPv4-mapped loopback",
    "::ffff:10.0.0.1": "IPv4-mapped private",
    "::ffff:169.254.169.254": "IPv4-mapped link-local",
    "2002:7f00:1::1": "6to4 form of a loopback",
    "2002:c0a8:101::1": "6to4 form of a private",
    "64:ff9b::7f00:1": "NAT64 form of a loopback",
    "64:ff9b::a00:1": "NAT64 form of a private",
    "64:ff9b:1::1": "local-use NAT64",
    "192.0.2.1": "special-purpose",  # documentation
    "198.18.0.1": "special-purpose",  # benchmarking
    "2001:db8::1": "special-purpose",  # documentation
}

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "172.32.0.1",
    "100.128.0.1",
    "2001:4860:4860::8888",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "2002:808:808::1",
    "64:ff9b::808:808",
]


@pytest.mark.parametrize(("address", "reason"), REFUSED.items())
def test_refused_addresses(address: str, reason: str) -> None:
    found = refusal_reason(ipaddress.ip_address(address))
    assert found is not None
    assert found.startswith(reason)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("0X7F000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("10.1.1", "10.1.0.1"),
        ("0", "0.0.0.0"),
        ("127.0.0.1.", "127.0.0.1"),
        ("8.8.8.8", "8.8.8.8"),
    ],
)
def test_odd_ipv4_spellings_are_read_like_inet_aton(host: str, address: str) -> None:
    assert inet_aton(host) == ipaddress.IPv4Address(address)


@pytest.mark.parametrize("host", ["08.0.0.1", "256.1", "1.2.3.4.5", "1.16777216", "a.b", "1e3", ""])
def test_not_ipv4_spellings(host: str) -> None:
    assert inet_aton(host) is None


@pytest.mark.parametrize(
    "host", ["2130706433", "0x7f.0.0.1", "127.1", "0x7f.1", "0", "[::1]", "::ffff:7f00:1"]
)
async def test_odd_spellings_of_refused_addresses_are_refused(host: str) -> None:
    with pytest.raises(DestinationRefused, match="refused"):
        await resolve_checked(host, 80)


async def test_odd_spelling_inside_allowed_network_is_permitted() -> None:
    assert await resolve_checked("2130706433", 80, LOOPBACK) == [ipaddress.ip_address("127.0.0.1")]


async def test_allowed_networks_permit_only_themselves() -> None:
    assert await resolve_checked("127.0.0.1", 80, LOOPBACK) == [ipaddress.ip_address("127.0.0.1")]
    assert await resolve_checked("::ffff:127.0.0.1", 80, LOOPBACK)
    assert await resolve_checked("10.1.2.3", 80, ["10.1.0.0/16"])
    with pytest.raises(DestinationRefused, match="private"):
        await resolve_checked("10.2.0.1", 80, ["10.1.0.0/16"])
    with pytest.raises(DestinationRefused, match="loopback"):
        await resolve_checked("::1", 80, LOOPBACK)


async def test_public_literal_passes_without_dns() -> None:
    assert await resolve_checked("8.8.8.8", 443) == [ipaddress.ip_address("8.8.8.8")]


async def test_a_name_resolving_to_loopback_is_refused() -> None:
    with pytest.raises(DestinationRefused, match=r"localhost refused: \S+ is a loopback"):
        await resolve_checked("localhost", 80)


def test_judge_with_allowed_networks() -> None:
    allowed = parse_networks(["127.0.0.0/8", "fd00::/8"])
    assert judge(ipaddress.ip_address("127.0.0.5"), allowed) is None
    assert judge(ipaddress.ip_address("fd00::1"), allowed) is None
    assert judge(ipaddress.ip_address("10.0.0.1"), allowed) == "private"


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/", "file:///etc/passwd", "http:///path", "not a url", "http://0177.0.0.1/"],
)
def test_check_url_refuses(url: str) -> None:
    with pytest.raises(DestinationRefused):
        check_url(url)


@pytest.mark.parametrize("url", ["http://example.com/hook", "https://example.com:8443/x?y=1"])
def test_check_url_accepts(url: str) -> None:
    assert check_url(url).host == "example.com"


# --- the checked request, against a real server on loopback -------------------------------------


@define
class Server:
    """Answers every request with ``status`` and ``headers``; records each request's head."""

    status: int = 200
    headers: dict[str, str] = field(factory=dict)
    hold: anyio.Event | None = None  # answer only once this is set (never: a slow server)
    connections: int = 0
    heads: list[list[str]] = field(factory=list)
    port: int = 0

    async def run(self, *, task_status: TaskStatus[int]) -> None:
        async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
            self.port = listener.extra(SocketAttribute.local_port)
            task_status.started(self.port)
            await listener.serve(self._handle)

    async def _handle(self, stream: SocketStream) -> None:
        self.connections += 1
        async with stream:
            buffered = BufferedByteReceiveStream(stream)
            try:
                head = await buffered.receive_until(b"\r\n\r\n", 65536)
            except (anyio.EndOfStream, anyio.IncompleteRead):
                return
            self.heads.append(head.decode("latin-1").split("\r\n"))
            if self.hold is not None:
                await self.hold.wait()
            extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
            reply = f"HTTP/1.1 {self.status} X\r\nContent-Length: 5\r\n{extra}\r\nhello"
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await stream.send(reply.encode("latin-1"))

    def header(self, index: int, name: str) -> str | None:
        for line in self.heads[index][1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name:
                return value.strip()
        return None


@contextlib.asynccontextmanager
async def serving(server: Server) -> AsyncIterator[Server]:
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        yield server
        tg.cancel_scope.cancel()


async def test_a_refused_destination_is_never_connected_to() -> None:
    async with serving(Server()) as server, httpx.AsyncClient() as client:
        for url in (f"http://127.0.0.1:{server.port}/", f"http://localhost:{server.port}/"):
            with pytest.raises(DestinationRefused, match="loopback"):
                async with send_checked(client, "GET", url):
                    pass  # pragma: no cover
        with pytest.raises(DestinationRefused, match="scheme"):
            async with send_checked(client, "GET", f"ftp://127.0.0.1:{server.port}/"):
                pass  # pragma: no cover
    assert server.connections == 0


async def test_the_request_goes_to_the_checked_ip_with_the_name_kept() -> None:
    async with serving(Server()) as server, httpx.AsyncClient() as client:
        url = f"http://localhost:{server.port}/path?q=1"
        async with send_checked(
            client,
            "POST",
            url,
            allowed_networks=LOOPBACK,
            content=b"body",
            headers={"X-Extra": "yes"},
        ) as response:
            assert response.status_code == 200
            assert await response.aread() == b"hello"
            assert response.request.url.host == "127.0.0.1"  # resolved once, here
        assert response.is_closed
    assert server.heads[0][0] == "POST /path?q=1 HTTP/1.1"
    assert server.header(0, "host") == f"localhost:{server.port}"
    assert server.header(0, "x-extra") == "yes"
    assert server.header(0, "content-length") == "4"


async def test_redirects_are_answered_not_followed() -> None:
    server = Server(status=302, headers={"Location": "http://127.0.0.1:9/elsewhere"})
    async with serving(server), httpx.AsyncClient() as client:
        url = f"http://127.0.0.1:{server.port}/"
        async with send_checked(client, "GET", url, allowed_networks=LOOPBACK) as response:
            assert response.status_code == 302
    assert server.connections == 1


async def test_connection_failures_and_timeouts_are_httpx_errors() -> None:
    async with serving(Server()) as server:
        pass  # gone: its port refuses connections now
    gone = f"http://127.0.0.1:{server.port}/"
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            async with send_checked(client, "GET", gone, allowed_networks=LOOPBACK):
                pass  # pragma: no cover
    hold = anyio.Event()
    slow = Server(hold=hold)
    async with serving(slow), httpx.AsyncClient(timeout=30) as client:
        url = f"http://127.0.0.1:{slow.port}/"
        with pytest.raises(httpx.ReadTimeout):
            async with send_checked(
                client, "GET", url, allowed_networks=LOOPBACK, request_timeout=0.2
            ):
                pass  # pragma: no cover
        hold.set()


async def test_https_sends_the_name_for_tls_and_does_not_reuse_connections() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(204)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        for url in ("https://localhost:8443/a", "https://127.0.0.1/b"):
            async with send_checked(client, "GET", url, allowed_networks=LOOPBACK) as response:
                assert response.status_code == 204
    named, literal = sent
    assert named.url.host == "127.0.0.1"
    assert named.extensions["sni_hostname"] == "localhost"
    assert named.headers["connection"] == "close"
    assert named.headers["host"] == "localhost:8443"
    assert "sni_hostname" not in literal.extensions  # an IP literal is verified as itself
    assert literal.headers["connection"] == "close"


# --- Retry-After --------------------------------------------------------------------------------

NOW = 1_700_000_000.0
CAP = 3600.0


def at(seconds: float) -> str:
    """``NOW + seconds`` as an IMF-fixdate."""
    return email.utils.formatdate(NOW + seconds, usegmt=True)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        ("  120\t", 120.0),
        ("0", 0.0),
        ("007", 7.0),
        (at(200), 200.0),
        (at(0), 0.0),
        # The obsolete forms RFC 9110 says recipients must read, and zones spelled otherwise.
        ("Tuesday, 14-Nov-23 22:16:40 GMT", 200.0),  # RFC 850
        ("Tue Nov 14 22:16:40 2023", 200.0),  # asctime: no zone, and an HTTP-date is UTC
        ("Tue, 14 Nov 2023 22:16:40 -0000", 200.0),
        ("Tue, 14 Nov 2023 23:16:40 +0100", 200.0),
    ],
)
def test_retry_after_spellings(value: str, seconds: float) -> None:
    assert email.utils.formatdate(NOW + 200, usegmt=True) == "Tue, 14 Nov 2023 22:16:40 GMT"
    assert parse_retry_after(value, now=NOW, cap=CAP) == seconds


def test_a_date_in_the_past_means_now() -> None:
    assert parse_retry_after(at(-30), now=NOW, cap=CAP) == 0.0
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=NOW, cap=CAP) == 0.0


@pytest.mark.parametrize("value", ["3601", "99999999999", "9" * 400, at(10**6)])
def test_huge_values_are_capped(value: str) -> None:
    assert parse_retry_after(value, now=NOW, cap=CAP) == CAP


def test_the_cap_can_be_lifted_or_zero() -> None:
    assert parse_retry_after("9" * 20, now=NOW, cap=math.inf) == 1e20
    assert parse_retry_after("120", now=NOW, cap=0) == 0.0
    for cap in (-1.0, math.nan):
        with pytest.raises(ValueError, match="cap"):
            parse_retry_after("1", now=NOW, cap=cap)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "-5",
        "+5",
        "1.5",
        "1e3",
        "inf",
        "nan",
        "0x10",
        "1_000",
        "12 34",
        "soon",
        "\u00b2",  # superscript two: str.isdigit() says yes, float() says no
        "\u0661\u0662",  # Arabic-Indic digits: not the ASCII DIGIT of RFC 9110
        "Sun, 06 Nov 1994",
        "Sun, 31 Feb 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 25:49:37 GMT",
        "Mon, 06 Nov 99999 08:49:37 GMT",
    ],
)
def test_what_is_not_a_retry_after_is_none(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW, cap=CAP) is None


@given(st.text())
def test_any_text_gives_none_or_a_wait_within_the_cap(value: str) -> None:
    seconds = parse_retry_after(value, now=NOW, cap=CAP)
    assert seconds is None or 0 <= seconds <= CAP


@given(st.integers(min_value=0, max_value=10**30))
def test_delay_seconds_read_as_written(value: int) -> None:
    assert parse_retry_after(str(value), now=NOW, cap=CAP) == min(float(value), CAP)


# --- backoff ------------------------------------------------------------------------------------


def test_exponential_grows_to_its_cap() -> None:
    assert [exponential(n, base=1, cap=10) for n in range(6)] == [1, 2, 4, 8, 10, 10]
    assert [exponential(n, base=1, cap=10, factor=1.5) for n in range(3)] == [1, 1.5, 2.25]
    assert exponential(3, base=0.5, cap=30) == 4.0
    assert exponential(0, base=0, cap=10) == 0.0


@given(st.integers(min_value=0, max_value=10**6), st.floats(0, 1e6), st.floats(0, 1e6))
def test_exponential_never_overflows_nor_passes_the_cap(
    retry: int, base: float, cap: float
) -> None:
    delay = exponential(retry, base=base, cap=cap)
    assert 0 <= delay <= cap
    assert delay == min(cap, base) or retry > 0


@pytest.mark.parametrize(
    ("retry", "base", "cap", "factor"),
    [
        (-1, 1.0, 10.0, 2.0),
        (0, -1.0, 10.0, 2.0),
        (0, 1.0, -1.0, 2.0),
        (0, 1.0, 10.0, 0.5),
        (0, math.nan, 10.0, 2.0),
        (0, 1.0, math.nan, 2.0),
    ],
)
def test_exponential_refuses_nonsense(retry: int, base: float, cap: float, factor: float) -> None:
    with pytest.raises(ValueError, match=r"^(retry counts|need base)"):
        exponential(retry, base=base, cap=cap, factor=factor)


@given(st.floats(0, 1e6), st.floats(0, 0.99), st.integers())
def test_jitter_stays_within_its_fraction(delay: float, fraction: float, seed: int) -> None:
    moved = jittered(delay, fraction, random.Random(seed))
    assert delay * (1 - fraction) <= moved <= delay * (1 + fraction)


def test_jitter_spreads_both_ways_and_leaves_zero_alone() -> None:
    rng = random.Random(7)
    draws = [jittered(100.0, 0.1, rng) for _ in range(200)]
    assert min(draws) < 95 and max(draws) > 105
    assert jittered(0.0, 0.5, rng) == 0.0
    assert jittered(100.0, 0.0, rng) == 100.0
    for fraction in (1.0, -0.1, math.nan):
        with pytest.raises(ValueError, match="jitter"):
            jittered(1.0, fraction, rng)
