"""The ingress's one way to an image's embedding, for every route (segment, embed, warm, segment everything,
Label Studio, handle calls): the request's image read and hashed, its cache keys, the cached-or-not decision
(of the bytes sent: they win over the id), and one encoder run per image for every concurrent request of it,
across ingress replicas (`sam_core.single_flight`)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError

from deployments import metrics
from deployments.model_routing import ModelRouting
from deployments.off_loop import off_loop
from deployments.replica_presence import ReplicaPresence
from sam_core.cache import EmbeddingCache
from sam_core.embedding import EncoderInput, ImageEmbedding, same_content
from sam_core.errors import CacheMiss, CacheUnavailable, EncoderUnavailable, InvalidInput, Overloaded
from sam_core.settings import Settings
from sam_core.single_flight import SingleFlight
from sam_core.wire.image_ids import ImageKeys, check_content_id, image_keys, is_content_hash
from sam_core.wire.images import EncodedImage, check_encoder_input, encoded_file, encoder_input, read_image
from sam_core.wire.messages import WarmImage
from sam_core.wire.url_fetch import fetch_url

CACHE_DOWN = "the embedding cache is unavailable: resend the request with the image"


@dataclass
class Found:
    """Where one request's embedding is.

    Attributes:
        keys: the image's cache keys for the request's tenant, and the id its answer names.
        image: the image sent, read and hashed (not decoded); None for a request by id alone.
        embedding: in hand; None when it is in the shared cache and the decoder reads it there.
        cached: it was cached when the request asked (the encoder did not run for it).
        source: where it came from, for metrics: `cache` or `encoder`.
        stages: this request's image, encoder and wait times.
    """

    keys: ImageKeys
    image: EncodedImage | None
    embedding: ImageEmbedding | None = None
    cached: bool = True
    source: str = "cache"
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def content_id(self) -> str:
        """The content id of the image sent ("" for a request by id alone: any entry under the id serves)."""
        return "" if self.image is None else self.image.content_id


class Embeddings:
    """Get or embed: the cache holds an image's embedding, or one encoder run of the image sent puts it there."""

    def __init__(
        self, models: ModelRouting, cache: EmbeddingCache, settings: Settings, encoders: ReplicaPresence
    ) -> None:
        self.models = models
        self.cache = cache
        self.settings = settings
        # Whether an encoder replica runs: a cold request fails at once with 503 rather than waits for one.
        self.encoders = encoders
        self.flights = SingleFlight(cache, lock_ttl_s=settings.embed_lock_ttl_s, wait_s=settings.embed_wait_s)
        self.url_fetches = asyncio.Semaphore(settings.images.max_url_fetches)

    async def find(self, model: str, request: Any, tenant: str, *, in_hand: bool = False) -> Found:
        """The request's embedding for `tenant` (any request model with `image` and `image_id`).

        `in_hand`: the caller needs the embedding itself (always so without a shared cache, where each process
        has its own). Otherwise an entry in the shared cache is enough, since the decoder reads it there: checked
        from its header when the image was sent, and not at all for a request by id alone (the decoder's miss
        is the same answer, and the check would cost a cache round trip per click).
        """
        keys, image = await self.keyed(request, tenant)
        found = Found(keys, image)
        in_hand = in_hand or not self.cache.shared
        if image is None and not in_hand:
            return found
        sent = image is not None
        cached = await self.lookup(model, keys.cache_key, found.content_id, in_hand=in_hand, has_image=sent)
        if cached is not False:
            found.embedding = cached if isinstance(cached, ImageEmbedding) else None
            return found
        if image is None:
            raise CacheMiss("no cached embedding for this image_id: send the image", field="image_id")
        found.cached = False
        found.embedding, found.source = await self.embed_once(
            model, keys.cache_key, image, found.stages, inline=in_hand
        )
        return found

    async def again(self, model: str, found: Found) -> ImageEmbedding:
        """The embedding in hand after the entry `find` counted on left the cache before the decoder read it
        (evicted), or the cache went down: embedded again from the image sent, which the caller checked."""
        assert found.image is not None, "only a request that sent its image is embedded again"
        embedding, found.source = await self.embed_once(
            model, found.keys.cache_key, found.image, found.stages, inline=True
        )
        assert embedding is not None, "inline=True gives the embedding"
        found.embedding, found.cached = embedding, False
        return embedding

    async def lookup(
        self, model: str, cache_key: str, content_id: str, *, in_hand: bool, has_image: bool
    ) -> ImageEmbedding | bool:
        """The cached embedding of the image `content_id` ("": of any) under `cache_key` when `in_hand`, else
        whether the cache holds it (its header only); False when it cannot say and the image is at hand."""
        model_id = await self.models.model_id(model)
        try:
            if in_hand:
                cached = await self.cache.get_embedding(model_id, cache_key)
                return cached if cached is not None and same_content(cached.content_id, content_id) else False
            return await self.cache.has_embedding(model_id, cache_key, content_id)
        except CacheUnavailable as exc:
            if not has_image:
                raise CacheUnavailable(CACHE_DOWN, field="image_id") from exc
            return False  # the image in hand is the way that works: to the encoder

    async def keyed(self, request: Any, tenant: str) -> tuple[ImageKeys, EncodedImage | None]:
        """Where the request's image lives for `tenant`, and the image read and hashed when it sent one.

        The bytes sent win over the id: the caller asks for an entry of their content (`content_id`), so an id
        that holds another image is embedded again from them and re-pointed (single flight overwrites it).
        """
        if request.image is None:
            return image_keys(tenant, request.image_id), None
        # The hash of the bytes as sent, before any decode: a repeat image costs no decode.
        image = await self.read(request)
        check_content_id(request.image_id, image.content_id)
        return image_keys(tenant, request.image_id, image.content_id), image

    async def read(self, request: Any) -> EncodedImage:
        """The request's image bytes and their hash (base64 decoding or the URL fetch, off the loop)."""
        if request.image is None:
            raise InvalidInput("send the image (or an image_id whose embedding is cached)", field="image")
        image = request.image
        if image.type == "url" and isinstance(image.value, str):
            # Awaited here, not on the image thread: a slow server holds a slot, never the thread others decode on.
            limits = self.settings.images
            data = await fetch_url(image.value, limits, field="image.value", slots=self.url_fetches)
            return await off_loop(encoded_file, data, "image.value", pool="image")
        return await off_loop(read_image, image.type, image.value, self.settings.images, field="image", pool="image")

    async def warm(self, model: str, request: Any, tenant: str) -> tuple[str, bool]:
        """The image's id (its `image_id`, else the hash of its bytes) and whether `model`'s embedding of it was
        cached (from the entry's header alone); when it was not, one encoder run of it puts it there.

        `request`: an EmbedImageRequest (the image as sent, decoded here), or a `WarmImage` whose pixels the
        caller decoded and resized itself (then only its frame is checked, and it is keyed by its content id).
        """
        image: EncodedImage | EncoderInput | None
        if isinstance(request, WarmImage):
            image = check_encoder_input(request.pixels, self.settings.images)
            keys = image_keys(tenant, None, image.content_id)
        else:
            if request.image is None:
                await self.read(request)  # refused: warming needs the image
            keys, image = await self.keyed(request, tenant)
        assert image is not None, "the image was sent"
        if await self.cache.has_embedding(await self.models.model_id(model), keys.cache_key, image.content_id):
            return keys.reply_id, True
        await self.embed_once(model, keys.cache_key, image, {}, inline=False)
        return keys.reply_id, False

    async def cached(self, model: str, content_ids: list[str], tenant: str) -> list[bool]:
        """Whether `model`'s embedding of each image (by its `sha256:` content id) is cached, from the entries'
        headers: what `sam-serve warm`'s workers ask before they decode a batch."""
        model_id = await self.models.model_id(model)
        for index, content_id in enumerate(content_ids):
            if not is_content_hash(content_id):
                raise InvalidInput("must be the sha256: hash of an image's bytes", field=f"content_ids[{index}]")
        found = await asyncio.gather(
            *(self.cache.has_embedding(model_id, image_keys(tenant, None, cid).cache_key, cid) for cid in content_ids)
        )
        return list(found)

    async def encoder_input(self, image: EncodedImage) -> EncoderInput:
        """The image decoded and resized to the encoder's input frame (off the loop, on the image thread): only
        for an image whose embedding is not cached."""
        return await off_loop(encoder_input, image, self.settings.images, pool="image")

    async def encode(self, model: str, image: EncoderInput, cache_key: str) -> ImageEmbedding:
        """One encoder call; the encoder stores the embedding under `cache_key` before it answers.

        EncoderUnavailable (503, Retry-After) when no encoder replica runs, or the one called died mid-call.
        """
        try:
            response = self.models.encoder(model).embed.remote(image, cache_key)
            embedding: ImageEmbedding = await self.encoders.call(response, "encoder")
        except BackPressureError as exc:
            raise Overloaded("the encoder is at capacity: retry shortly") from exc
        except (RayActorError, ReplicaUnavailableError) as exc:
            raise EncoderUnavailable("the encoder replica failed during the request: retry shortly") from exc
        if not self.cache.shared:
            # Without Redis every process has its own cache: the ingress keeps the embeddings and sends them
            # inline, so follow-ups work whichever decoder replica answers.
            await self.cache.put_embedding(await self.models.model_id(model), cache_key, embedding)
        return embedding

    async def embed_once(
        self, model: str, key: str, image: EncodedImage | EncoderInput, stages: dict[str, float], *, inline: bool
    ) -> tuple[ImageEmbedding | None, str]:
        """The image's embedding from the one encoder run of it that concurrent requests share, and where it
        came from (`encoder` or `cache`). `image`: as sent (decoded and resized here, on the image thread), or
        already in the input frame.

        None when another replica's run put it in the shared cache and `inline` is False (the decoder reads it
        there). `stages` gets this request's image and encoder times, or the time it waited for another run.
        """
        model_id = await self.models.model_id(model)

        async def embed() -> ImageEmbedding:
            loading = time.perf_counter()
            pixels = image if isinstance(image, EncoderInput) else await self.encoder_input(image)
            encoding = time.perf_counter()
            stages["image_s"] = encoding - loading
            embedding = await self.encode(model, pixels, key)
            stages["encoder_s"] = time.perf_counter() - encoding
            return embedding

        waiting = time.perf_counter()
        flight = await self.flights.run(model_id, key, image.content_id, embed)
        metrics.embed_flight(model_id, flight.role)
        if flight.role not in ("own", "holder"):
            stages["wait_s"] = time.perf_counter() - waiting
        source = "encoder" if flight.role in ("own", "holder", "joined") else "cache"
        embedding = flight.embedding
        if embedding is None and inline:
            embedding = await self.cache.get_embedding(model_id, key)
            if embedding is None:  # landed, then evicted before this read
                embedding = await embed()
        return embedding, source
