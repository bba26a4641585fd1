// The signed-in session's tokens, kept in localStorage so a reload stays signed in.

const KEY = "embedviz.session";

export interface StoredSession {
  accessToken: string;
  refreshToken: string;
  email: string;
  displayName: string;
}

export function loadSession(): StoredSession | null {
  try {
    const raw = localStorage.getItem(KEY);
    if (!raw) return null;
    const s = JSON.parse(raw) as Partial<StoredSession>;
    if (typeof s.accessToken !== "string" || typeof s.refreshToken !== "string") return null;
    return { accessToken: s.accessToken, refreshToken: s.refreshToken, email: s.email ?? "", displayName: s.displayName ?? "" };
  } catch {
    return null;
  }
}

export function saveSession(s: StoredSession): void {
  localStorage.setItem(KEY, JSON.stringify(s));
}

export function clearSession(): void {
  localStorage.removeItem(KEY);
}
