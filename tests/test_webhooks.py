"""Webhook payloads and signatures, cross-checked against the Standard Webhooks package."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook as StandardWebhook

from engine.errors import InvalidSignature
from engine.models import ErrorInfo, Execution, Video
from engine.webhooks import (
    build_payload,
    encode_payload,
    headers_for,
    payload_for,
    secret_key,
    sign,
    verify_webhook,
)

KEY = b"0123456789abcdef0123456789abcdef"
WHSEC = "whsec_" + base64.b64encode(KEY).decode()
NOW = 1_700_000_000
BODY = encode_payload({"executionId": "exec_1", "status": "completed", "video": {"url": "u"}})


def execution(status: Any, **kwargs: Any) -> Execution:
    return Execution(id="exec_1", status=status, jobs=(), created_at=0.0, **kwargs)


def signed(body: bytes = BODY, secret: str = WHSEC, **kw: Any) -> dict[str, str]:
    return sign(body, secret, msg_id=kw.get("msg_id", "evt_1"), timestamp=kw.get("ts", NOW))


# --- payloads ------------------------------------------------------------------------------------


def test_completed_payload_carries_the_video() -> None:
    video = Video(
        url="https://cdn/x.mp4", duration=9.0, aspect_ratio="16:9", width=1920, height=1080
    )
    payload = build_payload(execution("completed", result=video))
    assert payload == {
        "executionId": "exec_1",
        "status": "completed",
        "video": {
            "url": "https://cdn/x.mp4",
            "duration": 9.0,
            "aspectRatio": "16:9",
            "width": 1920,
            "height": 1080,
            "status": "completed",
        },
    }


def test_failed_payload_carries_the_error() -> None:
    error = ErrorInfo(code="provider_error", message="boom", job_id="job2")
    payload = build_payload(execution("failed", error=error))
    assert payload == {
        "executionId": "exec_1",
        "status": "failed",
        "error": {"code": "provider_error", "message": "boom", "jobId": "job2"},
    }


def test_cancelled_payload_without_error_gets_a_generic_one() -> None:
    assert build_payload(execution("cancelled"))["error"] == {
        "code": "cancelled",
        "message": "execution cancelled",
        "jobId": None,
    }


@pytest.mark.parametrize("status", ["pending", "processing"])
def test_no_payload_for_unfinished_executions(status: str) -> None:
    with pytest.raises(ValueError, match="terminal"):
        build_payload(execution(status))


def test_completed_without_result_is_an_error() -> None:
    with pytest.raises(ValueError, match="no result"):
        payload_for("exec_1", "completed", None, None)


def test_encoding_is_compact_utf8() -> None:
    body = encode_payload({"a": "é", "b": [1, 2]})
    assert body == '{"a":"é","b":[1,2]}'.encode()


# --- secrets -------------------------------------------------------------------------------------


def test_plain_secret_is_its_utf8_bytes() -> None:
    assert secret_key("sécret") == "sécret".encode()


def test_whsec_secret_is_base64_decoded() -> None:
    assert secret_key(WHSEC) == KEY
    assert secret_key(WHSEC.rstrip("=")) == KEY  # unpadded, as stock verifiers accept


@pytest.mark.parametrize("secret", ["whsec_not*base64!", "whsec_abcde"])
def test_bad_whsec_secret_is_a_clear_error(secret: str) -> None:
    with pytest.raises(ValueError, match="not valid base64") as info:
        secret_key(secret)
    assert secret.removeprefix("whsec_") not in str(info.value)


def test_empty_whsec_secret_is_an_error() -> None:
    with pytest.raises(ValueError, match="no key bytes"):
        secret_key("whsec_")


# --- signing -------------------------------------------------------------------------------------


def test_hex_signature_is_the_seeds_scheme() -> None:
    headers = sign(BODY, "secret123", msg_id="evt_1", timestamp=NOW)
    expected = hmac.new(b"secret123", BODY, hashlib.sha256).hexdigest()
    assert headers["X-Webhook-Signature"] == expected


def test_standard_signature_format() -> None:
    headers = signed()
    assert headers["webhook-id"] == "evt_1"
    assert headers["webhook-timestamp"] == str(NOW)
    version, sig = headers["webhook-signature"].split(",")
    expected = hmac.new(KEY, f"evt_1.{NOW}.".encode() + BODY, hashlib.sha256).digest()
    assert version == "v1"
    assert base64.b64decode(sig) == expected


def test_headers_without_secret_have_ids_but_no_signatures() -> None:
    headers = headers_for(BODY, None, msg_id="evt_1", timestamp=NOW)
    assert headers == {
        "Content-Type": "application/json",
        "webhook-id": "evt_1",
        "webhook-timestamp": str(NOW),
    }


def test_headers_with_secret_have_both_signatures() -> None:
    headers = headers_for(BODY, WHSEC, msg_id="evt_1", timestamp=NOW)
    assert headers["Content-Type"] == "application/json"
    assert {"X-Webhook-Signature", "webhook-signature", "webhook-id", "webhook-timestamp"} <= set(
        headers
    )


# --- verifying: round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("secret", [WHSEC, "secret123", ""])
def test_round_trip(secret: str) -> None:
    headers = signed(secret=secret)
    assert verify_webhook(BODY, headers, secret, now=NOW)["executionId"] == "exec_1"


def test_round_trip_hex_only() -> None:
    headers = {"X-Webhook-Signature": signed(secret="secret123")["X-Webhook-Signature"]}
    assert verify_webhook(BODY, headers, "secret123")["status"] == "completed"


def test_hex_signature_is_case_insensitive() -> None:
    hex_sig = signed(secret="s")["X-Webhook-Signature"].upper()
    assert verify_webhook(BODY, {"x-webhook-signature": hex_sig}, "s")


def test_header_names_in_any_case_and_shape() -> None:
    headers = signed()
    upper = {name.upper(): value for name, value in headers.items()}
    assert verify_webhook(BODY, upper, WHSEC, now=NOW)
    pairs = [(name.encode(), value.encode()) for name, value in headers.items()]
    assert verify_webhook(BODY, pairs, WHSEC, now=NOW)
    assert verify_webhook(BODY, list(headers.items()), WHSEC, now=NOW)
    assert verify_webhook(BODY, httpx.Headers(headers), WHSEC, now=NOW)


def test_str_body_is_accepted() -> None:
    assert verify_webhook(BODY.decode(), signed(), WHSEC, now=NOW)


# --- verifying: rotation -------------------------------------------------------------------------


def test_several_signatures_any_may_match() -> None:
    old = signed(secret="old-secret")["webhook-signature"]
    new = signed(secret="new-secret")["webhook-signature"]
    headers = {**signed(), "webhook-signature": f"{old} {new}"}
    assert verify_webhook(BODY, headers, "new-secret", now=NOW)
    assert verify_webhook(BODY, headers, "old-secret", now=NOW)
    with pytest.raises(InvalidSignature, match="no signature matched"):
        verify_webhook(BODY, headers, "other-secret", now=NOW)


def test_several_secrets_any_may_match() -> None:
    headers = signed(secret="new-secret")
    assert verify_webhook(BODY, headers, ["old-secret", "new-secret"], now=NOW)
    assert verify_webhook(BODY, headers, ("new-secret",), now=NOW)


def test_other_signature_versions_are_ignored() -> None:
    good = signed()["webhook-signature"]
    headers = {**signed(), "webhook-signature": f"v1a,Zm9v v2,{good[3:]} junk {good}"}
    assert verify_webhook(BODY, headers, WHSEC, now=NOW)


def test_repeated_signature_header_lines_are_all_considered() -> None:
    headers = signed()
    pairs = [(k, v) for k, v in headers.items() if k != "webhook-signature"]
    pairs += [("webhook-signature", "v1,AAAA"), ("webhook-signature", headers["webhook-signature"])]
    assert verify_webhook(BODY, pairs, WHSEC, now=NOW)
    assert verify_webhook(BODY, httpx.Headers(pairs), WHSEC, now=NOW)


def test_no_secrets_is_a_usage_error() -> None:
    with pytest.raises(ValueError, match="at least one secret"):
        verify_webhook(BODY, signed(), [], now=NOW)


# --- verifying: tolerance ------------------------------------------------------------------------


@pytest.mark.parametrize("skew", [-300, -1, 0, 1, 300])
def test_timestamp_within_tolerance(skew: int) -> None:
    assert verify_webhook(BODY, signed(ts=NOW + skew), WHSEC, now=NOW)


def test_timestamp_too_old() -> None:
    with pytest.raises(InvalidSignature, match="too old"):
        verify_webhook(BODY, signed(ts=NOW - 301), WHSEC, now=NOW)


def test_timestamp_too_new() -> None:
    with pytest.raises(InvalidSignature, match="too new"):
        verify_webhook(BODY, signed(ts=NOW + 301), WHSEC, now=NOW)


def test_custom_tolerance() -> None:
    headers = signed(ts=NOW - 30)
    assert verify_webhook(BODY, headers, WHSEC, now=NOW, tolerance=30)
    with pytest.raises(InvalidSignature, match="too old"):
        verify_webhook(BODY, headers, WHSEC, now=NOW, tolerance=29)


def test_now_defaults_to_real_time() -> None:
    assert verify_webhook(BODY, signed(ts=int(time.time())), WHSEC)
    with pytest.raises(InvalidSignature, match="too old"):
        verify_webhook(BODY, signed(ts=NOW), WHSEC)


# --- verifying: failures -------------------------------------------------------------------------


def test_no_signature_headers() -> None:
    with pytest.raises(InvalidSignature, match="missing signature headers"):
        verify_webhook(BODY, {"Content-Type": "application/json"}, WHSEC)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp"])
def test_standard_signature_needs_id_and_timestamp(missing: str) -> None:
    headers = {k: v for k, v in signed().items() if k != missing}
    with pytest.raises(InvalidSignature, match=f"{missing} is missing"):
        verify_webhook(BODY, headers, WHSEC, now=NOW)


@pytest.mark.parametrize("stamp", ["abc", "1700000000.5", "-5", ""])
def test_bad_timestamp(stamp: str) -> None:
    headers = {**signed(), "webhook-timestamp": stamp}
    with pytest.raises(InvalidSignature, match="webhook-timestamp"):
        verify_webhook(BODY, headers, WHSEC, now=NOW)


def test_tampered_body() -> None:
    with pytest.raises(InvalidSignature, match="no signature matched"):
        verify_webhook(BODY + b" ", signed(), WHSEC, now=NOW)


def test_wrong_secret() -> None:
    with pytest.raises(InvalidSignature, match="no signature matched") as info:
        verify_webhook(BODY, signed(), "wrong-secret", now=NOW)
    assert "wrong-secret" not in str(info.value)
    assert WHSEC not in str(info.value)


def test_changed_id_or_timestamp_breaks_the_signature() -> None:
    with pytest.raises(InvalidSignature, match="no signature matched"):
        verify_webhook(BODY, {**signed(), "webhook-id": "evt_2"}, WHSEC, now=NOW)
    with pytest.raises(InvalidSignature, match="no signature matched"):
        verify_webhook(BODY, {**signed(), "webhook-timestamp": str(NOW + 1)}, WHSEC, now=NOW)


@pytest.mark.parametrize("value", ["", "v2,abc", "v1", "v1,not base64!", "garbage"])
def test_no_usable_v1_signature(value: str) -> None:
    with pytest.raises(InvalidSignature, match="no v1 signature"):
        verify_webhook(BODY, {**signed(), "webhook-signature": value}, WHSEC, now=NOW)


def test_failed_standard_signature_does_not_fall_back_to_hex() -> None:
    headers = {**signed(), "webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()}
    assert headers["X-Webhook-Signature"] == signed()["X-Webhook-Signature"]  # hex still valid
    with pytest.raises(InvalidSignature, match="no signature matched"):
        verify_webhook(BODY, headers, WHSEC, now=NOW)


def test_wrong_hex_signature() -> None:
    with pytest.raises(InvalidSignature, match="X-Webhook-Signature did not match"):
        verify_webhook(BODY, {"X-Webhook-Signature": "00" * 32}, "secret123")


def test_conflicting_repeated_headers() -> None:
    pairs = [*signed().items(), ("webhook-id", "evt_other")]
    with pytest.raises(InvalidSignature, match="conflicting"):
        verify_webhook(BODY, pairs, WHSEC, now=NOW)


@pytest.mark.parametrize(
    ("body", "match"), [(b"not json", "not valid JSON"), (b"[1,2]", "not a JSON object")]
)
def test_body_must_be_a_json_object(body: bytes, match: str) -> None:
    with pytest.raises(InvalidSignature, match=match):
        verify_webhook(body, signed(body), WHSEC, now=NOW)


def test_invalid_signature_is_an_engine_error() -> None:
    from engine.errors import EngineError

    assert issubclass(InvalidSignature, EngineError)


# --- cross-checks with the Standard Webhooks reference package -----------------------------------


def test_our_signature_verifies_with_standardwebhooks() -> None:
    headers = sign(BODY, WHSEC, msg_id="evt_42", timestamp=int(time.time()))
    assert StandardWebhook(WHSEC).verify(BODY, headers) == json.loads(BODY)


def test_plain_secret_signature_verifies_with_standardwebhooks_given_the_raw_key() -> None:
    headers = sign(BODY, "secret123", msg_id="evt_42", timestamp=int(time.time()))
    assert StandardWebhook(b"secret123").verify(BODY, headers) == json.loads(BODY)


def test_standardwebhooks_signature_verifies_with_ours() -> None:
    ts = int(time.time())
    reference = StandardWebhook(WHSEC)
    signature = reference.sign("msg_abc", datetime.fromtimestamp(ts, tz=UTC), BODY.decode())
    headers = {
        "webhook-id": "msg_abc",
        "webhook-timestamp": str(ts),
        "webhook-signature": signature,
    }
    assert verify_webhook(BODY, headers, WHSEC) == json.loads(BODY)
    assert verify_webhook(BODY, headers, WHSEC, now=ts + 299)
    with pytest.raises(InvalidSignature):
        verify_webhook(BODY, headers, "whsec_" + base64.b64encode(b"other").decode())
