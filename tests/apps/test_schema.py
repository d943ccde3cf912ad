from __future__ import annotations

import pytest

from kinema.apps.registry import LTX2_FAST, TINY, get_app, list_apps
from kinema.apps.schema import parse_input
from kinema.errors import AppNotFound, InvalidInput


def test_defaults_follow_the_contract() -> None:
    parsed = parse_input(LTX2_FAST.input_model, {"prompt": "  clouds  "})
    assert parsed.prompt == "clouds"
    assert parsed.resolution == "720p"
    assert parsed.aspect_ratio is None
    assert parsed.generate_audio is False
    assert parsed.duration == 5.0
    assert parsed.seed is None


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"prompt": "x", "colour": "red"}, "colour: unknown field"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * 4001}, "prompt"),
        ({}, "prompt: Field required"),
        ({"prompt": "x", "resolution": "8K"}, "resolution"),
        ({"prompt": "x", "aspect_ratio": "4:3"}, "aspect_ratio"),
        ({"prompt": "x", "generate_audio": "yes"}, "generate_audio"),
        ({"prompt": "x", "duration": 25}, "duration"),
        ({"prompt": "x", "duration": 0.5}, "duration"),
        ({"prompt": "x", "duration": "five"}, "duration"),
        ({"prompt": "x", "seed": -1}, "seed"),
        ({"prompt": 5}, "prompt"),
    ],
)
def test_bad_input_names_the_field(raw: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_input(LTX2_FAST.input_model, raw)
    assert field in info.value.message
    assert info.value.status == 422


def test_non_object_input_is_refused() -> None:
    with pytest.raises(InvalidInput, match="JSON object"):
        parse_input(LTX2_FAST.input_model, ["prompt"])


def test_json_schema_publishes_fields_and_bounds() -> None:
    schema = LTX2_FAST.input_schema()
    assert schema["required"] == ["prompt"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["duration"]["maximum"] == 20.0
    assert set(schema["properties"]) == {
        "prompt",
        "image",
        "resolution",
        "aspect_ratio",
        "generate_audio",
        "duration",
        "negative_prompt",
        "seed",
    }
    assert TINY.input_schema()["properties"]["duration"]["minimum"] == 0.1


def test_registry_lists_default_first_and_rejects_unknown() -> None:
    ids = [a.id for a in list_apps()]
    assert ids[0] == "lightricks/ltx-2-fast"
    assert {"lightricks/ltx-2", "kinema/tiny"} <= set(ids)
    with pytest.raises(AppNotFound, match="known apps"):
        get_app("nobody/nothing")
