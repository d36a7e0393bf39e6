"""`web/ui/sam.js` in a real headless Chromium, against the service's own Python: the page's upscaling of the
low-res graph's logits is `sam_core.model.decoder.upscale_logits`'s."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pytest

from sam_core.model.decoder import upscale_logits
from tests.conftest import ServeApp

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("size", [(180, 260), (1500, 1001), (333, 1024)])
def test_the_page_upscales_logits_as_the_service_does(page: Any, serve_app: ServeApp, size: tuple[int, int]) -> None:
    """The page's `upscaleMask` (JS) against `upscale_logits` (OpenCV) on smooth random 256x256 logits: the mask
    the page draws from the low-res graph is the service's but for pixels whose logits round across 0."""
    height, width = size
    rng = np.random.default_rng()
    coarse = rng.normal(size=(16, 16)).astype(np.float32)
    logits = cv2.resize(coarse, (256, 256), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 0.05, (256, 256))
    logits = logits.astype(np.float32)
    expected = upscale_logits(logits[None], size)[0] > 0
    page.goto(serve_app.url + "/")
    bits = page.evaluate(
        """async ([values, height, width]) => {
          const sam = await import("./sam.js");
          const mask = sam.upscaleMask(new Float32Array(values), height, width);
          let bits = "";
          for (let i = 0; i < mask.length; i++) bits += mask[i] ? "1" : "0";
          return bits;
        }""",
        [logits.ravel().tolist(), height, width],
    )
    drawn = np.frombuffer(bits.encode(), dtype=np.uint8).reshape(height, width) == ord("1")
    assert 0.2 < expected.mean() < 0.8  # both sides of 0: the test sees the boundaries
    differ = int((drawn != expected).sum())
    print(f"page upscaling {width}x{height}: {differ} of {drawn.size} pixels differ from the service's")
    assert differ <= 1e-4 * drawn.size, f"{differ} of {drawn.size} pixels differ"
