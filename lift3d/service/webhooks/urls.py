"""Which URLs may receive webhooks: http(s), no credentials, no control characters, and (unless private targets are
allowed) a port of the allow-list (80 and 443 by default) on a host whose every address is public — the SSRF guard,
applied at submit and again before each delivery attempt (DNS may have changed in between; the attempt then
connects to the address checked).

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

__all__ = ["DEFAULT_WEBHOOK_PORTS", "CheckedUrl", "WebhookUrlError", "check_webhook_url"]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
DEFAULT_WEBHOOK_PORTS: tuple[int, ...] = (80, 443)
"""Ports a public webhook URL may name (explicitly or by its scheme's default) unless configured otherwise."""
_CONTROL = frozenset(chr(c) for c in (*range(0x00, 0x21), *range(0x7F, 0xA0)))
"""C0 controls, space, DEL and C1 controls: never valid in a URL (RFC 3986 §2); Python's ``urlsplit`` silently drops
tab, CR and LF (the WHATWG rule), so they are refused before parsing rather than let through to the delivery."""


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


def check_webhook_url(url: str, allow_private: bool = False,
                      allowed_ports: tuple[int, ...] | list[int] = DEFAULT_WEBHOOK_PORTS) -> CheckedUrl:
    """Check that ``url`` may receive webhooks, resolving its host (``socket.getaddrinfo``).

    Refused: anything but a string of 1 to 2048 characters; control characters anywhere (C0 such as NUL, CR, LF,
    tab; space; DEL; C1), even at the ends; schemes other than http/https; a user or password in the URL; a host
    that does not resolve; unless ``allow_private``: a port (explicit, or 80/443 from the scheme) not in
    ``allowed_ports``, and any resolved address (IPv4 or IPv6, IPv4-mapped/NAT64/6to4 forms unwrapped) that is
    loopback, private, link-local, multicast, reserved, unspecified or otherwise not globally routable. Every
    address of the host must pass, so a DNS answer mixing public and private addresses is refused.

    Args:
        url: the ``webhook_url`` of a request.
        allow_private: a local setup: private addresses and any port are accepted.
        allowed_ports: ports a public URL may use (``webhook_allowed_ports`` in the service settings).

    Raises:
        WebhookUrlError: (``invalid_parameters``) the message says which rule the URL broke.
    """
    if not isinstance(url, str) or not url or len(url) > 2048:
        raise WebhookUrlError("webhook_url: expected an http(s) URL of at most 2048 characters")
    bad = next((char for char in url if char in _CONTROL), None)
    if bad is not None:
        raise WebhookUrlError(f"webhook_url: must not contain control characters or spaces (found U+{ord(bad):04X} "
                              f"at position {url.index(bad)}); percent-encode them")
    try:
        parts = urlsplit(url)
        explicit_port = parts.port
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
    port = explicit_port if explicit_port is not None else (443 if scheme == "https" else 80)
    addresses = _resolve(host, port)
    if not allow_private:
        for address in addresses:
            reason = _non_public(address)
            if reason:
                shown = host if _is_ip(host) else f"{host} resolves to {address}, which"
                article = "an" if reason[0] in "aeiou" else "a"
                raise WebhookUrlError(f"webhook_url: {shown} is {article} {reason} address; webhooks go to public "
                                      "addresses only (a local setup may set allow_private_webhooks)")
        if port not in allowed_ports:
            ports = ", ".join(str(p) for p in sorted(allowed_ports)) or "none"
            raise WebhookUrlError(f"webhook_url: port {port} is not accepted; webhooks go to ports {ports} (the "
                                  "service's webhook_allowed_ports)")
    return CheckedUrl(url=url, scheme=scheme, host=host, port=port, addresses=addresses)


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
