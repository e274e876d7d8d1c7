"""Official Python SDK (azure-communication-identity) against the ACS emulator.

Environment: ACS_CONNECTION_STRING (the emulator's first line), COMPAT_MODE (`http`: the
client is built from endpoint + key, since from_connection_string always speaks https;
`tls`: straight from the connection string, trusting REQUESTS_CA_BUNDLE).
Prints `PASS name` / `FAIL name: why` per check and exits non-zero on any failure.
"""

import base64
import datetime
import json
import os
import ssl
import sys
import traceback
import urllib.request

from azure.communication.identity import (
    CommunicationIdentityClient,
    CommunicationTokenScope,
    CommunicationUserIdentifier,
)
from azure.communication.identity._shared.user_credential import CommunicationTokenCredential
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError

MODE = os.environ.get("COMPAT_MODE", "http")
CONN = os.environ["ACS_CONNECTION_STRING"]
PARTS = dict(p.split("=", 1) for p in CONN.split(";") if p)
ENDPOINT = PARTS["endpoint"].rstrip("/")
KEY = PARTS["accesskey"]
SKEW = 120  # seconds of slack between this process's clock and the emulator's

results = {"passed": 0, "failed": 0}


def check(name):
    def wrap(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the run
            results["failed"] += 1
            detail = "".join(traceback.format_exception_only(type(e), e)).strip().splitlines()[0]
            print(f"FAIL python[{MODE}] {name}: {detail}")
        else:
            results["passed"] += 1
            print(f"PASS python[{MODE}] {name}")
        return fn

    return wrap


def make_client(key=KEY):
    if MODE == "tls":
        return CommunicationIdentityClient.from_connection_string(f"endpoint={ENDPOINT}/;accesskey={key}")
    return CommunicationIdentityClient(ENDPOINT, AzureKeyCredential(key))


def admin(path, body=None):
    ctx = None
    if ENDPOINT.startswith("https"):
        ctx = ssl.create_default_context(cafile=os.environ["REQUESTS_CA_BUNDLE"])
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(ENDPOINT + path, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


def is_valid(token):
    return admin("/admin/tokens:validate", {"token": token})


def expires_at(access_token):
    value = access_token.expires_on
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    return datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def jwt_exp(token):
    # Standard base64, as the SDK itself decodes it.
    payload = token.split(".")[1]
    return json.loads(base64.b64decode(payload + "=="))["exp"]


def near(actual, expected, what):
    assert abs(actual - expected) <= SKEW, f"{what}: {actual} is not within {SKEW}s of {expected}"


client = make_client()
state = {}


@check("create_user")
def _():
    user = client.create_user()
    assert user.properties["id"].startswith("8:acs:"), user.properties
    state["user"] = user


@check("issue voip token with default 24h expiry")
def _():
    token = client.get_token(state["user"], [CommunicationTokenScope.VOIP])
    now = datetime.datetime.now(datetime.timezone.utc).timestamp()
    near(expires_at(token), now + 24 * 3600, "expiresOn")
    assert jwt_exp(token.token) == int(expires_at(token)), "JWT exp and expiresOn disagree"
    state["voip"] = token


@check("CommunicationTokenCredential parses the token")
def _():
    credential = CommunicationTokenCredential(state["voip"].token)
    parsed = credential.get_token()
    assert parsed.token == state["voip"].token
    assert parsed.expires_on == int(expires_at(state["voip"])), (parsed.expires_on, state["voip"].expires_on)


@check("issue token with 60-minute expiry")
def _():
    token = client.get_token(
        state["user"], [CommunicationTokenScope.CHAT], token_expires_in=datetime.timedelta(minutes=60)
    )
    now = datetime.datetime.now(datetime.timezone.utc).timestamp()
    near(expires_at(token), now + 3600, "expiresOn")


@check("create user and token together")
def _():
    user, token = client.create_user_and_token(
        [CommunicationTokenScope.CHAT, CommunicationTokenScope.VOIP], token_expires_in=datetime.timedelta(hours=2)
    )
    assert user.properties["id"].startswith("8:acs:")
    now = datetime.datetime.now(datetime.timezone.utc).timestamp()
    near(expires_at(token), now + 7200, "expiresOn")
    assert is_valid(token.token)["valid"]


@check("re-issue for an existing identity")
def _():
    existing = CommunicationUserIdentifier(state["user"].properties["id"])
    token = client.get_token(existing, [CommunicationTokenScope.VOIP])
    assert is_valid(token.token)["valid"]


@check("revoke makes earlier tokens invalid, later ones valid")
def _():
    old = state["voip"].token
    assert is_valid(old)["valid"], "token should be valid before the revoke"
    client.revoke_tokens(state["user"])
    verdict = is_valid(old)
    assert not verdict["valid"] and verdict["reason"] == "revoked", verdict
    fresh = client.get_token(state["user"], [CommunicationTokenScope.VOIP])
    assert is_valid(fresh.token)["valid"]


@check("delete user")
def _():
    client.delete_user(state["user"])
    listed = [i for i in admin("/admin/identities") if i["id"] == state["user"].properties["id"]]
    assert listed and listed[0]["deleted"] is True, listed


@check("token for a deleted user is ResourceNotFoundError 404")
def _():
    try:
        client.get_token(state["user"], [CommunicationTokenScope.VOIP])
    except ResourceNotFoundError as e:
        assert e.status_code == 404
    else:
        raise AssertionError("no error")


@check("unknown scope is HttpResponseError 400")
def _():
    user = client.create_user()
    try:
        client.get_token(user, ["teleport"])
    except HttpResponseError as e:
        assert e.status_code == 400, e.status_code
        assert e.error is not None and e.error.code, "error JSON was not parsed"
    else:
        raise AssertionError("no error")


@check("30-minute expiry is HttpResponseError 400")
def _():
    user = client.create_user()
    try:
        client.get_token(user, [CommunicationTokenScope.CHAT], token_expires_in=datetime.timedelta(minutes=30))
    except HttpResponseError as e:
        assert e.status_code == 400, e.status_code
    else:
        raise AssertionError("no error")


@check("wrong access key is ClientAuthenticationError 401")
def _():
    wrong = base64.b64encode(b"not the emulator's key at all").decode()
    try:
        make_client(wrong).create_user()
    except ClientAuthenticationError as e:
        assert e.status_code == 401
    else:
        raise AssertionError("no error")


print(f"python[{MODE}]: {results['passed']} passed, {results['failed']} failed")
sys.exit(1 if results["failed"] else 0)
