"""Warm a running sam-serve app's shared cache for a dataset from Python (what `sam-serve warm` does).

    python examples/warm_dataset.py DATA_DIR_OR_GLOB_OR_MANIFEST [--address ray://... | auto] [--app sam]

`list_sources` expands a folder (its image files, recursively), a glob or a manifest (one path or URL a line);
`warm` runs the Ray Data job on the cluster this driver is connected to and returns the summary: images/s, how
many were embedded and how many were already cached (skipped: a rerun resumes), the failures with their reasons,
and the bytes added to the cache. The first click on any warmed image then costs one decoder call.
"""

from __future__ import annotations

import argparse

import ray

from sam_cli.warm import list_sources, warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source")
    parser.add_argument("--address", default="auto", help="the Ray cluster the app runs on")
    parser.add_argument("--app", default="sam")
    args = parser.parse_args()

    ray.init(address=args.address, log_to_driver=False)
    summary = warm(list_sources(args.source), app_name=args.app, concurrency=2, batch_size=4)
    print(f"{summary.embedded} embedded, {summary.skipped} already cached, {summary.images_per_s:.2f} images/s")
    for source, reason in summary.failed:
        print(f"failed: {source}: {reason}")


if __name__ == "__main__":
    main()
