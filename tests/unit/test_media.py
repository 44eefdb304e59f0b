"""SSRF guards for media URLs, checked without opening a connection.

The address classifier and the fetcher run against an injected resolver and a fake
transport (httpx.MockTransport) that records what would have been sent.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from audiotext.server.errors import AudioRequestError
from audiotext.server.media import MediaFetcher, MediaPolicy, refusal

POLICY = MediaPolicy(max_bytes=1000, timeout_s=5)
PUBLIC_IP = "93.184.216.34"


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"), ("::1", "loopback"),
        ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"), ("240.0.0.1", "reserved"), ("100.64.0.1", "not public"),
        ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"), ("fc00::1", "private"),
    ],
)  # fmt: skip
def test_non_public_addresses_are_refused(address: str, reason: str) -> None:
    assert refusal(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", [PUBLIC_IP, "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


class Remote:
    """A fake remote web: an injected resolver plus a transport recording requests."""

    def __init__(self, answers: dict[str, list[str]], responses: list[httpx.Response]) -> None:
        self.answers, self.responses, self.sent = answers, responses, []

    async def resolve(self, host: str, port: int) -> Sequence[str]:
        if host not in self.answers:
            raise OSError("unknown host")
        return self.answers[host]

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return self.responses.pop(0)

    def fetcher(self, policy: MediaPolicy = POLICY) -> MediaFetcher:
        return MediaFetcher(
            policy, resolver=self.resolve, transport=httpx.MockTransport(self.handle)
        )


def fetch(fetcher: MediaFetcher, url: str) -> bytes:
    return asyncio.run(fetcher.fetch(url))


def test_public_host_is_fetched_from_the_checked_address() -> None:
    remote = Remote({"media.test": [PUBLIC_IP]}, [httpx.Response(200, content=b"RIFF-audio")])
    assert fetch(remote.fetcher(), "https://media.test/a.wav") == b"RIFF-audio"
    [request] = remote.sent
    assert request.url.host == PUBLIC_IP
    assert request.headers["host"] == "media.test"
    assert request.extensions["sni_hostname"] == "media.test"


@pytest.mark.parametrize(
    "answer", [["127.0.0.1"], ["10.0.0.7"], ["169.254.169.254"], ["::1"], ["::ffff:127.0.0.1"],
               [PUBLIC_IP, "192.168.0.1"]],
)  # fmt: skip
def test_hosts_resolving_to_forbidden_addresses_are_never_contacted(answer: list[str]) -> None:
    remote = Remote({"evil.test": answer}, [])
    with pytest.raises(AudioRequestError, match="refused") as caught:
        fetch(remote.fetcher(), "http://evil.test/x.wav")
    assert caught.value.status == 403
    assert remote.sent == []


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1/", "http://localhost/", "http://2130706433/", "http://0x7f000001/",
     "http://127.1/", "http://0177.0.0.1/", "http://[::1]/", "http://[::ffff:127.0.0.1]/",
     "http://0.0.0.0/"],
)  # fmt: skip
def test_loopback_spellings_are_refused_by_the_real_resolver(url: str) -> None:
    sent: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(200))
    with pytest.raises(AudioRequestError) as caught:
        fetch(MediaFetcher(POLICY, transport=transport), url)
    assert caught.value.status in (400, 403)
    assert sent == []


def test_redirect_to_loopback_is_refused_before_following_it() -> None:
    redirect = httpx.Response(302, headers={"location": "http://127.0.0.1:9/secret"})
    remote = Remote({"media.test": [PUBLIC_IP]}, [redirect])
    with pytest.raises(AudioRequestError, match="loopback"):
        fetch(remote.fetcher(), "http://media.test/a.wav")
    assert len(remote.sent) == 1


def test_redirect_chains_are_bounded() -> None:
    loop = [httpx.Response(302, headers={"location": "/again"}) for _ in range(10)]
    remote = Remote({"media.test": [PUBLIC_IP]}, loop)
    with pytest.raises(AudioRequestError, match="too many redirects"):
        fetch(remote.fetcher(), "http://media.test/a.wav")
    assert len(remote.sent) == 4


def test_downloads_are_capped() -> None:
    big = [httpx.Response(200, content=b"x" * 5000)]
    with pytest.raises(AudioRequestError, match="over 1000 bytes") as caught:
        fetch(Remote({"media.test": [PUBLIC_IP]}, big).fetcher(), "http://media.test/a.wav")
    assert caught.value.status == 413


@pytest.mark.parametrize(
    ("url", "status"),
    [("ftp://media.test/a.wav", 400), ("http:///a.wav", 400), ("http://other.test/a.wav", 403),
     ("http://sub.media.test.evil.test/a.wav", 403)],
)  # fmt: skip
def test_bad_urls_and_domains_outside_the_allowlist(url: str, status: int) -> None:
    policy = MediaPolicy(max_bytes=1000, timeout_s=5, allowed_domains=frozenset({"media.test"}))
    remote = Remote({"media.test": [PUBLIC_IP], "other.test": [PUBLIC_IP]}, [])
    with pytest.raises(AudioRequestError) as caught:
        fetch(remote.fetcher(policy), url)
    assert caught.value.status == status
    assert remote.sent == []


def test_unknown_hosts_are_the_clients_400() -> None:
    remote = Remote({}, [])
    with pytest.raises(AudioRequestError, match="cannot resolve") as caught:
        fetch(remote.fetcher(), "http://unknown.test/a.wav")
    assert caught.value.status == 400


def test_upstream_errors_are_the_clients_400() -> None:
    remote = Remote({"media.test": [PUBLIC_IP]}, [httpx.Response(404)])
    with pytest.raises(AudioRequestError, match="HTTP 404") as caught:
        fetch(remote.fetcher(), "http://media.test/missing.wav")
    assert caught.value.status == 400


def test_file_urls_only_inside_the_media_folder(tmp_path: Path) -> None:
    folder = tmp_path / "media"
    folder.mkdir()
    (folder / "a.wav").write_bytes(b"RIFF")
    (tmp_path / "secret.txt").write_text("no")
    with pytest.raises(AudioRequestError, match="disabled") as caught:
        MediaFetcher(POLICY).read_local(f"file://{folder}/a.wav")
    assert caught.value.status == 403
    fetcher = MediaFetcher(MediaPolicy(max_bytes=1000, timeout_s=5, local_folder=folder))
    assert fetcher.read_local(f"file://{folder}/a.wav") == b"RIFF"
    for escape in (
        f"file://{folder}/../secret.txt",
        f"file://{folder}/%2e%2e/secret.txt",
        "file:///etc/passwd",
    ):
        with pytest.raises(AudioRequestError, match="inside") as caught:
            fetcher.read_local(escape)
        assert caught.value.status == 403
    with pytest.raises(AudioRequestError, match="no such file"):
        fetcher.read_local(f"file://{folder}/missing.wav")
