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


def backend_credential(settings: Settings, tokens: dict[bytes, str]) -> bytes | None:
    """Label Studio's own credential for /labelstudio (`labelstudio_backend_password`), or None.

    Raises ValueError when it is empty or equal to a tenant's token (it must open only the backend routes).
    """
    if settings.labelstudio_backend_password is None:
        return None
    credential = settings.labelstudio_backend_password.get_secret_value().encode()
    if not credential.strip():
        raise ValueError("labelstudio_backend_password is empty: set a credential or leave it unset")
    if credential in tokens:
        raise ValueError(f"labelstudio_backend_password is tenant {tokens[credential]!r}'s token: use another")
    return credential


def require_tokens(settings: Settings, tokens: dict[bytes, str]) -> None:
    """With `auth_required`, no token configured is a start-up error, not a service open to everyone."""
    if settings.auth_required and not tokens:
        raise ValueError(
            "auth_required is true but no token is configured: set auth_token, auth_tokens (SAM_AUTH_TOKENS) or "
            "auth_tokens_file (k8s: fill the sam-auth Secret, k8s/make-secrets.sh)"
        )


def _tokens_file(path: Path) -> dict[str, str]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"auth_tokens_file {str(path)!r}: not a readable JSON object ({exc})") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"auth_tokens_file {str(path)!r}: must be a JSON object of tenant name -> token")
    return value
