// gRPC-web clients for the four public services, with the access token attached and one
// refresh-and-retry when a call comes back UNAUTHENTICATED.

import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AuthService } from "./gen/embedviz/v1/auth_pb";
import { EmbeddingService } from "./gen/embedviz/v1/embedding_pb";
import { IngestService } from "./gen/embedviz/v1/ingest_pb";
import { ProjectionService } from "./gen/embedviz/v1/projection_pb";
import { clearSession, loadSession, saveSession } from "./session";

/**
 * Where the edge is: the page's own origin (the edge serves this client), unless
 * `?api=http://host:port` or the build variable VITE_EMBEDVIZ_API says otherwise (dev).
 */
export function apiBaseUrl(): string {
  const fromQuery = new URLSearchParams(window.location.search).get("api");
  if (fromQuery) return fromQuery.replace(/\/+$/, "");
  const fromEnv = import.meta.env.VITE_EMBEDVIZ_API as string | undefined;
  if (fromEnv) return fromEnv.replace(/\/+$/, "");
  return window.location.origin;
}

/** Called when the session is gone for good (refresh failed): the app shows the login screen. */
let onSignedOut: (message: string) => void = () => {};
export function setSignedOutHandler(handler: (message: string) => void): void {
  onSignedOut = handler;
}

const PUBLIC_METHODS = new Set(["SignUp", "Login", "RefreshSession", "ExchangeApiKey"]);

let refreshing: Promise<boolean> | null = null;

/** Trades the refresh token for new tokens once, however many calls ask at the same time. */
export function refreshSession(): Promise<boolean> {
  refreshing ??= (async () => {
    const s = loadSession();
    if (!s?.refreshToken) return false;
    try {
      const res = await authPublic.refreshSession({ refreshToken: s.refreshToken });
      if (!res.session?.accessToken) return false;
      saveSession({ ...s, accessToken: res.session.accessToken, refreshToken: res.session.refreshToken || s.refreshToken });
      return true;
    } catch {
      return false;
    }
  })().finally(() => {
    refreshing = null;
  });
  return refreshing;
}

function expireSession(): void {
  clearSession();
  onSignedOut("Your session has ended; please log in again.");
}

const bearer: Interceptor = (next) => async (req) => {
  if (PUBLIC_METHODS.has(req.method.name)) return next(req);
  const token = loadSession()?.accessToken;
  if (token) req.header.set("authorization", `Bearer ${token}`);
  try {
    return await next(req);
  } catch (err) {
    // A server-streaming request's message cannot be sent twice; streams retry in watch().
    if (ConnectError.from(err).code !== Code.Unauthenticated || req.stream) throw err;
    if (!(await refreshSession())) {
      expireSession();
      throw err;
    }
    req.header.set("authorization", `Bearer ${loadSession()?.accessToken ?? ""}`);
    return next(req);
  }
};

const transport = createGrpcWebTransport({
  baseUrl: apiBaseUrl(),
  interceptors: [bearer],
  useBinaryFormat: true,
});

// A second transport without the interceptor, so a refresh never recurses into itself.
const publicTransport = createGrpcWebTransport({ baseUrl: apiBaseUrl(), useBinaryFormat: true });
const authPublic: Client<typeof AuthService> = createClient(AuthService, publicTransport);

export const auth: Client<typeof AuthService> = createClient(AuthService, transport);
export const ingest: Client<typeof IngestService> = createClient(IngestService, transport);
export const embedding: Client<typeof EmbeddingService> = createClient(EmbeddingService, transport);
export const projection: Client<typeof ProjectionService> = createClient(ProjectionService, transport);

/**
 * Runs a server stream, refreshing the session once if it is refused as UNAUTHENTICATED
 * (a Watch call restarts from the current state, so running it again is safe).
 */
export async function* withAuthRetry<T>(open: () => AsyncIterable<T>): AsyncGenerator<T> {
  let retried = false;
  for (;;) {
    let received = false;
    try {
      for await (const msg of open()) {
        received = true;
        yield msg;
      }
      return;
    } catch (err) {
      const unauthenticated = ConnectError.from(err).code === Code.Unauthenticated;
      if (!unauthenticated || retried || received) throw err;
      retried = true;
      if (!(await refreshSession())) {
        expireSession();
        throw err;
      }
    }
  }
}

/** The message a person should read for any error: the server's own words for gRPC errors. */
export function errorMessage(err: unknown): string {
  if (err instanceof ConnectError || (err as { name?: string })?.name === "ConnectError") {
    const e = ConnectError.from(err);
    const code = Code[e.code] ?? String(e.code);
    return e.rawMessage ? `${e.rawMessage} (${code})` : `request failed (${code})`;
  }
  if (err instanceof Error) return err.message;
  return String(err);
}

export { Code, ConnectError };
