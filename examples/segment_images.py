"""batch_segment.py's Ray Data stage: an actor that embeds each image of a batch once through the app's ingress
handle, then segments its boxes by the cache key the embed call answered with, into COCO annotations."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pycocotools.mask as coco_mask
from box_prompts import Failure

from sam_core.errors import CacheMiss, SamServeError, error_name, error_reason
from sam_core.wire.schemas import EmbedImageRequest, ImagePayload, SegmentImageRequest

PROMPTS_PER_REQUEST = 32
"""Boxes of one image sent in one `segment` call (`prompts`): the per-request cost is paid once for them, and
an image with many boxes still spreads over the decoder replicas as several calls."""


@dataclass
class ImageRecord:
    """What the actor returns for one image: its size and annotations (without COCO ids) and its failures."""

    path: str
    image_key: str | None = None
    height: int | None = None
    width: int | None = None
    embedded: bool = False
    annotations: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)


class SegmentImages:
    """The `map_batches` callable: embeds each image of a batch once, then segments its boxes by cache key.

    Constructed once per actor, so the handle lookup (a round trip to the Serve controller) happens once.
    """

    def __init__(self, app_name: str, prompts_by_path: Mapping[str, list[dict[str, Any]]]) -> None:
        from ray import serve

        self.ingress = serve.get_app_handle(app_name)
        self.prompts_by_path = prompts_by_path

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        paths = [str(p) for p in batch["path"]]
        payloads = [
            ImagePayload(type="base64", value=base64.b64encode(bytes(b)).decode("ascii")) for b in batch["bytes"]
        ]
        records = [ImageRecord(path=p) for p in paths]
        # All embeds of the batch go out before any answer is awaited, so the encoder can batch them.
        pending = [self.ingress.embed.remote(EmbedImageRequest(image=payload)) for payload in payloads]
        for record, response in zip(records, pending, strict=True):
            try:
                embedded = response.result().response
            except SamServeError as exc:
                for prompt in self.prompts_by_path[record.path]:
                    record.failures.append(self._failure(prompt, error_name(exc), error_reason(exc)))
                continue
            record.image_key = embedded.image_id
            record.height, record.width = embedded.original_size
            record.embedded = not embedded.cached
        self._segment_boxes([(r, p) for r, p in zip(records, payloads, strict=True) if r.image_key is not None])
        return {"record": [json.dumps(asdict(record)) for record in records]}

    def _segment_boxes(self, images: list[tuple[ImageRecord, ImagePayload]]) -> None:
        """Every box of these images, `PROMPTS_PER_REQUEST` boxes a request, all requests in flight at once."""
        jobs = [
            (record, payload, prompts[start : start + PROMPTS_PER_REQUEST])
            for record, payload in images
            for prompts in [self.prompts_by_path[record.path]]
            for start in range(0, len(prompts), PROMPTS_PER_REQUEST)
        ]
        in_flight = [(*job, self._submit(job[0], job[2], image=None)) for job in jobs]
        for entry in in_flight:
            self._collect(*entry)

    def _submit(self, record: ImageRecord, prompts: list[dict[str, Any]], image: ImagePayload | None) -> Any:
        request = SegmentImageRequest(
            image=image, image_id=record.image_key, prompts=[{"box": p["box"]} for p in prompts], format="rle"
        )
        return self.ingress.segment.remote(request)

    def _collect(
        self, record: ImageRecord, payload: ImagePayload, prompts: list[dict[str, Any]], response: Any
    ) -> None:
        """Annotations from one request's answers. A box the app refuses (`prompts.N...`) is reported and the
        others are sent again without it; an embedding evicted meanwhile is sent again with the image."""
        image = None
        while prompts:
            try:
                try:
                    body = response.result().body
                except CacheMiss:  # evicted since the embed call: send the image (embedded again, same key)
                    image = payload
                    body = self._submit(record, prompts, image=image).result().body
            except SamServeError as exc:
                refused = _refused_prompt(exc, len(prompts))
                if refused is None:
                    record.failures.extend(self._failure(p, error_name(exc), error_reason(exc)) for p in prompts)
                    return
                record.failures.append(self._failure(prompts[refused], error_name(exc), error_reason(exc)))
                prompts = prompts[:refused] + prompts[refused + 1 :]
                response = self._submit(record, prompts, image=image) if prompts else None
                continue
            for prompt, result in zip(prompts, body["results"], strict=True):
                record.annotations.append(_annotation(prompt, result))
            return

    @staticmethod
    def _failure(prompt: Mapping[str, Any], error: str, reason: str) -> dict[str, Any]:
        return asdict(Failure(prompt["row"], prompt["image"], error, reason))


def _refused_prompt(exc: SamServeError, count: int) -> int | None:
    """The index N of a refusal naming `prompts.N...` (a box the app refuses), else None (the whole request)."""
    parts = (exc.field or "").split(".")
    if len(parts) >= 2 and parts[0] == "prompts" and parts[1].isdigit() and int(parts[1]) < count:
        return int(parts[1])
    return None


def _annotation(prompt: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, Any]:
    """A COCO annotation from one prompt's rle answer (its first mask)."""
    rle = result["masks"][0]
    counts = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    x, y, w, h = (float(v) for v in coco_mask.toBbox(counts))
    return {
        "row": prompt["row"],
        "category": prompt["category"],
        "segmentation": rle,
        "area": int(coco_mask.area(counts)),
        "bbox": [x, y, w, h],
        "prompt_box": prompt["box"],
        "score": float(result["scores"][0]),
        "iscrowd": 0,
    }
