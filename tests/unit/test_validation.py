"""The argument rules, exactly as documented, without a database."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from flowsignals import FlowSignalsError, InvalidArgumentError
from flowsignals.validation import (
    check_expires_at,
    check_name,
    check_payload,
    check_run_id,
    check_timeout,
)


def test_invalid_argument_error_is_a_value_error_naming_the_argument() -> None:
    error = InvalidArgumentError("step_key", "must not be empty")
    assert isinstance(error, ValueError) and isinstance(error, FlowSignalsError)
    assert (error.argument, error.rule, str(error)) == (
        "step_key",
        "must not be empty",
        "step_key: must not be empty",
    )


def test_run_id_accepts_uuid_and_its_string_forms() -> None:
    run = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert check_run_id(run) is run
    for text in (str(run), str(run).upper(), run.hex, "{" + str(run) + "}", run.urn):
        assert check_run_id(text) == run


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nope", "run_id: must be a UUID; 'nope' does not parse as one"),
        (7, "run_id: must be a uuid.UUID or a str holding one, not int"),
        (None, "run_id: must be a uuid.UUID or a str holding one, not NoneType"),
    ],
)
def test_run_id_errors_say_what_was_wrong(value: object, message: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        check_run_id(value)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "signal_name: must not be empty"),
        ("x" * 257, "signal_name: must be at most 256 characters, not 257"),
        ("a\x00", "signal_name: must not contain NUL characters"),
        (" a", "signal_name: must not have leading or trailing whitespace"),
        ("a\u2003", "signal_name: must not have leading or trailing whitespace"),
        ("a\udc80b", "signal_name: must be encodable as UTF-8 (a lone surrogate at index 1)"),
        (b"a", "signal_name: must be a str, not bytes"),
    ],
)
def test_name_rules(value: object, message: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        check_name("signal_name", value)
    assert str(caught.value) == message


def test_names_at_the_limit_and_inner_whitespace_are_fine() -> None:
    assert check_name("step_key", "é" * 256) == "é" * 256
    assert check_name("step_key", "a b\tc") == "a b\tc"


def test_deadline_is_normalised_to_utc() -> None:
    offset = timezone(timedelta(hours=-3, minutes=-30))
    value = datetime(2030, 1, 1, 8, 0, tzinfo=offset)
    result = check_expires_at(value)
    assert result == value and result is not None and result.tzinfo is timezone.utc
    assert check_expires_at(None) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            datetime(2030, 1, 1),
            "expires_at: must be timezone-aware (a naive datetime is ambiguous)",
        ),
        (
            datetime(1, 1, 1, 12, tzinfo=timezone.utc),
            "expires_at: must lie between 0001-01-02 and 9999-12-30 UTC",
        ),
        (
            datetime.min.replace(tzinfo=timezone(timedelta(hours=1))),
            "expires_at: must lie between 0001-01-02 and 9999-12-30 UTC",
        ),
        ("2030-01-01T00:00:00Z", "expires_at: must be a timezone-aware datetime or None, not str"),
    ],
)
def test_deadline_rules(value: object, message: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        check_expires_at(value)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "payload",
    ["{}", "[]", "0", '"text"', "true", "null", ' {"a" : [1, 2.5e-3, "\\u0000"]} ', "1e999"],
)
def test_strict_json_is_returned_unchanged(payload: str) -> None:
    assert check_payload(payload, 1024) is payload


@pytest.mark.parametrize(
    ("payload", "start"),
    [
        ("NaN", "payload_json: must be valid JSON (RFC 8259): NaN is not a JSON value"),
        ("[-Infinity]", "payload_json: must be valid JSON (RFC 8259): -Infinity is not"),
        ("", "payload_json: must be valid JSON (RFC 8259): Expecting value"),
        ("{'a': 1}", "payload_json: must be valid JSON (RFC 8259): Expecting property name"),
        ('"' + "x" * 2000 + '"', "payload_json: must be at most 1024 bytes of UTF-8"),
        ('"' + "€" * 400 + '"', "payload_json: must be at most 1024 bytes of UTF-8, not 1202"),
        (b"{}", "payload_json: must be a str of JSON text, not bytes (serialise it first)"),
    ],
)
def test_payload_rules(payload: object, start: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        check_payload(payload, 1024)
    assert str(caught.value).startswith(start)


def test_nesting_too_deep_to_parse_is_refused_not_crashed() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        check_payload("[" * 200_000 + "]" * 200_000, 1_000_000)
    assert str(caught.value) == "payload_json: is nested too deeply to parse"


def test_timeout_accepts_seconds_and_timedelta() -> None:
    assert check_timeout("timeout", 1) == 1.0
    assert check_timeout("timeout", 0.25) == 0.25
    assert check_timeout("timeout", timedelta(minutes=2)) == 120.0


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), "5", None, True])
def test_timeout_rules(value: object) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^timeout: "):
        check_timeout("timeout", value)
