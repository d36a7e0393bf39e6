"""The decoder service: a job's embedding from the job or the cache, the ONNX decoder, the low-res logits back
to the cache, the masks encoded."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from concurrent.futures import Executor
from typing import Any

import numpy as np

from sam_core.cache import EmbeddingCache, image_id_hash
from sam_core.cache.configured import decoder_cache
from sam_core.embedding import ImageEmbedding, same_content
from sam_core.errors import CacheMiss, CacheUnavailable, ImageTooLarge, InvalidInput
from sam_core.frames import LOW_RES_SHAPE, MASK_INPUT_SHAPE
from sam_core.model.build import ModelIdentity
from sam_core.model.decoder import DecoderGraph, DecoderOutput, OnnxDecoder
from sam_core.model.prompts import Prompt, build_prompt
from sam_core.services.configured import open_decoder
from sam_core.settings import ImageLimits, Settings
from sam_core.wire.image_checks import check_image_size
from sam_core.wire.messages import SegmentJob, SegmentResult
from sam_core.wire.npy import segment_to_npz
from sam_core.wire.responses import encode_masks

log = logging.getLogger(__name__)


MAX_BINARY_MASK_BYTES = 512 * 1024 * 1024
"""Most bool-mask bytes a binary several-prompts answer may hold (P x M x H x W): 100 boxes on a 2 MP image
fit; more is a 413 that asks for a json format, which encodes each prompt as it is decoded."""


def _prompt(
    embedding: ImageEmbedding, point_coords: object, point_labels: object, box: object, mask_input: np.ndarray | None
) -> Prompt:
    """One prompt validated against the image its embedding is of (a mask input is a prompt by itself)."""
    return build_prompt(
        point_coords, point_labels, embedding.original_size, box=box, has_mask_input=mask_input is not None
    )


class DecoderService:
    """Answers prompts: embedding from the job or the cache, ONNX decoder, low-res logits back to the cache."""

    def __init__(
        self, decoder: OnnxDecoder, identity: ModelIdentity, cache: EmbeddingCache, *, limits: ImageLimits | None = None
    ) -> None:
        self.decoder = decoder
        self.identity = identity
        self.cache = cache
        self.limits = limits or ImageLimits()

    def graph(self, *, multimask: bool, low_res: bool = False) -> DecoderGraph:
        """An exported decoder file clients download (`GET /sam/decoder.onnx`); reads and hashes it (a few MB:
        call from a worker thread)."""
        path = self.decoder.paths[multimask, low_res]
        data = path.read_bytes()
        return DecoderGraph(
            data=data,
            sha256=hashlib.sha256(data).hexdigest(),
            filename=path.name,
            model_id=self.identity.model_id,
            checkpoint_sha256=self.identity.checkpoint_sha256,
        )

    @classmethod
    def from_settings(cls, settings: Settings, *, threads: int, cache: EmbeddingCache | None = None) -> DecoderService:
        decoder, identity = open_decoder(settings, threads=threads)
        return cls(decoder, identity, cache or decoder_cache(settings), limits=settings.images)

    async def load_inputs(self, job: SegmentJob) -> tuple[ImageEmbedding, np.ndarray | None]:
        """The job's embedding and the mask input to use (None: no mask input).

        Raises CacheMiss when the job has no inline embedding and none is cached, CacheUnavailable when the
        cache is down and the embedding is needed from it.
        """
        model_id = self.identity.model_id
        wants_cached_mask = job.has_mask_input and job.mask_input is None and job.use_mask_input_cache
        embedding, cached_logits = job.embedding, None
        if embedding is None:
            if job.cache_key is None:
                raise InvalidInput("send image, image_id or embeddings", field="image")
            embedding, cached_logits = await self.cache.get_all(
                model_id, job.cache_key, with_logits=wants_cached_mask, logits_id=job.logits_key
            )
            if embedding is None:
                raise CacheMiss("no cached embedding for this image_id: send the image", field="image_id")
            if not same_content(embedding.content_id, job.content_id):
                raise CacheMiss("the image_id's cached embedding is of another image", field="image_id")
        elif wants_cached_mask and (logits_key := job.logits_id) is not None:
            try:
                cached_logits = await self.cache.get_low_res_logits(model_id, logits_key)
            except CacheUnavailable:
                cached_logits = None
        if not job.has_mask_input:
            return embedding, None
        # An explicit mask wins over the cached one (Roboflow inference let the cache win: a bug not copied).
        if job.mask_input is not None:
            return embedding, job.mask_input
        if cached_logits is not None and job.use_mask_input_cache:
            return embedding, cached_logits
        raise InvalidInput(
            "has_mask_input is true but no mask_input was sent and none is cached for this image",
            field="mask_input",
        )

    def decode(self, embedding: ImageEmbedding, job: SegmentJob, mask_input: np.ndarray | None) -> DecoderOutput:
        """Validate the prompt against the image size and run the decoder (CPU bound: a worker thread).

        The masks are upsampled to the embedding's original size, so that size is held to the image limits
        here too, whichever path the embedding came by (the ingress checks a client's `orig_im_size` first).
        """
        check_image_size(embedding.original_size, self.limits, field="orig_im_size")
        prompt = _prompt(embedding, job.point_coords, job.point_labels, job.box, mask_input)
        return self.decoder.decode(embedding, prompt, mask_input=mask_input, multimask=job.multimask_output)

    def prompts(self, embedding: ImageEmbedding, job: SegmentJob) -> list[tuple[Prompt, np.ndarray | None]]:
        """Each of the job's `prompts` validated against the image (all before any is decoded); errors name
        the prompt, e.g. `prompts.3.box`."""
        assert job.prompts is not None, "a job with several prompts"
        check_image_size(embedding.original_size, self.limits, field="orig_im_size")
        checked = []
        for index, item in enumerate(job.prompts):
            try:
                prompt = _prompt(embedding, item.point_coords, item.point_labels, item.box, item.mask_input)
            except InvalidInput as exc:
                raise InvalidInput(exc.reason, field=f"prompts.{index}.{exc.field}") from None
            checked.append((prompt, item.mask_input))
        return checked

    def _decode_prompts_and_encode(
        self, embedding: ImageEmbedding, job: SegmentJob
    ) -> tuple[tuple[dict[str, Any] | bytes, str], float, float]:
        """All of a job's prompts in order, each decoded then encoded at once, so that only one prompt's
        full-size masks are held at a time (binary answers keep the bool masks they return)."""
        prompts = self.prompts(embedding, job)
        per_prompt = 3 if job.multimask_output else 1
        height, width = embedding.original_size
        binary = job.format == "binary"
        if binary and len(prompts) * per_prompt * height * width > MAX_BINARY_MASK_BYTES:
            raise ImageTooLarge(
                f"{len(prompts)} prompts x {per_prompt} masks of {width}x{height} are over "
                f"{MAX_BINARY_MASK_BYTES} bytes of bool masks: ask for json, rle or png, or send fewer prompts",
                field="prompts",
            )
        # Binary answers fill these as they go; json ones encode each prompt and keep only its encoding.
        shape = (len(prompts), per_prompt) if binary else (0, 0)
        masks = np.zeros((*shape, height, width), dtype=bool)
        low_res = np.zeros((*shape, *LOW_RES_SHAPE), dtype=np.float32)
        scores = np.zeros(shape, dtype=np.float32)
        results: list[dict[str, Any]] = []
        decode_s = encode_s = 0.0
        for index, (prompt, mask_input) in enumerate(prompts):
            started = time.perf_counter()
            output = self.decoder.decode(embedding, prompt, mask_input=mask_input, multimask=job.multimask_output)
            decoded = time.perf_counter()
            if binary:
                masks[index], low_res[index], scores[index] = output.masks, output.low_res_logits, output.iou_scores
            else:
                encoded, _ = encode_masks(output.masks, output.low_res_logits, output.iou_scores, job.format)
                assert isinstance(encoded, dict), "json formats encode to a dict"
                results.append(encoded)
            decode_s += decoded - started
            encode_s += time.perf_counter() - decoded
        started = time.perf_counter()
        if binary:
            body: tuple[dict[str, Any] | bytes, str] = (
                segment_to_npz(masks, low_res, scores),
                "application/octet-stream",
            )
        else:
            body = {"results": results}, "application/json"
        return body, decode_s, encode_s + time.perf_counter() - started

    async def remember(self, job: SegmentJob, output: DecoderOutput) -> None:
        """Cache the best mask's low-res logits for the next click's `use_mask_input_cache`."""
        key = job.logits_id
        if key is None:
            return
        best = int(np.argmax(output.iou_scores))
        logits = output.low_res_logits[best].reshape(MASK_INPUT_SHAPE)
        try:
            await self.cache.put_low_res_logits(self.identity.model_id, key, logits)
        except CacheUnavailable:
            log.warning(
                "low-res logits not cached: model=%s image=%s",
                self.identity.model_id,
                image_id_hash(key),
            )

    async def segment(self, job: SegmentJob, executor: Executor | None = None) -> SegmentResult:
        """The whole job: inputs from the job or cache, decode, cache the logits, encode the masks.

        With an `executor`, the CPU-bound decode and encoding run there, so the event loop keeps serving
        cache I/O for other requests meanwhile (a single-thread executor also keeps decodes from competing
        for the replica's cores).
        """
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        embedding, mask_input = await self.load_inputs(job)
        loaded = time.perf_counter()
        if job.prompts is not None:
            # Several prompts: one hop to the worker thread for all of them; the cached logits are a
            # single-prompt feature (neither read nor written).
            (body, media_type), decode_s, encode_s = await loop.run_in_executor(
                executor, self._decode_prompts_and_encode, embedding, job
            )
            stored = time.perf_counter()
        else:
            # Decode and encode in one hop to the worker thread: each hop costs a thread wake-up.
            output, (body, media_type), decode_s, encode_s = await loop.run_in_executor(
                executor, self._decode_and_encode, embedding, job, mask_input
            )
            stored = time.perf_counter()
            await self.remember(job, output)
        timings = {
            "load_s": loaded - started,
            "decode_s": decode_s,
            "encode_s": encode_s,
            "store_s": time.perf_counter() - stored,
        }
        return SegmentResult(body=body, media_type=media_type, timings=timings)

    def _decode_and_encode(
        self, embedding: ImageEmbedding, job: SegmentJob, mask_input: np.ndarray | None
    ) -> tuple[DecoderOutput, tuple[dict[str, Any] | bytes, str], float, float]:
        started = time.perf_counter()
        output = self.decode(embedding, job, mask_input)
        decoded = time.perf_counter()
        encoded = encode_masks(output.masks, output.low_res_logits, output.iou_scores, job.format)
        return output, encoded, decoded - started, time.perf_counter() - decoded
