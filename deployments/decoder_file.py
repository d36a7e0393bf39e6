"""`GET /sam/decoder.onnx`: the served model's exported decoder graph, for clients that decode clicks themselves
(onnxruntime-web in a browser: the service embeds each image once, and a click then costs no round trip).

The ingress asks a decoder replica for the file once per variant and keeps it (a few MB: 16 MB for vit_h). The
answer names the model it belongs to (`X-Model-Id`, `X-Model-Sha256`: a graph decodes only its own model's
embeddings) and carries an `ETag` of its own sha256, with `Cache-Control: no-cache`: a client keeps the file and
revalidates it on each use (a 304 without a body), so a model change is never served stale.

Two kinds of each variant: the full graph (inputs with `orig_im_size`, outputs `masks` at the image's size) and,
with `low_res=true`, the graph the service itself runs (outputs `iou_predictions` and `low_res_masks` only): a
client that upscales its logits as `sam_core.model.decoder.upscale_logits` does (bilinear to the padded 1024
frame, the padding cropped, bilinear to the image's size) gets the service's answer; the full graph's own
upscaling differs from it in a handful of pixels of millions.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from deployments.model_routing import ModelRouting
from sam_core.model.decoder import DecoderGraph

ONNX_MEDIA_TYPE = "application/octet-stream"


class DecoderFiles:
    """The ingress's copy of each model's decoder graphs, fetched from a decoder replica on first request."""

    def __init__(self, models: ModelRouting) -> None:
        self.models = models
        self._graphs: dict[tuple[str, bool, bool], DecoderGraph] = {}
        self._lock = asyncio.Lock()

    async def graph(self, model: str, *, multimask: bool, low_res: bool) -> DecoderGraph:
        async with self._lock:  # one fetch per variant, however many clients ask at once
            if (model, multimask, low_res) not in self._graphs:
                graph = await self.models.decoder(model, None).graph.remote(multimask, low_res)
                self._graphs[model, multimask, low_res] = graph
            return self._graphs[model, multimask, low_res]

    async def response(self, request: Request, model: str, *, multimask: bool, low_res: bool = False) -> Response:
        graph = await self.graph(model, multimask=multimask, low_res=low_res)
        etag = f'"{graph.sha256}"'
        headers: dict[str, Any] = {
            "ETag": etag,
            "Cache-Control": "no-cache",
            "X-Model-Id": graph.model_id,
            "X-Model-Sha256": graph.checkpoint_sha256,
            "X-Decoder-Variant": ("multi" if multimask else "single") + ("-lowres" if low_res else ""),
            "Content-Disposition": f'attachment; filename="{graph.filename}"',
        }
        if etag in entity_tags(request.headers.get("if-none-match", "")):
            return Response(status_code=304, headers=headers)
        return Response(content=graph.data, media_type=ONNX_MEDIA_TYPE, headers=headers)


def entity_tags(header: str) -> set[str]:
    """The entity tags of an If-None-Match header (weak ones compare by their opaque part, as RFC 9110 says)."""
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}
