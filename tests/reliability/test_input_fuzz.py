"""Property-based fuzzing of the apps' input models (hypothesis).

Any JSON-like value either validates into an input that keeps every documented rule (and its published
JSON Schema), or is refused with pydantic's ValidationError (InvalidInput through parse_input); nothing else
is ever raised. Valid inputs built from the rules are accepted and round-trip through JSON unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from kinema.apps.registry import App, list_apps
from kinema.apps.schema import VideoInput, input_model_for, parse_input
from kinema.apps.veo import FULL_LENGTH_ONLY, VEO_DURATIONS, VeoInput
from kinema.errors import InvalidInput

APPS = {a.id: a for a in list_apps()}
FIELDS = tuple(VideoInput.model_fields)
FUZZ = settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# JSON values of every shape, plus the Python-only floats a caller might pass in (inf, nan) and huge ints.
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
# Values near what the fields take, so validation gets past the first field often.
plausible = (
    st.sampled_from(["720p", "1080p", "4K", "8K", "720P", "16:9", "9:16", "1:1", "4:3", "", " ", "\x00"])
    | st.sampled_from([0, 0.1, 1, 4, 5, 6, 8, 20, 20.0001, -1, 2**32 - 1, 2**32, True, False, "1", "7", "8"])
    | st.floats(min_value=-1, max_value=25)
    | st.text(min_size=3990, max_size=4010, alphabet=" ab")
    | json_values
)
field_names = st.sampled_from(FIELDS) | st.text(max_size=12)
input_objects = st.dictionaries(field_names, plausible, max_size=len(FIELDS) + 1)


def trimmed(text: str) -> bool:
    """No Unicode White_Space at either end: what pydantic's strip_whitespace removes (Rust's trim).

    Python's isspace() also counts the separators U+001C..U+001F, which are not White_Space.
    """
    return not any(c.isspace() and c not in "\x1c\x1d\x1e\x1f" for c in (text[:1], text[-1:]) if c)


def duration_rule(app: App) -> dict[str, Any]:
    return dict(app.input_model.model_json_schema()["properties"]["duration"])


def assert_keeps_the_rules(app: App, raw: dict[str, Any], accepted: VideoInput) -> None:
    """What the README and the published schema promise about an accepted input."""
    assert set(raw) <= set(FIELDS), "unknown fields are refused"
    assert 1 <= len(accepted.prompt) <= 4000 and trimmed(accepted.prompt)
    assert any(c.isprintable() and not c.isspace() for c in accepted.prompt)  # something visible
    assert accepted.resolution in ("720p", "1080p", "4K")
    assert accepted.aspect_ratio is None or accepted.aspect_ratio in app.aspect_ratios
    assert type(raw.get("generate_audio", False)) is bool, "strict: no coercion to bool"
    assert isinstance(accepted.duration, float) and math.isfinite(accepted.duration)
    if "duration" in raw:
        assert type(raw["duration"]) in (int, float), "strict: true or '1' is not a duration"
    rule = duration_rule(app)
    if "enum" in rule:  # Veo: 4, 6 or 8 s, and 1080p/4K only at 8
        assert accepted.duration in VEO_DURATIONS
        assert accepted.resolution not in FULL_LENGTH_ONLY or accepted.duration == 8
    else:
        assert rule["minimum"] <= accepted.duration <= rule["maximum"]
    if accepted.seed is not None:
        assert type(raw["seed"]) is int and 0 <= accepted.seed <= 2**32 - 1
    if accepted.negative_prompt is not None:
        assert len(accepted.negative_prompt) <= 4000
    schema = jsonschema_rs.validator_for(app.input_model.model_json_schema())
    assert schema.is_valid(accepted.model_dump(mode="json")), "the published JSON Schema accepts it"


def validate_or_refuse(app: App, raw: Any) -> None:
    """The model either accepts raw (keeping the rules) or raises ValidationError; parse_input agrees."""
    try:
        accepted = app.input_model.model_validate(raw)
    except ValidationError:
        with pytest.raises(InvalidInput):
            parse_input(app.input_model, raw)
        return
    assert isinstance(raw, dict)
    assert_keeps_the_rules(app, raw, accepted)
    assert parse_input(app.input_model, raw) == accepted


@pytest.mark.parametrize("app_id", sorted(APPS))
@FUZZ
@given(raw=json_values)
def test_any_json_value_is_accepted_within_the_rules_or_refused(app_id: str, raw: Any) -> None:
    validate_or_refuse(APPS[app_id], raw)


@pytest.mark.parametrize("app_id", sorted(APPS))
@FUZZ
@given(raw=input_objects)
def test_any_object_near_the_input_shape_is_accepted_within_the_rules_or_refused(
    app_id: str, raw: dict[str, Any]
) -> None:
    validate_or_refuse(APPS[app_id], raw)


@st.composite
def valid_inputs(draw: st.DrawFn, app: App) -> dict[str, Any]:
    """An input every documented rule allows, with each optional field present or not."""
    raw: dict[str, Any] = {
        "prompt": draw(
            st.text(min_size=1, max_size=60).filter(
                lambda s: any(c.isprintable() and not c.isspace() for c in s)
            )
            | st.just("p" * 4000)
        )
    }
    optional = {
        "image": st.sampled_from(["https://example.com/cat.png", "file_0123", "data:image/png;base64,AAAA"]),
        "resolution": st.sampled_from(["720p", "1080p", "4K"]),
        "aspect_ratio": st.sampled_from(list(app.aspect_ratios)),
        "generate_audio": st.booleans(),
        "negative_prompt": st.text(max_size=40),
        "seed": st.integers(min_value=0, max_value=2**32 - 1),
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            raw[name] = draw(strategy)
    rule = duration_rule(app)
    if "enum" in rule:
        full_length_only = raw.get("resolution") in FULL_LENGTH_ONLY
        choices = [8] if full_length_only else list(VEO_DURATIONS)
        if full_length_only or draw(st.booleans()):
            raw["duration"] = draw(st.sampled_from(choices) | st.sampled_from([float(c) for c in choices]))
    elif draw(st.booleans()):
        raw["duration"] = draw(
            st.floats(min_value=rule["minimum"], max_value=rule["maximum"])
            | st.integers(min_value=math.ceil(rule["minimum"]), max_value=int(rule["maximum"]))
        )
    return raw


@pytest.mark.parametrize("app_id", sorted(APPS))
@FUZZ
@given(data=st.data())
def test_valid_inputs_are_accepted_and_round_trip_through_json(app_id: str, data: st.DataObject) -> None:
    app = APPS[app_id]
    raw = data.draw(valid_inputs(app))
    accepted = app.input_model.model_validate(raw)
    assert_keeps_the_rules(app, raw, accepted)
    assert app.input_model.model_validate_json(accepted.model_dump_json()) == accepted
    stored = accepted.model_dump(mode="json", exclude_none=True)  # what a task records
    assert app.input_model.model_validate(stored) == accepted


@FUZZ
@given(
    bounds=st.tuples(
        st.floats(min_value=0.05, max_value=30, allow_nan=False),
        st.floats(min_value=0.05, max_value=30, allow_nan=False),
    ),
    duration=st.floats(allow_nan=True, allow_infinity=True) | st.integers() | json_values,
)
def test_input_model_for_enforces_the_bounds_it_is_given(bounds: tuple[float, float], duration: Any) -> None:
    low, high = sorted(bounds)
    model = input_model_for("FuzzInput", default_duration=low, min_duration=low, max_duration=high)
    try:
        accepted = model.model_validate({"prompt": "x", "duration": duration})
    except ValidationError:
        return
    assert type(duration) in (int, float)
    assert low <= accepted.duration <= high and math.isfinite(accepted.duration)
    assert model.model_validate({"prompt": "x"}).duration == low  # the default is the one given


def test_veo_input_is_what_the_veo_apps_use() -> None:
    assert {a.input_model for a in APPS.values() if a.is_remote} == {VeoInput}
