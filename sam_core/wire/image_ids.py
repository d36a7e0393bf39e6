"""Whose entry an `image_id` names: the namespaces the service writes itself, and each tenant's own ids.

Three kinds of id reach the cache:
- a content id, `sha256:<hex>` of the image's bytes, which the service computes itself. Same bytes, same
  embedding: these entries are shared by every tenant, and written only from pixels the service decoded;
- a client's id, which lives in its tenant's namespace (`tenant:{name}:{image_id}`, hashed as every key is):
  another tenant's id with the same name is another entry, never its masks. The default tenant (auth off, or
  the one `auth_token`) keeps the id itself as its key, as before tenants: its entries and the handle callers'
  stay where they were, and no client can name another tenant's key, since `tenant:` ids are refused;
- the service's own wings' ids (`labelstudio:`), refused from HTTP clients.

Low-res logits (what a follow-up click with `use_mask_input_cache` feeds back) are always the tenant's own:
under a content id they are kept under the tenant's name for it, so no tenant's clicks shape another's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from sam_core.errors import InvalidInput

CONTENT_ID_PREFIX: Final = "sha256:"
"""Ids the service writes itself: the hex sha256 of an image's bytes. A client may name one to read that entry,
or send it with the very bytes it is the hash of; never with other bytes or its own embedding."""

TENANT_PREFIX: Final = "tenant:"

RESERVED_ID_PREFIXES: Final = ("labelstudio:", TENANT_PREFIX)
"""Ids only the service itself writes (the Label Studio backend keys task images by URL; tenants' namespaces):
refused from clients."""

DEFAULT_TENANT: Final = "default"
"""The tenant of every request when auth is off or the one `auth_token` is used, and of handle callers."""

TENANT_PATTERN: Final = r"^[A-Za-z0-9_.-]{1,64}$"
"""A tenant's name: no `:`, so `tenant:{name}:{image_id}` reads back one way only."""

_TENANT_RE: Final = re.compile(TENANT_PATTERN)


def check_tenant(tenant: str) -> str:
    if not _TENANT_RE.fullmatch(tenant):
        raise ValueError(f"tenant name {tenant!r} must be 1-64 characters of [A-Za-z0-9_.-]")
    return tenant


def check_client_image_id(image_id: str | None) -> None:
    """Refuse an HTTP client's `image_id` in a namespace the service writes itself (422 naming `image_id`).

    Checked at the HTTP routes, not in the model: the service's own wings build requests with these ids.
    """
    if image_id is not None and image_id.startswith(RESERVED_ID_PREFIXES):
        prefix = image_id.split(":", 1)[0] + ":"
        raise InvalidInput(f"ids under {prefix!r} are the service's own: choose another image_id", field="image_id")


def check_content_id(image_id: str | None, content_id: str | None, *, has_embeddings: bool = False) -> None:
    """A `sha256:` image_id names the content hash of the image sent with it, and is never written from a client's
    embedding: otherwise one client could put an image's masks under another image's hash (422 naming `image_id`)."""
    if image_id is None or not image_id.startswith(CONTENT_ID_PREFIX):
        return
    if has_embeddings:
        raise InvalidInput(
            "a sha256: id names an image the service hashed itself: send embeddings with an id of your own, or none",
            field="image_id",
        )
    if content_id is not None and content_id != image_id:
        raise InvalidInput(
            "a sha256: id must be the sha256 of the image bytes sent with it: send the image without image_id, "
            "or under an id of your own",
            field="image_id",
        )


def is_content_id(image_id: str | None) -> bool:
    return image_id is not None and image_id.startswith(CONTENT_ID_PREFIX)


def is_content_hash(value: object) -> bool:
    """Whether `value` is a well-formed content id: `sha256:` and 64 lowercase hex digits."""
    return isinstance(value, str) and re.fullmatch(f"{CONTENT_ID_PREFIX}[0-9a-f]{{64}}", value) is not None


@dataclass(frozen=True)
class ImageKeys:
    """Where one request's image lives in the cache, and the id its answer names."""

    reply_id: str
    """The id the client sees: its own `image_id`, or the image's content id."""
    cache_key: str
    """The embedding's entry: the content id (shared), or the tenant's name for the client's id."""
    logits_key: str
    """The low-res logits' entry: always the tenant's own."""


def tenant_key(tenant: str, image_id: str) -> str:
    """The tenant's own name for an id: `tenant:{name}:{image_id}` (the cache hashes it like any id); the default
    tenant's is the id itself."""
    return image_id if tenant == DEFAULT_TENANT else f"{TENANT_PREFIX}{tenant}:{image_id}"


def image_keys(tenant: str, image_id: str | None, content_id: str | None = None) -> ImageKeys:
    """The keys of a request's image for `tenant`: by its `image_id`, else by the `content_id` of its bytes."""
    if image_id is None:
        if content_id is None:
            raise InvalidInput("send the image (or an image_id whose embedding is cached)", field="image")
        image_id = content_id
    if is_content_id(image_id):
        return ImageKeys(reply_id=image_id, cache_key=image_id, logits_key=tenant_key(tenant, image_id))
    own = tenant_key(tenant, image_id)
    return ImageKeys(reply_id=image_id, cache_key=own, logits_key=own)
