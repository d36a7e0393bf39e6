"""How the ingress gets a new image's embedding: the image read and hashed, decoded and resized to the
encoder's input frame off the event loop, the encoder call, and one run per image for every concurrent
request of it, across ingress replicas (`sam_core.single_flight`)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ray.serve.exceptions import BackPressureError

from deployments import metrics
from deployments.models import ServedModels
from deployments.off_loop import off_loop
from sam_core.cache import EmbeddingCache
from sam_core.embedding import EncoderInput, ImageEmbedding
from sam_core.errors import CacheUnavailable, InvalidInput, Overloaded
from sam_core.settings import Settings
from sam_core.single_flight import SingleFlight
from sam_core.wire.image_ids import ImageKeys, check_content_id, image_keys
from sam_core.wire.images import EncodedImage, encoded_file, encoder_input, read_image
from sam_core.wire.url_fetch import fetch_url


class NewImages:
    """The ingress's image steps, shared by its routes (segment, embed, segment everything)."""

    def __init__(self, models: ServedModels, cache: EmbeddingCache, settings: Settings) -> None:
        self.models = models
        self.cache = cache
        self.settings = settings
        self.flights = SingleFlight(cache, lock_ttl_s=settings.embed_lock_ttl_s, wait_s=settings.embed_wait_s)
        self.url_fetches = asyncio.Semaphore(settings.images.max_url_fetches)

    async def read(self, request: Any) -> EncodedImage:
        """The request's image bytes and their hash (base64 decoding or the URL fetch, off the loop); any
        request model with an `image` field."""
        if request.image is None:
            raise InvalidInput("send the image (or an image_id whose embedding is cached)", field="image")
        image = request.image
        if image.type == "url" and isinstance(image.value, str):
            # Awaited here, not on the image thread: a slow server holds a slot, never the thread others decode on.
            limits = self.settings.images
            data = await fetch_url(image.value, limits, field="image.value", slots=self.url_fetches)
            return await off_loop(encoded_file, data, "image.value", pool="image")
        return await off_loop(read_image, image.type, image.value, self.settings.images, field="image", pool="image")

    async def keyed(self, request: Any, tenant: str) -> tuple[ImageKeys, EncodedImage | None]:
        """Where the request's image lives for `tenant`, and the image read and hashed when it sent one.

        The bytes sent win over the id: the caller asks for an entry of their content (`content_id`), so an id
        that holds another image is embedded again from them and re-pointed (single flight overwrites it).
        """
        if request.image is None:
            return image_keys(tenant, request.image_id), None
        # The hash of the bytes as sent, before any decode: a repeat image costs no decode.
        encoded = await self.read(request)
        check_content_id(request.image_id, encoded.content_id)
        return image_keys(tenant, request.image_id, encoded.content_id), encoded

    async def warm(self, model: str, request: Any, tenant: str) -> tuple[str, bool]:
        """The image's id (its `image_id`, else the hash of its bytes) and whether `model`'s embedding of it was
        cached (from the entry's header alone); when it was not, one encoder run of it puts it there."""
        keys, encoded = await self.keyed(request, tenant)
        if encoded is None:
            encoded = await self.read(request)  # refused: warming needs the image
        if await self.cache.has_embedding(await self.models.model_id(model), keys.cache_key, encoded.content_id):
            return keys.reply_id, True
        await self.embed_once(model, keys.cache_key, encoded, {}, inline=False)
        return keys.reply_id, False

    async def encoder_input(self, encoded: EncodedImage) -> EncoderInput:
        """The image decoded and resized to the encoder's input frame (off the loop, on the image thread): only
        for an image whose embedding is not cached."""
        return await off_loop(encoder_input, encoded, self.settings.images, pool="image")

    async def encode(self, model: str, image: EncoderInput, cache_key: str) -> ImageEmbedding:
        try:
            embedding: ImageEmbedding = await self.models.encoder(model).embed.remote(image, cache_key)
        except BackPressureError as exc:
            raise Overloaded("the encoder is at capacity: retry shortly") from exc
        if not self.cache.shared:
            # Without Redis every process has its own cache: the ingress keeps the embeddings and sends them
            # inline, so follow-ups work whichever decoder replica answers.
            await self.cache.put_embedding(await self.models.model_id(model), cache_key, embedding)
        return embedding

    async def embed_once(
        self, model: str, key: str, encoded: EncodedImage, stages: dict[str, float], *, inline: bool
    ) -> tuple[ImageEmbedding | None, str]:
        """The image's embedding from the one encoder run of it that concurrent requests share, across
        ingress replicas (`sam_core.single_flight`), and where it came from (`encoder` or `cache`).

        None when another replica's run put it in the shared cache and `inline` is False (the decoder reads it
        there). `stages` gets this request's image and encoder times, or the time it waited for another run.
        """
        model_id = await self.models.model_id(model)

        async def embed() -> ImageEmbedding:
            loading = time.perf_counter()
            image = await self.encoder_input(encoded)
            encoding = time.perf_counter()
            stages["image_s"] = encoding - loading
            embedding = await self.encode(model, image, key)
            stages["encoder_s"] = time.perf_counter() - encoding
            return embedding

        waiting = time.perf_counter()
        flight = await self.flights.run(model_id, key, encoded.content_id, embed)
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

    async def probably_cached(self, model: str, cache_key: str, content_id: str = "") -> bool:
        """Whether the shared cache holds this image's embedding (its header only; of the image `content_id` when
        given); False when it cannot say.

        Only a hint: an entry evicted after this check is a CacheMiss from the decoder, handled as before. With
        the cache down, the image in hand is the way that works, so it goes to the encoder.
        """
        try:
            return await self.cache.has_embedding(await self.models.model_id(model), cache_key, content_id)
        except CacheUnavailable:
            return False
