"""Fetching request media without reaching what clients must not (SSRF guards).

- http(s) only; the host is resolved and every address checked: loopback, private,
  link-local (169.254.169.254), multicast, reserved and other non-public addresses are
  refused, IPv4-mapped IPv6 included. Numeric spellings (2130706433, 0x7f000001, 127.1)
  resolve to the address they mean and are refused with it.
- The connection goes to the address that was checked (no second DNS answer), and each
  redirect hop is checked again, at most `MAX_REDIRECTS` of them.
- Downloads have a timeout and a size cap; an optional allowlist limits the domains.
- `file://` URLs read only below a configured folder; anything else is refused.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import httpx

from audiotext.server.errors import AudioRequestError, request_error
from audiotext.server.metrics import Refusal

MAX_REDIRECTS = 3
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]


@dataclass(frozen=True)
class MediaPolicy:
    """What the server may fetch for a request."""

    max_bytes: int
    timeout_s: float
    allowed_domains: frozenset[str] = frozenset()  # empty: any public host
    local_folder: Path | None = None  # None: no file:// URLs


def refusal(ip: IPAddress) -> str | None:
    """Why the server must not connect to this address, or None when it is public."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for reason, flag in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("unspecified", ip.is_unspecified),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
    ):
        if flag:
            return reason
    return None if ip.is_global else "not public"


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class MediaFetcher:
    """Downloads request audio under a `MediaPolicy`.

    Args:
        policy: limits and allowlists.
        resolver: host name -> addresses (injected in tests).
        transport: httpx transport (injected in tests to fake a remote server).
    """

    def __init__(
        self,
        policy: MediaPolicy,
        resolver: Resolver = system_resolver,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.policy = policy
        self.resolver = resolver
        self.http = httpx.AsyncClient(
            timeout=policy.timeout_s, follow_redirects=False, transport=transport
        )

    async def fetch(self, url: str) -> bytes:
        """The bytes at `url`, or an `AudioRequestError` (400/403/413) saying why not."""
        if url.startswith("file:"):
            return await asyncio.to_thread(self.read_local, url)
        for _ in range(MAX_REDIRECTS + 1):
            request = await self._pinned_request(url)
            try:
                response = await self.http.send(request, stream=True)
            except httpx.HTTPError as e:
                raise _error(f"could not fetch audio from {url}: {type(e).__name__}") from e
            try:
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    url = urljoin(url, location)
                    continue
                if response.status_code != 200:
                    raise _error(f"could not fetch audio from {url}: HTTP {response.status_code}")
                return await self._read_capped(response, url)
            finally:
                await response.aclose()
        raise _error(f"too many redirects (more than {MAX_REDIRECTS}) fetching audio")

    def read_local(self, url: str) -> bytes:
        return read_local(self.policy, url)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _pinned_request(self, url: str) -> httpx.Request:
        """Check `url` and build a request that connects to the checked address."""
        try:
            target = httpx.URL(url)
        except httpx.InvalidURL as e:
            raise _error(f"invalid audio URL: {e}") from e
        if target.scheme not in ("http", "https"):
            raise _error(
                f"audio URLs must be http(s), not {target.scheme or 'relative'}", reason="ssrf"
            )
        host = target.host
        if not host:
            raise _error("audio URL has no host")
        allowed = self.policy.allowed_domains
        if allowed and not any(host == d or host.endswith("." + d) for d in allowed):
            raise _error(f"audio host {host} is not in the allowed domains", 403)
        port = target.port or (443 if target.scheme == "https" else 80)
        try:
            addresses = [ipaddress.ip_address(host)]  # a literal address: no lookup
        except ValueError:
            try:
                answers = await self.resolver(host, port)
                addresses = [ipaddress.ip_address(a.split("%")[0]) for a in answers]
            except (OSError, ValueError) as e:
                raise _error(f"cannot resolve audio host {host}") from e
        if not addresses:
            raise _error(f"cannot resolve audio host {host}")
        for address in addresses:
            reason = refusal(address)
            if reason:
                raise _error(f"audio URL points to a {reason} address; refused", 403)
        pinned = target.copy_with(host=str(addresses[0]))
        headers = {"Host": target.netloc.decode("ascii")}
        extensions = {"sni_hostname": host} if target.scheme == "https" else {}
        return self.http.build_request("GET", pinned, headers=headers, extensions=extensions)

    async def _read_capped(self, response: httpx.Response, url: str) -> bytes:
        length = response.headers.get("content-length")
        if length and length.isdigit() and int(length) > self.policy.max_bytes:
            raise _error(f"audio at {url} is over {self.policy.max_bytes} bytes", 413)
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.policy.max_bytes:
                raise _error(f"audio at {url} is over {self.policy.max_bytes} bytes", 413)
            chunks.append(chunk)
        return b"".join(chunks)


def read_local(policy: MediaPolicy, url: str) -> bytes:
    """The bytes of a `file://` URL below the policy's folder, or a 403/400/413 error."""
    folder = policy.local_folder
    if folder is None:
        raise _error("file:// URLs are disabled; the server has no --media-folder", 403)
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise _error("file:// URLs must name a local path", 400, reason="ssrf")
    root = folder.resolve()
    path = Path(unquote(parts.path)).resolve()
    if not path.is_relative_to(root):
        raise _error(f"file:// URLs must stay inside {root}", 403)
    if not path.is_file():
        raise _error(f"no such file: {path.relative_to(root)}", 400)
    if path.stat().st_size > policy.max_bytes:
        raise _error(f"audio file is over {policy.max_bytes} bytes", 413)
    return path.read_bytes()


# Refusals by status unless named: the policy's (403), the size cap's (413), and what could
# not be fetched or read.
_REASONS: dict[int, Refusal] = {403: "ssrf", 413: "too_large"}


def _error(message: str, status: int = 400, reason: Refusal | None = None) -> AudioRequestError:
    reason = reason or _REASONS.get(status, "fetch_failed")
    return request_error(message, status=status, param="audio_url", reason=reason)
