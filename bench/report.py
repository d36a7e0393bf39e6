"""The benchmark report: every ratio the performance issue asks for, each against its reference measured in
the same run on the same machine.

Starts its own redis-server, a local Ray cluster and the three-deployment app (random-weight SAM: the decoder
is the real SAM mask decoder and vit_b's encoder is the real ViT-B, so their costs are real; masks are not),
then measures, alternating each measurement with its reference where both are timings:

  1. follow-up click over HTTP (keep-alive, cached embedding, one point, json polygons) vs one bare
     in-process ONNX decoder call with the same threads;
  2. follow-up throughput, 2 decoder replicas under 8 concurrent HTTP clients, vs the bare decoder's best
     throughput here (the better of one 2-thread session and two 1-thread sessions side by side);
  3. cold request (new JPEG image over HTTP) vs `SamPredictor.set_image` + `predict` in this process, for
     vit_tiny and (unless --quick) vit_b;
  4. encoder images/s, a batch vs one image at a time, on the device at hand;
  5. output encodings of a 1500x2250 mask and of a 1x256x64x64 embedding vs the seed's formats;
  6. Redis bytes per cached image vs a float32 embedding;
  7. encoder runs per 20-click session over 2 decoder replicas vs a per-process cache with 2 workers;
  8. 50 boxes on one image as one request (`prompts`) vs 50 single requests and vs a bare decode loop;
  9. segment everything over HTTP vs SamAutomaticMaskGenerator in process (8 and 32 points per side);
 10. single flight: encoder runs and wall time of 8 concurrent cold requests of one image, 2 ingress replicas;
 11. decoder routing: local-copy hits, Redis bytes per click, copies and RSS per replica, click p50/p99, with
     image-keyed consistent hashing vs Ray Serve's default router (3 replicas, 12 images x 20 clicks);
 12. memory per replica: a decoder's RSS with its local copies full, the encoder's after 100 mixed images;
 13. the click path at nice 0 vs Ray's 15, two apps side by side, quiet and beside a busy process;
 14. Ray Serve's access log off vs on, two apps side by side;
 15. the decoder's ONNX Runtime threads spinning vs not, two apps side by side;
 16. the labelling page: click-to-overlay in Chromium, decoded in the page vs by the server;
 17. Label Studio: a second annotator's first click on an embedded image vs the first's, and 4 annotators' clicks/s;
 18. warm-up: `sam-serve warm` over a folder vs embedding one image at a time, the rerun, the batch sizes seen;
 19. several models: clicks alternating two served models vs one; a vit_b model switch (encoder, decoder), RSS;
 20. the decoder's low-res graph with the returned masks upscaled outside ONNX vs the full graph (lowres).
 21. many prompts in one ONNX run: B boxes a run of a low-res graph with a batch axis vs one a run (batch);
 22. Ray Serve's user code and router on the replica's one loop vs in their own threads, two apps (loops).

Run: .venv/bin/python bench/report.py [--quick] [--json report.json]   (~15 min here; --quick ~4 min)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cache_runs import encoder_runs, redis_bytes
from clicks import follow_up_latency, follow_up_throughput
from everything import everything
from flight import single_flight
from harness import Report, local_bench
from labelstudio import labelstudio_clicks
from memory import memory
from model_runs import cold_request, decoder_options, encoder_batching, encodings, low_res_graph
from models import several_models
from page import page_clicks
from prompt_batch import prompt_batch
from prompts import many_boxes
from routing import routing
from side_by_side import access_log, niceness, serve_loops, spinning
from warm import warm_up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="skip vit_b (cold request and encoder batching)")
    parser.add_argument("--clicks", type=int, default=40, help="follow-up clicks each side")
    parser.add_argument("--seconds", type=float, default=10.0, help="throughput window each side")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument(
        "--only",
        type=lambda text: set(text.split(",")),
        help="comma-separated sections: latency,throughput,session,redis,cold,decoder,encoder,encodings,prompts,"
        "everything,flight,routing,memory,niceness,access_log,spinning,page,labelstudio,warm,models,lowres",
    )
    args = parser.parse_args()

    import ray
    import torch

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    started = time.perf_counter()
    report = Report()
    print(
        f"sam-serve benchmark {time.strftime('%Y-%m-%d')}: {threads} CPUs, torch {torch.__version__}, "
        f"ray {ray.__version__}, cuda {'yes' if torch.cuda.is_available() else 'no'}",
        flush=True,
    )
    with local_bench() as bench:
        sections: list[tuple[str, Callable[[], None]]] = [
            ("latency", lambda: follow_up_latency(bench, report, args.clicks, threads=2)),
            ("throughput", lambda: follow_up_throughput(bench, report, args.seconds)),
            ("session", lambda: encoder_runs(bench, report, clicks=20)),
            ("redis", lambda: redis_bytes(bench, report)),
            ("cold", lambda: cold_request(bench, report, "vit_tiny", repeats=5)),
            ("decoder", lambda: decoder_options(bench, report, clicks=20)),
            ("lowres", lambda: low_res_graph(bench, report, clicks=30)),
            ("batch", lambda: prompt_batch(bench, report)),
            ("encoder", lambda: encoder_batching(bench, report, "vit_tiny", batch=4, repeats=3)),
            ("cold", lambda: None if args.quick else cold_request(bench, report, "vit_b", repeats=2)),
            (
                "encoder",
                lambda: None if args.quick else encoder_batching(bench, report, "vit_b", batch=2, repeats=1),
            ),
            ("encodings", lambda: encodings(report, repeats=5)),
            ("prompts", lambda: many_boxes(bench, report, boxes=50, repeats=3)),
            ("everything", lambda: everything(bench, report, ((8, 2),) if args.quick else ((8, 2), (32, 1)))),
            ("flight", lambda: single_flight(bench, report)),
            ("routing", lambda: routing(bench, report)),
            ("memory", lambda: memory(bench, report)),
            ("niceness", lambda: niceness(bench, report)),
            ("access_log", lambda: access_log(bench, report)),
            ("spinning", lambda: spinning(bench, report)),
            ("loops", lambda: serve_loops(bench, report)),
            ("page", lambda: page_clicks(bench, report)),
            ("labelstudio", lambda: labelstudio_clicks(bench, report)),
            ("warm", lambda: warm_up(bench, report)),
            ("models", lambda: several_models(bench, report)),
        ]
        for name, section in sections:
            if not args.only or name in args.only:
                section()
    report.print_table()
    print(f"\nbenchmark took {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([asdict(row) for row in report.rows], indent=2))


if __name__ == "__main__":
    main()
