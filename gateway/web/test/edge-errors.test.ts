// The web client's own library and transport (connect-web's createGrpcWebTransport, as in
// src/api.ts) against the real Envoy: every refusal Envoy makes itself must reach the
// client as a ConnectError with the right code and Envoy's message, never as "HTTP 401".
// Needs a running edge: EMBEDVIZ_EDGE_URL=http://127.0.0.1:8080 npx vitest run test/edge-errors.test.ts
// (tests/test_web_client.py runs it against the test stack); without the variable it is skipped.
import { Code, ConnectError, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { beforeAll, describe, expect, it } from "vitest";
import { AuthInternalService, AuthService } from "../src/gen/embedviz/v1/auth_pb";
import { IngestService } from "../src/gen/embedviz/v1/ingest_pb";

const edgeUrl = (import.meta.env.EMBEDVIZ_EDGE_URL as string | undefined)?.replace(/\/+$/, "") ?? "";

/** A grpc-web transport to the edge, as the app builds it, sending `token` as the bearer. */
function transport(token?: string, path?: string): Transport {
  const bearer: Interceptor = (next) => (req) => {
    if (token) req.header.set("authorization", `Bearer ${token}`);
    // A path the generated descriptors cannot name (an unknown method) goes in the URL.
    return next(path ? { ...req, url: `${edgeUrl}${path}` } : req);
  };
  return createGrpcWebTransport({ baseUrl: edgeUrl, interceptors: [bearer], useBinaryFormat: true });
}

/** The ConnectError a call ends with; fails the test if the call succeeds. */
async function refusal(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (err) {
    return ConnectError.from(err);
  }
  throw new Error("the edge answered the call; it should have refused it");
}

function base64UrlJson(part: string): Record<string, unknown> {
  return JSON.parse(atob(part.replace(/-/g, "+").replace(/_/g, "/"))) as Record<string, unknown>;
}

function toBase64Url(value: unknown): string {
  return btoa(JSON.stringify(value)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** The same token with its expiry an hour ago: what a browser holds after a long sleep. */
function expiredCopyOf(token: string): string {
  const [header, payload, signature] = token.split(".");
  const claims = base64UrlJson(payload);
  const exp = Math.floor(Date.now() / 1000) - 3600;
  return [header, toBase64Url({ ...claims, iat: exp - 900, nbf: exp - 900, exp }), signature].join(".");
}

describe.skipIf(!edgeUrl)("connect-web reads the real edge's refusals", () => {
  let accessToken = "";

  beforeAll(async () => {
    const email = `edge-errors-${Date.now()}-${Math.random().toString(36).slice(2, 8)}@example.com`;
    const res = await createClient(AuthService, transport()).signUp({ email, password: "correct horse battery staple", displayName: "Edge check" });
    accessToken = res.session?.accessToken ?? "";
    expect(accessToken.split(".")).toHaveLength(3);
  });

  it("passes a call with a valid token", async () => {
    const projects = await createClient(IngestService, transport(accessToken)).listProjects({});
    expect(projects.projects).toEqual([]);
  });

  it("refuses a call without a token as Unauthenticated, in Envoy's words", async () => {
    const err = await refusal(createClient(IngestService, transport()).listProjects({}));
    expect(Code[err.code]).toBe("Unauthenticated");
    expect(err.rawMessage).toBe("Jwt is missing");
  });

  it("refuses a garbage token as Unauthenticated", async () => {
    const err = await refusal(createClient(IngestService, transport("not-a-jwt")).listProjects({}));
    expect(Code[err.code]).toBe("Unauthenticated");
    expect(err.rawMessage).toMatch(/^Jwt /);
  });

  it("refuses an expired token as Unauthenticated: Jwt is expired", async () => {
    const err = await refusal(createClient(IngestService, transport(expiredCopyOf(accessToken))).listProjects({}));
    expect(Code[err.code]).toBe("Unauthenticated");
    expect(err.rawMessage).toBe("Jwt is expired");
  });

  it("answers an internal service's method as Unimplemented, even with a valid token", async () => {
    const err = await refusal(createClient(AuthInternalService, transport(accessToken)).lookupUser({ email: "someone@example.com" }));
    expect(Code[err.code]).toBe("Unimplemented");
    expect(err.rawMessage).toMatch(/internal services are for the embedviz services only/);
  });

  it("answers an unknown method as Unimplemented", async () => {
    const unknown = transport(accessToken, "/embedviz.v1.NoSuchService/NoSuchMethod");
    const err = await refusal(createClient(IngestService, unknown).listProjects({}));
    expect(Code[err.code]).toBe("Unimplemented");
    expect(err.rawMessage).toMatch(/no such gRPC method/);
  });
});
