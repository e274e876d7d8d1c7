"""Official Python libraries with Entra ID against the emulator, local auth disabled:
azure-identity's WorkloadIdentityCredential (authority pointed at the emulator) gives
azure-communication-identity's CommunicationIdentityClient(endpoint, credential) its
bearer tokens, and the quickstart's whole flow runs on them.

The script plays the cluster: it makes an RSA key, publishes its JWKS to the emulated
Entra as a trusted issuer, registers an application with a federated credential for
`system:serviceaccount:compat:acs-client` and a role assignment, and writes a
ServiceAccount-like RS256 token to a file, as the kubelet projects it.

Environment: ACS_ENDPOINT (https), ENTRA_TENANT, REQUESTS_CA_BUNDLE / SSL_CERT_FILE.
Prints `PASS name` / `FAIL name: why` per check and exits non-zero on any failure.
"""

import base64
import json
import os
import ssl
import sys
import tempfile
import time
import traceback
import urllib.request

import jwt  # PyJWT, which msal depends on
from cryptography.hazmat.primitives.asymmetric import rsa
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.identity import WorkloadIdentityCredential
from azure.communication.identity import CommunicationIdentityClient, CommunicationTokenScope

ENDPOINT = os.environ["ACS_ENDPOINT"].rstrip("/")
TENANT = os.environ["ENTRA_TENANT"]
ISSUER = "https://kubernetes.default.svc"
SUBJECT = "system:serviceaccount:compat:acs-client"
CLIENT_ID = "00000000-0000-0000-0000-00000000c0de"
OBJECT_ID = "00000000-0000-0000-0000-0000000000b1"
CTX = ssl.create_default_context(cafile=os.environ.get("REQUESTS_CA_BUNDLE"))

results = {"passed": 0, "failed": 0}


def check(name):
    def wrap(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - every failure is reported
            results["failed"] += 1
            detail = "".join(traceback.format_exception_only(type(e), e)).strip().splitlines()[0]
            detail = detail.replace(TOKEN_TEXT[0], "<token>") if TOKEN_TEXT[0] else detail
            print(f"FAIL python-entra {name}: {detail}")
        else:
            results["passed"] += 1
            print(f"PASS python-entra {name}")
        return fn

    return wrap


def admin(method, path, body=None):
    req = urllib.request.Request(
        ENDPOINT + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, context=CTX) as r:
        text = r.read()
        return json.loads(text) if text else None


def b64u(n):
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
pub = key.public_key().public_numbers()
TOKEN_TEXT = [None]


def sa_token(subject=SUBJECT):
    now = int(time.time())
    return jwt.encode(
        {"iss": ISSUER, "sub": subject, "aud": ["api://AzureADTokenExchange"], "iat": now, "nbf": now, "exp": now + 3600},
        key,
        algorithm="RS256",
        headers={"kid": "compat-1"},
    )


admin("POST", "/admin/entra/issuers", {
    "issuer": ISSUER,
    "jwks": {"keys": [{"kty": "RSA", "kid": "compat-1", "alg": "RS256", "use": "sig", "n": b64u(pub.n), "e": b64u(pub.e)}]},
})
admin("POST", "/admin/entra/applications", {
    "clientId": CLIENT_ID,
    "objectId": OBJECT_ID,
    "federatedCredentials": [{"name": "compat", "issuer": ISSUER, "subject": SUBJECT, "audiences": ["api://AzureADTokenExchange"]}],
})

workdir = tempfile.mkdtemp()
token_file = os.path.join(workdir, "azure-identity-token")
with open(token_file, "w") as f:
    TOKEN_TEXT[0] = sa_token()
    f.write(TOKEN_TEXT[0])

credential = WorkloadIdentityCredential(
    tenant_id=TENANT, client_id=CLIENT_ID, token_file_path=token_file, authority=ENDPOINT
)
client = CommunicationIdentityClient(ENDPOINT, credential)
state = {}


@check("WorkloadIdentityCredential.get_token(communication scope) from the emulated authority")
def _():
    t = credential.get_token("https://communication.azure.com//.default")
    assert t.token.count(".") == 2, "not a JWT"
    assert t.expires_on > time.time() + 60, t.expires_on


@check("without a role assignment ACS answers 403 (HttpResponseError)")
def _():
    try:
        client.create_user()
    except HttpResponseError as e:
        assert e.status_code == 403, e.status_code
    else:
        raise AssertionError("created a user without a role")


admin("POST", "/admin/entra/roleAssignments", {"principalId": OBJECT_ID, "role": "Contributor"})


@check("quickstart: create_user")
def _():
    state["user"] = client.create_user()
    assert state["user"].properties["id"].startswith("8:acs:")


@check("quickstart: get_token(user, [voip])")
def _():
    tok = client.get_token(state["user"], [CommunicationTokenScope.VOIP])
    assert tok.token and tok.expires_on
    state["token"] = tok.token


@check("quickstart: create_user_and_token([chat, voip]) with expires_in")
def _():
    import datetime

    user, tok = client.create_user_and_token(
        scopes=[CommunicationTokenScope.CHAT, CommunicationTokenScope.VOIP],
        token_expires_in=datetime.timedelta(minutes=60),
    )
    assert user.properties["id"].startswith("8:acs:") and tok.token
    state["user2"] = user


@check("quickstart: refresh (get_token again) then revoke_tokens")
def _():
    client.get_token(state["user"], [CommunicationTokenScope.CHAT])
    client.revoke_tokens(state["user"])
    v = admin("POST", "/admin/tokens:validate", {"token": state["token"]})
    assert not v["valid"] and v["reason"] == "revoked", v


@check("quickstart: delete_user (both)")
def _():
    client.delete_user(state["user"])
    client.delete_user(state["user2"])


@check("one Entra token served every call (azure-core caches it)")
def _():
    counts = admin("GET", "/admin/entra")["counts"]
    assert counts["tokensIssued"] == 1, counts
    assert counts["bearerRequests"] >= 7, counts


@check("HMAC with the access key is refused: local auth disabled (401)")
def _():
    conn = os.environ.get("ACS_CONNECTION_STRING")
    assert conn, "no connection string"
    hmac_client = CommunicationIdentityClient.from_connection_string(conn)
    try:
        hmac_client.create_user()
    except (ClientAuthenticationError, HttpResponseError) as e:
        assert e.status_code == 401, e.status_code
    else:
        raise AssertionError("HMAC accepted with local auth disabled")


@check("a token for a ServiceAccount no federated credential names is refused with AADSTS70021")
def _():
    other = os.path.join(workdir, "other-token")
    with open(other, "w") as f:
        f.write(sa_token("system:serviceaccount:compat:someone-else"))
    cred = WorkloadIdentityCredential(tenant_id=TENANT, client_id=CLIENT_ID, token_file_path=other, authority=ENDPOINT)
    try:
        cred.get_token("https://communication.azure.com//.default")
    except ClientAuthenticationError as e:
        assert "AADSTS70021" in str(e), str(e)[:200]
    else:
        raise AssertionError("token issued for an unfederated subject")


print(f"{results['passed']} passed, {results['failed']} failed")
sys.exit(1 if results["failed"] else 0)
