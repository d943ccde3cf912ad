"""The Veo apps' schema: Google's limits in the JSON Schema, refused with the field named, per kind of key."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr

from kinema.apps.registry import VEO_3_1, VEO_3_1_FAST, get_app
from kinema.apps.schema import parse_input
from kinema.apps.veo import VEO_ASPECT_RATIOS
from kinema.domain.sizing import nearest_aspect_ratio
from kinema.errors import AppUnavailable, InvalidInput
from kinema.settings import Settings


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **{"google_api_key": SecretStr("AIza-test"), **values})  # type: ignore[arg-type]


def test_defaults_are_the_contracts_within_googles_limits() -> None:
    validated = parse_input(VEO_3_1_FAST.input_model, {"prompt": "  waves  "})
    assert (validated.prompt, validated.resolution, validated.aspect_ratio) == ("waves", "720p", None)
    assert (validated.duration, validated.generate_audio, validated.seed) == (8.0, False, None)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"aspect_ratio": "1:1"}, "aspect_ratio: Input should be '16:9' or '9:16'"),
        ({"duration": 5}, "duration: Value error, Veo renders 4, 6 or 8 seconds"),
        ({"resolution": "1080p", "duration": 6}, "duration: Value error, Veo renders 1080p only as 8-second"),
        ({"resolution": "4K", "duration": 4}, "duration: Value error, Veo renders 4K only as 8-second"),
        ({"fps": 30}, "fps: unknown field"),
    ],
)
def test_what_google_does_not_render_names_the_field(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(")):
        parse_input(VEO_3_1.input_model, {"prompt": "x", **raw})


def test_the_json_schema_states_the_limits() -> None:
    schema = VEO_3_1_FAST.input_schema()
    props = schema["properties"]
    assert props["aspect_ratio"]["anyOf"][0]["enum"] == ["16:9", "9:16"]
    assert props["duration"]["enum"] == [4, 6, 8] and props["duration"]["default"] == 8.0
    (rule,) = schema["allOf"]
    assert rule["if"]["properties"]["resolution"]["enum"] == ["1080p", "4K"]
    assert rule["then"]["properties"]["duration"] == {"const": 8}


def test_a_seed_needs_a_vertex_key() -> None:
    validated = parse_input(VEO_3_1_FAST.input_model, {"prompt": "x", "seed": 5})
    with pytest.raises(InvalidInput, match="seed: Google's Gemini API takes no seed"):
        VEO_3_1_FAST.check_input(validated, settings())
    VEO_3_1_FAST.check_input(validated, settings(google_vertexai=True))


def test_availability_and_description_depend_on_the_key() -> None:
    keyless = settings(google_api_key=None)
    assert not VEO_3_1_FAST.availability(keyless).available
    with pytest.raises(AppUnavailable):
        VEO_3_1_FAST.check_input(parse_input(VEO_3_1_FAST.input_model, {"prompt": "x"}), keyless)
    assert get_app("kinema/tiny").availability(keyless).available
    described = VEO_3_1.describe(settings(google_vertexai=True, google_models={"google/veo-3-1": "veo-x"}))
    assert described["available"] and described["engine"] == "remote" and described["weights"] is None
    assert described["provider"] == {"name": "google", "api": "vertex", "model": "veo-x"}
    assert VEO_3_1.describe(settings())["provider"]["model"] == "veo-3.1-generate-preview"


@pytest.mark.parametrize(
    ("size", "aspect"), [((1000, 1000), "16:9"), ((900, 1000), "9:16"), ((4000, 3000), "16:9")]
)
def test_an_images_shape_picks_the_nearer_of_googles_two_ratios(size: tuple[int, int], aspect: str) -> None:
    assert nearest_aspect_ratio(*size, VEO_ASPECT_RATIOS) == aspect
