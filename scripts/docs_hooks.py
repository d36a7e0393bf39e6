"""MkDocs hooks (mkdocs.yml `hooks:`): the pages made from the code, so the site cannot drift from it.

- `docs/openapi.json` is written from the ingress's own app (`deployments.api.openapi_document`) before the
  build; the HTTP API reference page renders it with neoteroi-mkdocs (`[OAD(...)]`), offline.
- `<!-- settings-reference -->` in a page becomes the table of every `Settings` field: its environment
  variable, type, default and meaning, read from the settings model (its `description`s are the one source).
"""

from __future__ import annotations

import json
import re
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from deployments.api import openapi_document
from sam_core.settings import ModelSpec, Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
SETTINGS_MARKER = "<!-- settings-reference -->"
OPENAPI_FILE = REPO_ROOT / "docs" / "openapi.json"


def on_config(config: Any) -> Any:
    """Write the OpenAPI document the API reference page renders (git ignores it: it is made each build)."""
    OPENAPI_FILE.write_text(json.dumps(openapi_document(), indent=1, sort_keys=True) + "\n")
    return config


def on_page_markdown(markdown: str, **_: Any) -> str:
    if SETTINGS_MARKER not in markdown:
        return markdown
    tables = [
        "| setting and its environment variable | type | default | meaning |",
        "|---|---|---|---|",
        *settings_rows(Settings, env_prefix="SAM_"),
        "",
        "Each entry of `models` (`SAM_MODELS` as a JSON list of these objects):",
        "",
        "| field | type | default | meaning |",
        "|---|---|---|---|",
        *_model_rows(ModelSpec),
    ]
    return markdown.replace(SETTINGS_MARKER, "\n".join(tables))


def settings_rows(model: type[BaseSettings], env_prefix: str, path: str = "") -> list[str]:
    """One table row a field; a nested settings model (`images`) gives its fields under its own prefix."""
    rows = []
    for name, field in model.model_fields.items():
        nested = _nested_settings(field)
        if nested is not None:
            prefix = str(nested.model_config.get("env_prefix", ""))
            rows += settings_rows(nested, prefix, path=f"{path}{name}.")
            continue
        cells = [f"`{path}{name}`<br>`{env_prefix}{name.upper()}`", _type(field), _default(field), _meaning(field)]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _model_rows(model: type[BaseModel]) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        cells = [f"`{name}`", _type(field), _default(field), _meaning(field)]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _nested_settings(field: FieldInfo) -> type[BaseSettings] | None:
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseSettings):
        return annotation
    return None


def _type(field: FieldInfo) -> str:
    text = _annotation(field.annotation)
    bounds = [
        f"{symbol} {getattr(item, attr)}"
        for item in field.metadata
        for attr, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
        if getattr(item, attr, None) is not None
    ]
    return f"`{text}`" + (f" ({', '.join(bounds)})" if bounds else "")


def _annotation(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_annotation(arg) for arg in args)
    if origin is typing.Literal:
        return " | ".join(json.dumps(arg) for arg in args)
    if origin is typing.Annotated:
        return _annotation(args[0])
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_annotation(arg) for arg in args)}]"
    if annotation is Ellipsis:
        return "..."
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, Path):
        return f"`{_shown_path(value)}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int) and value >= 1024**2 and value % 1024**2 == 0:
        return f"`{value}` ({_binary_size(value)})"
    if isinstance(value, (tuple, list, dict)):
        return f"`{json.dumps(list(value) if isinstance(value, tuple) else value)}`"
    return f"`{value}`"


def _shown_path(path: Path) -> str:
    """A default path as a reader's machine has it: under their home, or in their checkout."""
    if path.is_relative_to(REPO_ROOT):
        return f"<checkout>/{path.relative_to(REPO_ROOT).as_posix()}"
    if path.is_relative_to(Path.home()):
        return f"~/{path.relative_to(Path.home()).as_posix()}"
    return path.as_posix()


def _binary_size(value: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2)):
        if value % size == 0:
            return f"{value // size} {unit}"
    return f"{value} B"


def _meaning(field: FieldInfo) -> str:
    text = field.description or ""
    return re.sub(r"\s+", " ", text).replace("|", "\\|")
