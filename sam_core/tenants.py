"""Who a bearer token belongs to: the tenants of `auth_token`, `auth_tokens` and `auth_tokens_file`."""

from __future__ import annotations

import json
from pathlib import Path

from sam_core.settings import Settings
from sam_core.wire.image_ids import DEFAULT_TENANT, check_tenant


def tenant_tokens(settings: Settings) -> dict[bytes, str]:
    """Token -> tenant for every configured token (empty: auth is off).

    Raises ValueError naming the setting for a bad tenant name, an empty token, a token two tenants share (a
    request could not say whose it is), or an unreadable tokens file.
    """
    named: dict[str, str] = {}
    if settings.auth_token is not None:
        named[DEFAULT_TENANT] = settings.auth_token.get_secret_value()
    for tenant, secret in settings.auth_tokens.items():
        named[tenant] = secret.get_secret_value()
    if settings.auth_tokens_file is not None:
        named.update(_tokens_file(settings.auth_tokens_file))
    tokens: dict[bytes, str] = {}
    for tenant, token in named.items():
        check_tenant(tenant)
        if not token.strip():
            raise ValueError(f"auth tokens: tenant {tenant!r} has an empty token")
        if token.encode() in tokens:
            raise ValueError(f"auth tokens: tenants {tokens[token.encode()]!r} and {tenant!r} share a token")
        tokens[token.encode()] = tenant
    return tokens


def _tokens_file(path: Path) -> dict[str, str]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"auth_tokens_file {str(path)!r}: not a readable JSON object ({exc})") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"auth_tokens_file {str(path)!r}: must be a JSON object of tenant name -> token")
    return value
