"""Which URLs may receive webhooks: http(s), no credentials, and (unless private targets are allowed) a host whose
every address is public — the SSRF guard, applied at submit and again before each delivery attempt (DNS may have
changed in between; the attempt then connects to the address checked).

Examples:
    >>> check_webhook_url("https://hooks.example.com/lift3d").host
    'hooks.example.com'
    >>> check_webhook_url("http://127.0.0.1:8080/hook")
    Traceback (most recent call last):
    WebhookUrlError: webhook_url: 127.0.0.1 is a loopback address; webhooks go to public addresses only (...)
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from lift3d.errors import InvalidInputError

__all__ = ["CheckedUrl", "WebhookUrlError", "check_webhook_url"]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class WebhookUrlError(InvalidInputError):
    """A ``webhook_url`` that may not be used (scheme, credentials, unresolvable or non-public host)."""

    name = "invalid_parameters"


@dataclass(frozen=True)
class CheckedUrl:
    """A webhook URL that passed :func:`check_webhook_url`; ``addresses`` are the IPs its host resolved to."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]


def check_webhook_url(url: str, allow_private: bool = False) -> CheckedUrl:
    """Check that ``url`` may receive webhooks, resolving its host (``socket.getaddrinfo``).

    Refused: schemes other than http/https; a user or password in the URL; a host that does not resolve; unless
    ``allow_private``, any resolved address (IPv4 or IPv6, IPv4-mapped/NAT64/6to4 forms unwrapped) that is
    loopback, private, link-local, multicast, reserved, unspecified or otherwise not globally routable. Every
    address of the host must pass, so a DNS answer mixing public and private addresses is refused.

    Raises:
        WebhookUrlError: (``invalid_parameters``) the message says which rule the URL broke.
    """
    if not isinstance(url, str) or not url.strip() or len(url) > 2048:
        raise WebhookUrlError("webhook_url: expected an http(s) URL of at most 2048 characters")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise WebhookUrlError(f"webhook_url: not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise WebhookUrlError(f"webhook_url: only http and https URLs are accepted, not {scheme or 'no'} scheme")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise WebhookUrlError("webhook_url: must not contain credentials (user:password@); authenticate the "
                              "sender by the webhook-signature header instead")
    host = parts.hostname
    if not host:
        raise WebhookUrlError("webhook_url: has no host")
    port = port or (443 if scheme == "https" else 80)
    addresses = _resolve(host, port)
    if not allow_private:
        for address in addresses:
            reason = _non_public(address)
            if reason:
                shown = host if _is_ip(host) else f"{host} resolves to {address}, which"
                article = "an" if reason[0] in "aeiou" else "a"
                raise WebhookUrlError(f"webhook_url: {shown} is {article} {reason} address; webhooks go to public "
                                      "addresses only (a local setup may set allow_private_webhooks)")
    return CheckedUrl(url=url.strip(), scheme=scheme, host=host, port=port, addresses=addresses)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _resolve(host: str, port: int) -> tuple[str, ...]:
    if _is_ip(host):
        return (str(ipaddress.ip_address(host)),)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise WebhookUrlError(f"webhook_url: host {host!r} does not resolve ({exc})") from None
    addresses = tuple(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))
    if not addresses:
        raise WebhookUrlError(f"webhook_url: host {host!r} has no address")
    return addresses


def _non_public(address: str) -> str | None:
    """Why ``address`` is not a public unicast address (None when it is)."""
    ip: Any = ipaddress.ip_address(address)
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    for reason in ("unspecified", "loopback", "link_local", "multicast", "reserved", "private"):
        if getattr(ip, f"is_{reason}"):
            return reason.replace("_", "-")
    return None if ip.is_global else "non-public"
