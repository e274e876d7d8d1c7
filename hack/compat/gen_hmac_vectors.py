#!/usr/bin/env python3
"""Generate HMAC-SHA256 signing test vectors with the official Python SDK's own code.

The Rust signer (src/acs/signing.rs) must reproduce, byte for byte, what ACS's SDKs send,
so its test vectors come from the SDK itself rather than from our own understanding of it.

Two sources of vectors:
  * "sdk-client": a real `CommunicationIdentityClient` from a connection string runs its
    whole pipeline (request builders, percent-encoding of ids, JSON serialisation, HMAC
    policy); a capturing transport records the signed request instead of sending it.
  * "policy": the SDK's `HMACCredentialsPolicy` signs hand-built requests, to cover inputs
    the client never produces on its own (bodies with odd bytes, other methods, hosts).

The clock is pinned per vector so the output is reproducible.

Usage (the SDK lives in a venv outside the repo; hack/compat/install.sh creates it):
    VENV=${XDG_CACHE_HOME:-$HOME/.cache}/acs-identity-operator/compat/venv
    hack/compat/install.sh   # or: python3 -m venv "$VENV" && "$VENV/bin/pip" install azure-communication-identity==1.5.0
    "$VENV/bin/python" hack/compat/gen_hmac_vectors.py > tests/vectors/hmac_sha256.json
The output is deterministic: rerunning it and diffing against the committed file checks
that the vectors still match the pinned SDK.
"""

import base64
import importlib.metadata
import json
import sys
from datetime import timedelta
from urllib.parse import urlparse

from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest import HttpRequest

from azure.communication.identity import (
    CommunicationIdentityClient,
    CommunicationTokenScope,
    CommunicationUserIdentifier,
)
from azure.communication.identity._shared import policy as hmac_policy

SDK_VERSION = "1.5.0"

# Two keys: one short ASCII secret, one 64 random-looking bytes as ACS issues them.
KEY_A = base64.b64encode(b"secret-key-bytes").decode()
KEY_B = base64.b64encode(bytes(range(7, 7 + 64 * 3, 3))).decode()

USER_ID = "8:acs:6a3a1b8e-0a8e-4b0e-9f5c-5f7cfe1d2a11_00000021-9b1f-4c3e-8d1a-0c2b3a4d5e6f"


class _Captured(Exception):
    """Raised by the transport to stop the pipeline once the request is signed."""


class CapturingTransport(HttpTransport):
    def __init__(self):
        self.last = None

    def __enter__(self):
        return self

    def __exit__(self, *args):
        pass

    def open(self):
        pass

    def close(self):
        pass

    def send(self, request, **kwargs):
        self.last = request
        raise _Captured()


def _pin_clock(date):
    hmac_policy.get_current_utc_time = lambda: date


def _body_text(request):
    # The policy replaces a missing body with "" before hashing; record what it hashed.
    body = getattr(request, "content", None)
    if body is None:
        body = getattr(request, "body", None)
    if body is None:
        return ""
    if isinstance(body, bytes):
        return body.decode("utf-8")
    return body


def _vector(name, source, key_b64, host, date, request, operation=None):
    parsed = urlparse(request.url)
    path_and_query = parsed.path + ("?" + parsed.query if parsed.query else "")
    v = {
        "name": name,
        "source": source,
        "access_key": key_b64,
        "method": request.method.upper(),
        "url": request.url,
        "host": host,
        "path_and_query": path_and_query,
        "date": date,
        "body": _body_text(request),
        "x_ms_content_sha256": request.headers["x-ms-content-sha256"],
        "authorization": request.headers["Authorization"],
    }
    if operation is not None:
        v["operation"] = operation
    return v


def client_vectors():
    out = []
    cases = [
        # (name, endpoint, key, api_version, date, operation dict, callable)
        (
            "create-user-no-body",
            "https://contoso.communication.azure.com/",
            KEY_A,
            "2023-10-01",
            "Tue, 24 Nov 2026 22:35:05 GMT",
            {"op": "create_user"},
            lambda c: c.create_user(),
        ),
        (
            "create-user-and-token-port-host",
            "https://127.0.0.1:8443/",
            KEY_A,
            "2023-10-01",
            "Wed, 01 Jan 2025 00:00:00 GMT",
            {"op": "create_user", "scopes": ["chat", "voip"], "expires_in_minutes": 60},
            lambda c: c.create_user_and_token(
                scopes=[CommunicationTokenScope.CHAT, CommunicationTokenScope.VOIP],
                token_expires_in=timedelta(minutes=60),
            ),
        ),
        (
            "issue-token-percent-encoded-id",
            "https://contoso.communication.azure.com",
            KEY_B,
            "2023-10-01",
            "Thu, 05 Jun 2025 12:34:56 GMT",
            {"op": "issue_token", "id": USER_ID, "scopes": ["chat.join", "voip.join"], "expires_in_minutes": 1440},
            lambda c: c.get_token(
                CommunicationUserIdentifier(USER_ID),
                scopes=[CommunicationTokenScope.CHAT_JOIN, CommunicationTokenScope.VOIP_JOIN],
                token_expires_in=timedelta(minutes=1440),
            ),
        ),
        (
            "issue-token-default-expiry-emulator-port",
            "https://localhost:18443/",
            KEY_B,
            "2023-10-01",
            "Mon, 01 Mar 2027 07:08:09 GMT",
            {"op": "issue_token", "id": USER_ID, "scopes": ["chat.join.limited"]},
            lambda c: c.get_token(
                CommunicationUserIdentifier(USER_ID),
                scopes=[CommunicationTokenScope.CHAT_JOIN_LIMITED],
            ),
        ),
        (
            "revoke-tokens",
            "https://contoso.communication.azure.com/",
            KEY_A,
            "2023-10-01",
            "Fri, 13 Mar 2026 09:10:11 GMT",
            {"op": "revoke_tokens", "id": USER_ID},
            lambda c: c.revoke_tokens(CommunicationUserIdentifier(USER_ID)),
        ),
        (
            "delete-user-port-host",
            "https://127.0.0.1:9443/",
            KEY_B,
            "2023-10-01",
            "Sat, 14 Mar 2026 09:10:11 GMT",
            {"op": "delete_user", "id": USER_ID},
            lambda c: c.delete_user(CommunicationUserIdentifier(USER_ID)),
        ),
        (
            "revoke-tokens-preview-api-version",
            "https://contoso.communication.azure.com/",
            KEY_B,
            "2025-03-02-preview",
            "Sun, 15 Mar 2026 23:59:59 GMT",
            {"op": "revoke_tokens", "id": USER_ID},
            lambda c: c.revoke_tokens(CommunicationUserIdentifier(USER_ID)),
        ),
    ]
    for name, endpoint, key, api_version, date, operation, call in cases:
        transport = CapturingTransport()
        client = CommunicationIdentityClient.from_connection_string(
            f"endpoint={endpoint};accesskey={key}",
            api_version=api_version,
            transport=transport,
            retry_total=0,
        )
        _pin_clock(date)
        try:
            call(client)
        except _Captured:
            pass
        if transport.last is None:
            raise SystemExit(f"{name}: the SDK sent no request")
        operation["api_version"] = api_version
        host = urlparse(endpoint).netloc
        out.append(_vector(name, "sdk-client", key, host, date, transport.last, operation))
    return out


def policy_vectors():
    out = []
    cases = [
        # (name, host, key, method, url, body, date)
        (
            "policy-post-body-with-spaces",
            "contoso.communication.azure.com",
            KEY_A,
            "POST",
            "https://contoso.communication.azure.com/identities?api-version=2023-10-01",
            '{"createTokenWithScopes": ["chat"], "expiresInMinutes": 90}',
            "Tue, 24 Nov 2026 22:35:05 GMT",
        ),
        (
            "policy-post-compact-body-port",
            "127.0.0.1:8443",
            KEY_B,
            "POST",
            "https://127.0.0.1:8443/identities?api-version=2025-03-02-preview",
            '{"customId":"uid-7d2c","createTokenWithScopes":["voip"],"expiresInMinutes":60}',
            "Tue, 24 Nov 2026 22:35:06 GMT",
        ),
        (
            "policy-post-no-body-encoded-id",
            "contoso.communication.azure.com",
            KEY_A,
            "POST",
            "https://contoso.communication.azure.com/identities/8%3Aacs%3Aabc_def/:revokeAccessTokens?api-version=2023-10-01",
            None,
            "Tue, 24 Nov 2026 22:35:07 GMT",
        ),
        (
            "policy-get-encoded-id",
            "localhost:18443",
            KEY_B,
            "GET",
            "https://localhost:18443/identities/8%3Aacs%3Aabc_def?api-version=2025-03-02-preview",
            None,
            "Tue, 24 Nov 2026 22:35:08 GMT",
        ),
        (
            "policy-delete-no-query",
            "contoso.communication.azure.com",
            KEY_A,
            "DELETE",
            "https://contoso.communication.azure.com/identities/8%3Aacs%3Aabc_def",
            None,
            "Tue, 24 Nov 2026 22:35:09 GMT",
        ),
        (
            "policy-post-empty-json-object",
            "contoso.communication.azure.com",
            KEY_B,
            "post",
            "https://contoso.communication.azure.com/identities?api-version=2023-10-01",
            "{}",
            "Tue, 24 Nov 2026 22:35:10 GMT",
        ),
        (
            "policy-post-non-ascii-body",
            "contoso.communication.azure.com",
            KEY_A,
            "POST",
            "https://contoso.communication.azure.com/identities?api-version=2025-03-02-preview",
            '{"customId": "caf\u00e9-\u2603"}',
            "Tue, 24 Nov 2026 22:35:11 GMT",
        ),
    ]
    for name, host, key, method, url, body, date in cases:
        pol = hmac_policy.HMACCredentialsPolicy("https://" + host, key)
        # Raw text content, so no serialiser can change a byte of it.
        req = HttpRequest(method, url, content=body) if body is not None else HttpRequest(method, url)
        _pin_clock(date)
        pol.on_request(PipelineRequest(req, PipelineContext(None)))
        out.append(_vector(name, "policy", key, host, date, req))
    return out


def main():
    vectors = client_vectors() + policy_vectors()
    doc = {
        "generator": "hack/compat/gen_hmac_vectors.py",
        "sdk": f"azure-communication-identity=={SDK_VERSION}",
        "sdk_installed": importlib.metadata.version("azure-communication-identity"),
        "vectors": vectors,
    }
    json.dump(doc, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
