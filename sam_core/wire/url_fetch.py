"""Image URLs fetched server-side, guarded against SSRF: every hop's addresses checked, the connection pinned
to a checked address, the body bounded by `max_bytes`, and the whole fetch (DNS, connect, headers, body, every
redirect) by one deadline, `url_timeout_s`: a server that trickles its headers a byte a second is cut off there.

One implementation, asynchronous (`fetch_url`): the ingress awaits it on its event loop, so a slow server holds
no thread; `fetch_url_bytes` runs it for callers on a worker thread.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from sam_core.errors import InvalidInput, URLFetchError, URLInputRefused, describe
from sam_core.settings import ImageLimits
from sam_core.wire.image_checks import check_byte_count

MAX_REDIRECTS = 3

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


# Cloud metadata endpoints: already link-local / unique-local, listed so the refusal says what they are.
_METADATA_ADDRESSES = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})


def fetch_url_bytes(url: str, limits: ImageLimits, *, field: str = "image.value") -> bytes:
    """`fetch_url` for a caller without a running event loop (a worker thread)."""
    return asyncio.run(fetch_url(url, limits, field=field))


async def fetch_url(
    url: str, limits: ImageLimits, *, field: str = "image.value", slots: asyncio.Semaphore | None = None
) -> bytes:
    """Fetch an http(s) image URL's bytes (at most `max_bytes`), guarding against SSRF.

    Each hop (at most 3 redirects, followed by hand) has its host resolved and every address checked:
    private, loopback, link-local, reserved and other non-global addresses are refused unless
    `limits.allow_private_urls`; cloud-metadata, multicast and unspecified addresses always are. The
    connection goes to a checked address (the URL's host is kept for the Host header and TLS SNI/certificate
    checks), so DNS cannot be rebound between check and connect. Environment proxies are ignored (they would
    bypass the address check). `url_timeout_s` is one deadline over all of it: name resolution, connects,
    headers and body of every hop, and the wait for one of `slots` (the fetches a process runs at once).
    """
    if not limits.allow_url:
        raise URLInputRefused(
            "URL input is disabled on this server (SAM_IMAGE_ALLOW_URL); send the image as base64",
            field=field,
        )
    host = urlsplit(url.strip()).hostname or "the URL"
    try:
        return await asyncio.wait_for(_fetch_in_slot(url, limits, field, slots), limits.url_timeout_s)
    except asyncio.TimeoutError:  # builtin TimeoutError from 3.11; its own class on 3.10
        raise URLFetchError(
            f"{host!r} did not send the image within {limits.url_timeout_s} s (DNS, connect, headers and body)",
            field=field,
        ) from None


async def _fetch_in_slot(url: str, limits: ImageLimits, field: str, slots: asyncio.Semaphore | None) -> bytes:
    if slots is None:
        return await _fetch_following_redirects(url, limits, field)
    async with slots:
        return await _fetch_following_redirects(url, limits, field)


async def _fetch_following_redirects(url: str, limits: ImageLimits, field: str) -> bytes:
    current = url
    timeout = httpx.Timeout(limits.url_timeout_s)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for _hop in range(MAX_REDIRECTS + 1):
            target = await _checked_target(current, limits, field)
            outcome = await _fetch_pinned(client, target, limits, field)
            if isinstance(outcome, bytes):
                return outcome
            current = urljoin(current, outcome)  # relative to the URL as named, not its address
    raise URLFetchError(f"gave up after {MAX_REDIRECTS} redirects", field=field)


@dataclass(frozen=True)
class _Target:
    """A URL whose host was resolved and checked: one URL per checked address, in resolver order."""

    host: str
    host_header: str
    pinned_urls: tuple[str, ...]


async def _checked_target(url: str, limits: ImageLimits, field: str) -> _Target:
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:  # bad port, bad IPv6 literal
        raise InvalidInput(f"not a valid URL ({exc})", field=field) from exc
    if scheme not in ("http", "https"):
        raise URLInputRefused(f"only http and https URLs are fetched, not {scheme or 'none'!r}", field=field)
    host = parts.hostname
    if not host:
        raise InvalidInput("the URL has no host", field=field)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    except (OSError, UnicodeError, ValueError) as exc:  # gaierror is an OSError
        raise URLFetchError(f"could not resolve host {host!r}", field=field) from exc
    if not addresses:
        raise URLFetchError(f"host {host!r} has no address", field=field)
    # Refuse if any address is off limits: which one the connection would use is not ours to trust.
    for address in addresses:
        problem = _refused_address_kind(address, allow_private=limits.allow_private_urls)
        if problem:
            raise URLInputRefused(f"host {host!r} resolves to {problem} address (not fetched)", field=field)
    pinned_urls = tuple(
        parts._replace(netloc=f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}").geturl()
        for address in dict.fromkeys(addresses)
    )
    bare_host = f"[{host}]" if ":" in host else host
    default_port = port == (443 if scheme == "https" else 80)
    return _Target(host=host, host_header=bare_host if default_port else f"{bare_host}:{port}", pinned_urls=pinned_urls)


def _refused_address_kind(address: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_private: bool) -> str | None:
    """Why an address is off limits for server-side fetches, or None when it may be fetched.

    Metadata, multicast and unspecified addresses are refused even with `allow_private`: no image lives
    there, and the metadata service is the classic SSRF prize.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    always = (
        (address in _METADATA_ADDRESSES, "a cloud metadata"),
        (address.is_multicast, "a multicast"),
        (address.is_unspecified, "an unspecified"),
    )
    unless_private_allowed = (
        (address.is_loopback, "a loopback"),
        (address.is_link_local, "a link-local"),
        (address.is_reserved, "a reserved"),
        (address.is_private, "a private"),
        (not address.is_global, "a non-global"),  # shared 100.64/10 and the like
    )
    checks = always if allow_private else always + unless_private_allowed
    return next((kind for refused, kind in checks if refused), None)


async def _fetch_pinned(client: httpx.AsyncClient, target: _Target, limits: ImageLimits, field: str) -> bytes | str:
    """Try the checked addresses in order (dual-stack hosts); only a failed connect moves to the next."""
    for index, pinned_url in enumerate(target.pinned_urls):
        try:
            return await _fetch_once(client, pinned_url, target, limits, field)
        except httpx.ConnectError as exc:
            if index == len(target.pinned_urls) - 1:
                raise URLFetchError(f"could not connect to {target.host!r} ({exc})", field=field) from exc
    raise AssertionError("a _Target always has at least one address")


async def _fetch_once(
    client: httpx.AsyncClient, pinned_url: str, target: _Target, limits: ImageLimits, field: str
) -> bytes | str:
    """The body of a 2xx response, or the Location of a redirect; anything else raises.

    The connection goes to the checked address in `pinned_url`; the Host header and TLS SNI (which also
    drives certificate verification) keep the URL's host name, so DNS cannot change between check and use.
    """
    headers = {"Host": target.host_header, "Accept": "image/*", "Accept-Encoding": "identity"}
    try:
        stream = client.stream("GET", pinned_url, headers=headers, extensions={"sni_hostname": target.host})
        async with stream as response:
            if response.status_code in _REDIRECT_STATUSES:
                location = response.headers.get("location")
                if not location:
                    raise URLFetchError(f"HTTP {response.status_code} redirect without a Location", field=field)
                return location
            if not 200 <= response.status_code < 300:
                raise URLFetchError(
                    f"the URL answered HTTP {response.status_code} {response.reason_phrase}".rstrip(),
                    field=field,
                )
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit():
                check_byte_count(int(declared), limits, field)
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                # Stop as soon as the limit is passed: a lying or absent Content-Length must not make us
                # buffer an unbounded body.
                check_byte_count(len(body), limits, field)
            return bytes(body)
    except httpx.ConnectError:
        raise  # the caller may try the host's next address
    except httpx.TimeoutException as exc:
        raise URLFetchError(f"timed out after {limits.url_timeout_s} s", field=field) from exc
    except httpx.HTTPError as exc:
        raise URLFetchError(f"could not fetch the URL ({describe(exc)})", field=field) from exc
