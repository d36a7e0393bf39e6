"""Specification of where settings come from: application args under `SAM_*` variables, command-line flags over
them, and the flags themselves derived from the settings model."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from deployments.app import load_settings
from sam_cli.arguments import MODEL_FLAGS, add_setting_flags, setting_flags, settings_from
from sam_cli.main import build_parser
from sam_core.errors import ConfigurationError
from sam_core.settings import Settings


def test_application_args_are_overridden_by_their_sam_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAM_MODEL_TYPE", "vit_b")
    monkeypatch.setenv("SAM_CACHE_TTL_S", "77")

    settings = load_settings({"model_type": "vit_tiny", "cache_ttl_s": 5, "memory_cache_bytes": 1234})

    assert (settings.model_type, settings.cache_ttl_s) == ("vit_b", 77)
    assert settings.memory_cache_bytes == 1234, "an arg no variable names is kept"


def test_image_limits_in_application_args_are_overridden_by_sam_image_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SAM_IMAGE_MAX_SIDE", "999")

    settings = load_settings({"images": {"max_side": 100, "max_bytes": 4096}})

    assert settings.images.max_side == 999
    assert settings.images.max_bytes == 4096


def test_image_limits_come_from_the_environment_when_the_args_have_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAM_IMAGE_ALLOW_URL", "true")

    assert load_settings({}).images.allow_url is True


def test_a_bad_nested_limit_in_the_args_names_its_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAM_IMAGE_MAX_SIDE", raising=False)

    with pytest.raises(ConfigurationError, match=r"images.*max_side"):
        load_settings({"images": {"max_side": -1}})


def test_a_bad_sam_variable_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAM_CACHE_TTL_S", "-3")

    with pytest.raises(ConfigurationError, match="cache_ttl_s"):
        load_settings({"cache_ttl_s": 5})


def test_command_line_flags_win_over_sam_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SAM_MODEL_TYPE", "vit_b")
    monkeypatch.setenv("SAM_DEVICE", "cuda")
    args = build_parser().parse_args(["download", "--model-type", "vit_tiny", "--cache-dir", str(tmp_path)])

    settings = settings_from(args)

    assert settings.model_type == "vit_tiny"
    assert settings.cache_dir == tmp_path
    assert settings.device == "cuda", "a flag not given leaves the variable in force"


def test_model_flags_are_derived_from_the_settings_fields() -> None:
    parser = argparse.ArgumentParser()
    add_setting_flags(parser, *MODEL_FLAGS)

    for name in MODEL_FLAGS:
        action = next(a for a in parser._actions if a.dest == name)
        assert action.option_strings == [f"--{name.replace('_', '-')}"]
        assert f"SAM_{name.upper()}" in (action.help or "")
        assert (Settings.model_fields[name].description or "") in (action.help or "")
    assert next(a for a in parser._actions if a.dest == "cache_dir").type is Path


def test_a_literal_field_becomes_a_choice_and_a_bool_a_switch_with_its_alias() -> None:
    parser = argparse.ArgumentParser()
    add_setting_flags(parser, "encoder_dtype", "decoder_quantize", aliases={"decoder_quantize": "--quantize"})

    args = parser.parse_args(["--encoder-dtype", "bfloat16", "--quantize"])

    assert setting_flags(args) == {"encoder_dtype": "bfloat16", "decoder_quantize": True}
    assert setting_flags(parser.parse_args([])) == {}
    with pytest.raises(SystemExit):
        parser.parse_args(["--encoder-dtype", "float8"])
