"""The local multi-model relay's rules, without a server: which calls pass, which registrations are refused."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from marport.sagemaker_deploy.local_mme import platform_call, registration_refused

MODELS = Path("/srv/run/opt_ml/models")


def test_the_platforms_calls_pass_and_nothing_else():
    assert platform_call("GET", ["ping"]) and platform_call("POST", ["invocations"])
    assert platform_call("POST", ["models"]) and platform_call("GET", ["models"])
    assert platform_call("GET", ["models", "abc"]) and platform_call("DELETE", ["models", "abc"])
    assert platform_call("POST", ["models", "abc", "invoke"])
    for method, parts in (("PUT", ["models", "abc"]), ("POST", ["workflows"]), ("GET", ["api-description"]),
                          ("DELETE", ["models"]), ("POST", ["models", "abc", "1.0", "set-default"]),
                          ("GET", ["models", "abc", "invoke"])):
        assert not platform_call(method, parts), (method, parts)


def test_a_model_under_the_models_folder_is_registered():
    body = json.dumps({"model_name": "abc", "url": str(MODELS / "abc" / "model")}).encode()
    assert registration_refused("/models", body, MODELS) is None


@given(st.text(max_size=80))
def test_any_url_is_refused_unless_it_resolves_under_the_models_folder(url):
    body = json.dumps({"model_name": "x", "url": url}).encode()
    refused = registration_refused("/models", body, MODELS)
    inside = url.startswith("/") and "\0" not in url and MODELS.resolve() in Path(url).resolve().parents
    assert (refused is None) == inside, (url, refused)


@given(st.binary(max_size=200))
def test_any_body_is_answered_with_a_reason_or_passed_never_an_exception(body):
    refused = registration_refused("/models", body, MODELS)
    assert refused is None or isinstance(refused, str)
