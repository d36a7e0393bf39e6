"""Which of the served models a request names: its `model` field, else Roboflow inference's `sam_version_id`, else the
default (the first of `Settings.served_models`)."""

from __future__ import annotations

from collections.abc import Sequence

from sam_core.errors import ConfigurationError, UnknownModel
from sam_core.model.registry import architecture
from sam_core.settings import ModelSpec, Settings


def check_served_models(settings: Settings) -> None:
    """Every `models` entry's type is one we know (at deploy time, naming the entry; the single model's type, and
    every checkpoint, are checked when a replica loads it)."""
    for index, spec in enumerate(settings.models):
        try:
            architecture(spec.model_type)
        except UnknownModel as exc:
            where = f"models.{index}.model_type"
            raise ConfigurationError(f"invalid sam-serve settings: {where}: {exc.reason}", field=where) from None


def resolve_model(served: Sequence[ModelSpec], model: str | None, sam_version_id: str | None) -> ModelSpec:
    """The served model a request asks for, or UnknownModel (404) naming the field and what is served.

    `model` names a served id. Roboflow inference's `sam_version_id` names a model type (vit_h): it picks the served id
    equal to it, else the first served model of that type, so a Roboflow client that sends `vit_h` to a service
    serving one vit_h keeps working whatever its id.
    """
    if model:
        found = next((spec for spec in served if spec.id == model), None)
        if found is None:
            raise UnknownModel(f"no served model {model!r}; served: {_ids(served)}", field="model")
        return found
    if sam_version_id:
        by_id = next((spec for spec in served if spec.id == sam_version_id), None)
        by_type = next((spec for spec in served if spec.model_type == sam_version_id), None)
        if by_id is None and by_type is None:
            raise UnknownModel(f"this service serves {_ids(served)}, not {sam_version_id!r}", field="sam_version_id")
        return by_id or by_type  # type: ignore[return-value]
    return served[0]


def _ids(served: Sequence[ModelSpec]) -> str:
    return ", ".join(repr(spec.id) for spec in served)
