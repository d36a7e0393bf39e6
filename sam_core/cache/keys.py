"""Cache keys: the model id namespaces every key, and a client's image id is only ever hashed into one."""

from __future__ import annotations

import hashlib
import re
from typing import Final

KIND_EMBEDDING: Final = "emb"

KIND_LOW_RES_LOGITS: Final = "lowres"

KINDS: Final = (KIND_EMBEDDING, KIND_LOW_RES_LOGITS)

_MODEL_ID_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def image_id_hash(image_id: str) -> str:
    """The 32-hex-digit digest that stands for a client image id in keys and logs."""
    # surrogatepass: any Python str a client id decodes to hashes, lone surrogates included.
    return hashlib.sha256(image_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def cache_key(model_id: str, image_id: str, kind: str) -> str:
    """`sam:{model_id}:{sha256(image_id)[:32]}:{kind}`.

    The model id (our own "model type + checkpoint sha prefix") namespaces every key so that an embedding
    never reaches another model's decoder; the client's image id is only ever hashed, so its length and
    characters cannot shape a key.
    """
    if not _MODEL_ID_RE.fullmatch(model_id):
        raise ValueError(f"model id {model_id!r} must be 1-128 characters of [A-Za-z0-9_.-]")
    if kind not in KINDS:
        raise ValueError(f"cache kind {kind!r} is not one of {KINDS}")
    return f"sam:{model_id}:{image_id_hash(image_id)}:{kind}"


def flight_key(model_id: str, image_id: str) -> str:
    """`sam:{model_id}:{sha256(image_id)[:32]}:flight`: the single-flight lock of an image's embedding run."""
    return cache_key(model_id, image_id, KIND_EMBEDDING).removesuffix(f":{KIND_EMBEDDING}") + ":flight"
