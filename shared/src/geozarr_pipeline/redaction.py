"""Secrets never leave the process: every log line, reply, failure and status record is
passed through `redact` before it is written.

The configured secrets (S3 secret key, STAC API token, OIDC client secret) are registered once
when the settings are read; each is replaced raw, base64-encoded and URL-encoded, and so is the
OIDC `client_id:client_secret` pair of HTTP Basic auth. Bearer/Basic credentials and the user
info of URLs are replaced whatever their value, since an upstream may echo a header back.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterable
from urllib.parse import quote

from geozarr_pipeline.config import Settings

REDACTED = "[REDACTED]"
# Shorter values would redact ordinary words.
MIN_SECRET_CHARS = 6
QUOTE_CHARS = 500

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization: Bearer x / Basic x, also inside echoed JSON or repr'd header dicts.
    # The credential must hold a capital, a digit or a token character: "basic information"
    # stays.
    (
        re.compile(
            r"\b((?i:bearer|basic))(?:\s+|%20)(?=[a-z]*[A-Z0-9._~+/=-])[A-Za-z0-9._~+/=-]{8,}"
        ),
        rf"\1 {REDACTED}",
    ),
    # scheme://user:password@host
    (re.compile(r"(?<=://)[^/\s:@\"']+:[^/\s@\"']+(?=@)"), REDACTED),
    # Presigned S3 URLs and query-string credentials.
    (
        re.compile(
            r"(?i)(?<=[?&])(x-amz-signature|x-amz-credential|x-amz-security-token|"
            r"access_token|client_secret|password|token)=[^&\s\"']+"
        ),
        rf"\1={REDACTED}",
    ),
)

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()


def _forms(value: str) -> set[str]:
    """The value as it may appear: raw, JSON-escaped (log lines are JSON), base64, URL-encoded."""
    encoded = value.encode()
    return {
        value,
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        base64.b64encode(encoded).decode().rstrip("="),
        base64.urlsafe_b64encode(encoded).decode().rstrip("="),
        quote(value, safe=""),
    }


def register_secrets(values: Iterable[str | None], *, replacing: str | None = None) -> None:
    """Add values to redact from now on (idempotent); `replacing` is a value they succeed
    (a refreshed token), forgotten so that a long-running process does not pile them up."""
    global _secrets
    found = {form for value in values if value for form in _forms(value)}
    gone = set(_forms(replacing)) - found if replacing else set()
    with _lock:
        merged = (set(_secrets) - gone) | {s for s in found if len(s) >= MIN_SECRET_CHARS}
        # Longest first, so a secret inside a longer secret is not half-replaced.
        _secrets = tuple(sorted(merged, key=len, reverse=True))


def settings_secrets(settings: Settings) -> list[str]:
    values = [
        secret.get_secret_value()
        for secret in (
            settings.s3_secret_access_key,
            settings.stac_api_token,
            settings.oidc_client_secret,
        )
        if secret is not None
    ]
    if settings.oidc_client_id and settings.oidc_client_secret is not None:
        values.append(f"{settings.oidc_client_id}:{settings.oidc_client_secret.get_secret_value()}")
    return values


def redact(text: str) -> str:
    """`text` with every registered secret and every credential-looking token replaced."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def quoted(text: str, limit: int = QUOTE_CHARS) -> str:
    """A redacted excerpt of upstream text, at most `limit` characters."""
    clean = redact(text)
    if len(clean) <= limit:
        return clean
    return f"{clean[:limit]}... [{len(clean) - limit} more characters]"
