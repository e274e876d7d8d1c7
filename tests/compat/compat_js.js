// Official JavaScript SDK (@azure/communication-identity) against the ACS emulator.
//
// Environment: ACS_CONNECTION_STRING (the emulator's first line) and COMPAT_MODE:
// `http` builds the client with allowInsecureConnection; `tls` uses the connection string
// as is and trusts the emulator's CA through NODE_EXTRA_CA_CERTS.
// Prints `PASS name` / `FAIL name: why` per check and exits non-zero on any failure.
"use strict";

const https = require("node:https");
const http = require("node:http");
const { CommunicationIdentityClient } = require("@azure/communication-identity");
const { AzureCommunicationTokenCredential } = require("@azure/communication-common");
const { AzureKeyCredential } = require("@azure/core-auth");

const MODE = process.env.COMPAT_MODE || "http";
const CONN = process.env.ACS_CONNECTION_STRING;
const parts = Object.fromEntries(
  CONN.split(";")
    .filter(Boolean)
    .map((p) => [p.slice(0, p.indexOf("=")).toLowerCase(), p.slice(p.indexOf("=") + 1)]),
);
const ENDPOINT = parts.endpoint.replace(/\/$/, "");
const SKEW_MS = 120_000;

function makeClient(key) {
  if (MODE === "tls") {
    return new CommunicationIdentityClient(`endpoint=${ENDPOINT}/;accesskey=${key || parts.accesskey}`);
  }
  return new CommunicationIdentityClient(ENDPOINT, new AzureKeyCredential(key || parts.accesskey), {
    allowInsecureConnection: true,
  });
}

function admin(path, body) {
  const url = new URL(ENDPOINT + path);
  const lib = url.protocol === "https:" ? https : http;
  const data = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = lib.request(
      url,
      { method: data ? "POST" : "GET", headers: { "content-type": "application/json" } },
      (res) => {
        let text = "";
        res.on("data", (c) => (text += c));
        res.on("end", () => {
          try {
            resolve(text ? JSON.parse(text) : null);
          } catch (e) {
            reject(e);
          }
        });
      },
    );
    req.on("error", reject);
    if (data) req.write(data);
    req.end();
  });
}

const isValid = (token) => admin("/admin/tokens:validate", { token });

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

function near(actualMs, expectedMs, what) {
  assert(Math.abs(actualMs - expectedMs) <= SKEW_MS, `${what}: ${new Date(actualMs).toISOString()} is not near ${new Date(expectedMs).toISOString()}`);
}

async function expectStatus(promise, status) {
  try {
    await promise;
  } catch (e) {
    assert(e.statusCode === status, `expected ${status}, got ${e.statusCode}: ${e.message}`);
    assert(e.name === "RestError", `expected RestError, got ${e.name}`);
    return;
  }
  throw new Error(`expected ${status}, the call succeeded`);
}

const results = { passed: 0, failed: 0 };
async function check(name, fn) {
  try {
    await fn();
    results.passed++;
    console.log(`PASS js[${MODE}] ${name}`);
  } catch (e) {
    results.failed++;
    console.log(`FAIL js[${MODE}] ${name}: ${String(e && e.message ? e.message : e).split("\n")[0]}`);
  }
}

async function main() {
  const client = makeClient();
  const state = {};

  await check("createUser", async () => {
    state.user = await client.createUser();
    assert(state.user.communicationUserId.startsWith("8:acs:"), state.user.communicationUserId);
  });

  await check("issue voip token with default 24h expiry", async () => {
    state.voip = await client.getToken(state.user, ["voip"]);
    near(state.voip.expiresOn.getTime(), Date.now() + 24 * 3600 * 1000, "expiresOn");
  });

  await check("AzureCommunicationTokenCredential parses the token", async () => {
    const credential = new AzureCommunicationTokenCredential(state.voip.token);
    const parsed = await credential.getToken();
    assert(parsed.token === state.voip.token, "token differs");
    // The JWT's exp is whole seconds; expiresOn has the service's sub-second precision
    // (7 fraction digits, as the live service writes it): the same second.
    assert(
      parsed.expiresOnTimestamp === Math.floor(state.voip.expiresOn.getTime() / 1000) * 1000,
      `JWT exp ${parsed.expiresOnTimestamp} != expiresOn ${state.voip.expiresOn.getTime()}`,
    );
    credential.dispose();
  });

  await check("issue token with 60-minute expiry", async () => {
    const token = await client.getToken(state.user, ["chat"], { tokenExpiresInMinutes: 60 });
    near(token.expiresOn.getTime(), Date.now() + 3600 * 1000, "expiresOn");
  });

  await check("createUserAndToken", async () => {
    const { user, token, expiresOn } = await client.createUserAndToken(["chat", "voip"], { tokenExpiresInMinutes: 120 });
    assert(user.communicationUserId.startsWith("8:acs:"), "id");
    near(expiresOn.getTime(), Date.now() + 7200 * 1000, "expiresOn");
    assert((await isValid(token)).valid, "token not valid");
  });

  await check("re-issue for an existing identity", async () => {
    const token = await client.getToken({ communicationUserId: state.user.communicationUserId }, ["voip"]);
    assert((await isValid(token.token)).valid, "token not valid");
  });

  await check("revoke makes earlier tokens invalid, later ones valid", async () => {
    assert((await isValid(state.voip.token)).valid, "token should be valid before the revoke");
    await client.revokeTokens(state.user);
    const verdict = await isValid(state.voip.token);
    assert(!verdict.valid && verdict.reason === "revoked", JSON.stringify(verdict));
    const fresh = await client.getToken(state.user, ["voip"]);
    assert((await isValid(fresh.token)).valid, "fresh token not valid");
  });

  await check("deleteUser", async () => {
    await client.deleteUser(state.user);
    const listed = (await admin("/admin/identities")).filter((i) => i.id === state.user.communicationUserId);
    assert(listed.length === 1 && listed[0].deleted === true, JSON.stringify(listed));
  });

  await check("token for a deleted user is RestError 404", () =>
    expectStatus(client.getToken(state.user, ["voip"]), 404),
  );

  await check("unknown scope is RestError 400", async () => {
    const user = await client.createUser();
    await expectStatus(client.getToken(user, ["teleport"]), 400);
  });

  await check("30-minute expiry is RestError 400", async () => {
    const user = await client.createUser();
    await expectStatus(client.getToken(user, ["chat"], { tokenExpiresInMinutes: 30 }), 400);
  });

  await check("wrong access key is RestError 401", () =>
    expectStatus(makeClient(Buffer.from("not the emulator's key at all").toString("base64")).createUser(), 401),
  );

  console.log(`js[${MODE}]: ${results.passed} passed, ${results.failed} failed`);
  process.exitCode = results.failed ? 1 : 0;
}

main().catch((e) => {
  console.log(`FAIL js[${MODE}] harness: ${e && e.message}`);
  process.exitCode = 1;
});
