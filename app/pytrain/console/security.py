"""The console's safety: password hashes, the bind rule, the session's CSRF token and the headers.

- A password (``PYTRAIN_CONSOLE_PASSWORD_HASH``, made by ``pytrain console --hash-password``) is kept
  only as its scrypt hash (:func:`hash_password`, :func:`verify_password`; RFC 7914, the standard
  library's :func:`hashlib.scrypt`). Without one the console makes a token at start (valid until it stops) and
  prints a login link with it (like Jupyter), allowed on a loopback address only
  (:func:`check_bind`).
- The session is Starlette's signed cookie (HttpOnly, SameSite=Strict); it holds who logged in
  and the CSRF token every form sends back (:func:`csrf_ok`).
- Every answer carries :data:`SECURITY_HEADERS`: a Content-Security-Policy that allows scripts,
  styles and images from the console itself only (no inline script), and no framing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets

from pytrain.errors import ConfigurationError

#: scrypt's cost parameters (n=2**14, r=8, p=1: OWASP's minimum; about 50 ms and 16 MiB per check).
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_PREFIX = "scrypt"

#: Sent with every answer. ``script-src 'self'``: the console's own files, never inline code.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

#: The form field (and session key) of the CSRF token.
CSRF_FIELD = "csrf_token"


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt:N:r:p:SALT:HASH`` (base64) of ``password``: what ``PYTRAIN_CONSOLE_PASSWORD_HASH`` holds
    (``:``, not ``$``, between the parts: a ``$`` would be expanded in a shell, an ``.env`` file or a unit file).

    Raises:
        ConfigurationError: an empty password.
    """
    if not password:
        raise ConfigurationError("the console password is empty", hint="choose a password of at least 12 characters")
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, maxmem=64 * 2**20, **_SCRYPT)
    parts = [_PREFIX, str(_SCRYPT["n"]), str(_SCRYPT["r"]), str(_SCRYPT["p"]), _b64(salt), _b64(digest)]
    return ":".join(parts)


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (:func:`hash_password`'s format), in constant time.

    Raises:
        ConfigurationError: ``stored`` is not such a hash (names the setting to fix).
    """
    parts = stored.split(":")
    try:
        if len(parts) != 6 or parts[0] != _PREFIX:
            raise ValueError(stored[:10])
        n, r, p = (int(x) for x in parts[1:4])
        salt, expected = base64.b64decode(parts[4]), base64.b64decode(parts[5])
    except ValueError:
        raise ConfigurationError("PYTRAIN_CONSOLE_PASSWORD_HASH is not a scrypt hash",
                                 hint="make one with `pytrain console --hash-password`") from None
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 2**20, dklen=len(expected))
    return hmac.compare_digest(digest, expected)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def check_bind(host: str, password_hash: str | None) -> None:
    """Refuse to serve on a non-loopback ``host`` without a configured password.

    Raises:
        ConfigurationError: naming the address and the setting to set.
    """
    if not is_loopback(host) and not password_hash:
        raise ConfigurationError(
            f"the console would listen on {host}, reachable from other machines, without a password",
            hint="set PYTRAIN_CONSOLE_PASSWORD_HASH (make it with `pytrain console --hash-password`), "
                 "or bind to 127.0.0.1 and reach it through a TLS reverse proxy (docs/console.md)",
        )


def new_token() -> str:
    """A random URL-safe token (32 bytes): a CSRF token, a login token, a session key."""
    return secrets.token_urlsafe(32)


def csrf_ok(session_token: str | None, sent: str | None) -> bool:
    """Whether the form's CSRF token ``sent`` is the session's, compared in constant time."""
    return bool(session_token) and bool(sent) and hmac.compare_digest(str(session_token), str(sent))
