// Official JS libraries with Entra ID against the emulator, local auth disabled:
// @azure/identity's WorkloadIdentityCredential (MSAL, authority pointed at the emulator,
// instance discovery off) gives @azure/communication-identity's
// CommunicationIdentityClient(endpoint, credential) its bearer tokens.
//
// The script plays the cluster like compat_entra_python.py: its own RSA key, JWKS,
// application, federated credential and a ServiceAccount-like token file.
// Environment: ACS_ENDPOINT (https), ENTRA_TENANT, NODE_EXTRA_CA_CERTS.
"use strict";

const crypto = require("crypto");
const fs = require("fs");
const os = require("os");
const path = require("path");
const { WorkloadIdentityCredential } = require("@azure/identity");
const { CommunicationIdentityClient } = require("@azure/communication-identity");

const ENDPOINT = process.env.ACS_ENDPOINT.replace(/\/$/, "");
const TENANT = process.env.ENTRA_TENANT;
const ISSUER = "https://kubernetes.default.svc";
const SUBJECT = "system:serviceaccount:compat:acs-client-js";
const CLIENT_ID = "00000000-0000-0000-0000-0000000000j5";
const OBJECT_ID = "00000000-0000-0000-0000-0000000000b2";

let passed = 0;
let failed = 0;
async function check(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`PASS js-entra ${name}`);
  } catch (e) {
    failed++;
    const msg = String((e && e.message) || e).split("\n")[0].replace(/eyJ[A-Za-z0-9._-]+/g, "<token>");
    console.log(`FAIL js-entra ${name}: ${msg.slice(0, 300)}`);
  }
}

async function admin(method, p, body) {
  const r = await fetch(ENDPOINT + p, {
    method,
    headers: { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!r.ok) throw new Error(`${method} ${p}: ${r.status}`);
  const text = await r.text();
  return text ? JSON.parse(text) : null;
}

const b64u = (buf) => Buffer.from(buf).toString("base64url");
const { publicKey, privateKey } = crypto.generateKeyPairSync("rsa", { modulusLength: 2048 });
const jwk = publicKey.export({ format: "jwk" });

function saToken(subject) {
  const now = Math.floor(Date.now() / 1000);
  const header = b64u(JSON.stringify({ alg: "RS256", kid: "compat-js" }));
  const claims = b64u(JSON.stringify({ iss: ISSUER, sub: subject, aud: ["api://AzureADTokenExchange"], iat: now, nbf: now, exp: now + 3600 }));
  const sig = crypto.sign("RSA-SHA256", Buffer.from(`${header}.${claims}`), privateKey);
  return `${header}.${claims}.${b64u(sig)}`;
}

async function main() {
  await admin("POST", "/admin/entra/issuers", {
    issuer: ISSUER,
    jwks: { keys: [{ kty: "RSA", kid: "compat-js", alg: "RS256", use: "sig", n: jwk.n, e: jwk.e }] },
  });
  await admin("POST", "/admin/entra/applications", {
    clientId: CLIENT_ID,
    objectId: OBJECT_ID,
    federatedCredentials: [{ name: "compat-js", issuer: ISSUER, subject: SUBJECT, audiences: ["api://AzureADTokenExchange"] }],
  });
  await admin("POST", "/admin/entra/roleAssignments", { principalId: OBJECT_ID, role: "Communication and Email Service Owner" });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "entra-js-"));
  const tokenFile = path.join(dir, "azure-identity-token");
  fs.writeFileSync(tokenFile, saToken(SUBJECT));
  const before = (await admin("GET", "/admin/entra")).counts.tokensIssued;

  const credential = new WorkloadIdentityCredential({
    tenantId: TENANT,
    clientId: CLIENT_ID,
    tokenFilePath: tokenFile,
    authorityHost: ENDPOINT,
    disableInstanceDiscovery: true,
  });
  const client = new CommunicationIdentityClient(ENDPOINT, credential);
  const state = {};

  await check("WorkloadIdentityCredential.getToken(communication scope) through MSAL discovery", async () => {
    const t = await credential.getToken("https://communication.azure.com//.default");
    if (!t || t.token.split(".").length !== 3) throw new Error("not a JWT");
    if (t.expiresOnTimestamp < Date.now() + 60000) throw new Error("expires too soon");
  });
  await check("quickstart: createUser", async () => {
    state.user = await client.createUser();
    if (!state.user.communicationUserId.startsWith("8:acs:")) throw new Error(state.user.communicationUserId);
  });
  await check("quickstart: getToken(user, [voip])", async () => {
    const t = await client.getToken(state.user, ["voip"]);
    if (!t.token) throw new Error("no token");
  });
  await check("quickstart: createUserAndToken([chat])", async () => {
    const r = await client.createUserAndToken(["chat"]);
    if (!r.token || !r.user.communicationUserId) throw new Error("no user or token");
    state.user2 = r.user;
  });
  await check("quickstart: revokeTokens and deleteUser", async () => {
    await client.revokeTokens(state.user);
    await client.deleteUser(state.user);
    await client.deleteUser(state.user2);
  });
  // MSAL answers the explicit getToken and the pipeline's first request separately (2
  // exchanges here); after that its cache serves every call.
  await check("Entra tokens do not grow with the number of ACS calls", async () => {
    const n = (await admin("GET", "/admin/entra")).counts.tokensIssued - before;
    if (n > 2) throw new Error(`${n} tokens issued for 6 calls`);
    await client.createUser();
    await client.createUser();
    const m = (await admin("GET", "/admin/entra")).counts.tokensIssued - before;
    if (m !== n) throw new Error(`${m - n} more tokens for 2 more calls`);
  });
}

main()
  .catch((e) => {
    failed++;
    console.log(`FAIL js-entra setup: ${String(e.message || e).split("\n")[0]}`);
  })
  .finally(() => {
    console.log(`${passed} passed, ${failed} failed`);
    process.exit(failed ? 1 : 0);
  });
