"""Every code block marked `<!-- runnable -->` in README.md and docs/ runs, as written, against the real app (a
tiny model, real Redis, real HTTP), from a folder holding a real-size `photo.jpg` already embedded as `photo-1`:
the examples cannot drift from the service."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import orjson
import pytest

from sam_core.client import SamClient
from tests.conftest import ServeApp, photo_jpeg

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNNABLE = re.compile(r"^<!-- runnable -->\n+```(\w+)\n(.*?)^```", flags=re.DOTALL | re.MULTILINE)
EXAMPLE_HOSTS = ("localhost:8000", "127.0.0.1:8000")
PHOTO_SIZE = (1600, 2400)


class Example(NamedTuple):
    source: str  # the file, relative to the repository
    language: str
    code: str

    @property
    def name(self) -> str:
        return f"{self.source}:{self.code.splitlines()[0][:40]}"


def runnable_examples() -> list[Example]:
    sources = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    return [
        Example(path.relative_to(REPO_ROOT).as_posix(), language, code)
        for path in sources
        for language, code in RUNNABLE.findall(path.read_text())
    ]


EXAMPLES = runnable_examples()


def test_the_readme_and_the_docs_hold_runnable_examples() -> None:
    """Not vacuous: the two first-mask examples of the README and the API's are collected, each in a language
    this suite runs."""
    assert sum(e.source == "README.md" for e in EXAMPLES) >= 2
    assert len(EXAMPLES) >= 5
    assert {e.language for e in EXAMPLES} <= {"bash", "python"}
    sources = [REPO_ROOT / "README.md", *(REPO_ROOT / "docs").glob("*.md")]
    marked = sum(len(re.findall(r"^<!-- runnable -->$", path.read_text(), flags=re.MULTILINE)) for path in sources)
    assert marked == len(EXAMPLES)  # a marker not followed by a fence would be skipped silently


@pytest.fixture
def photo_folder(serve_app: ServeApp, tmp_path: Path) -> Path:
    """A folder with a 1-5 MB `photo.jpg`, as users send, its embedding cached under `photo-1`."""
    photo = photo_jpeg(np.random.default_rng(), PHOTO_SIZE)
    assert 1_000_000 <= len(photo) <= 5_000_000, len(photo)
    (tmp_path / "photo.jpg").write_bytes(photo)
    with SamClient(serve_app.url, timeout=120) as sam:
        sam.embed_image(tmp_path / "photo.jpg", image_id="photo-1")
    return tmp_path


def as_run_here(example: Example, url: str) -> str:
    code = example.code
    for host in EXAMPLE_HOSTS:
        code = code.replace(host, url.removeprefix("http://"))
    if example.language == "bash":
        code = code.replace("curl -s ", "curl -sS --fail-with-body ")  # an HTTP error fails the example
    return code


def run(example: Example, url: str, folder: Path) -> subprocess.CompletedProcess[str]:
    code = as_run_here(example, url)
    command = ["bash", "-euo", "pipefail", "-c", code] if example.language == "bash" else [sys.executable, "-c", code]
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_the_example_runs_as_written(example: Example, serve_app: ServeApp, photo_folder: Path) -> None:
    done = run(example, serve_app.url, photo_folder)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            assert "error" not in orjson.loads(line), line


def test_the_readmes_curl_example_answers_for_the_photo_it_sent(serve_app: ServeApp, photo_folder: Path) -> None:
    (example,) = [e for e in EXAMPLES if e.source == "README.md" and e.language == "bash" and "embed_image" in e.code]
    done = run(example, serve_app.url, photo_folder)

    assert done.returncode == 0, done.stderr
    embed_line, segment_line = done.stdout.strip().splitlines()
    assert orjson.loads(embed_line)["original_size"] == list(PHOTO_SIZE)
    segment = orjson.loads(segment_line)
    assert len(segment["masks"]) == 1
    assert segment["image_id"] == "photo-1"
