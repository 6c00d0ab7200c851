// Who is signed in: the local token (the embedded default's sign-in link, #token=…) or a
// Supabase Auth session (email + password or magic link), refreshed before it expires.

let KEY = "stemfleet.session";
const REFRESH_MARGIN_S = 60;

/**
 * @typedef {{access_token: string, refresh_token?: string, expires_at?: number,
 *            supabase_url?: string, anon_key?: string, email?: string}} Session
 */

/** The operator's page keeps its (service) token apart from a user's session. */
export function useSessionKey(/** @type {string} */ key) {
  KEY = key;
}

/** @returns {Session | null} */
export function session() {
  try {
    return JSON.parse(localStorage.getItem(KEY) || "null");
  } catch {
    return null;
  }
}

/** @param {Session} value */
export function saveSession(value) {
  localStorage.setItem(KEY, JSON.stringify(value));
}

export function signOut() {
  localStorage.removeItem(KEY);
}

/**
 * Take a token from the address bar: `#token=…` (the local link) or the fragment Supabase
 * redirects a magic link to (`#access_token=…&refresh_token=…&expires_in=…`). The fragment
 * is removed from the address bar either way.
 * @param {{supabase_url?: string | null, supabase_anon_key?: string | null} | null} config
 * @returns {boolean} whether a session was taken
 */
export function takeFromLink(config) {
  const fragment = new URLSearchParams(location.hash.replace(/^#/, ""));
  const local = fragment.get("token");
  const access = fragment.get("access_token");
  if (!local && !access) return false;
  history.replaceState(null, "", location.pathname + location.search);
  if (local) {
    saveSession({ access_token: local });
  } else if (access) {
    saveSession({
      access_token: access,
      refresh_token: fragment.get("refresh_token") || undefined,
      expires_at: Date.now() / 1000 + Number(fragment.get("expires_in") || 3600),
      supabase_url: config?.supabase_url || undefined,
      anon_key: config?.supabase_anon_key || undefined,
      email: claims(access).email,
    });
  }
  return true;
}

/** A JWT's claims, unverified (for display only: the API verifies). @param {string} token */
function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part));
  } catch {
    return {};
  }
}

/** @param {string} url @param {string} anonKey @param {string} path @param {any} body */
async function gotrue(url, anonKey, path, body) {
  const answer = await fetch(`${url.replace(/\/$/, "")}/auth/v1/${path}`, {
    method: "POST",
    headers: { apikey: anonKey, "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const data = await answer.json().catch(() => ({}));
  if (!answer.ok) {
    throw new Error(data.error_description || data.msg || data.message || "sign-in failed");
  }
  return data;
}

/** @param {string} url @param {string} anonKey @param {any} data @returns {Session} */
function fromGotrue(url, anonKey, data) {
  return {
    access_token: data.access_token,
    refresh_token: data.refresh_token,
    expires_at: data.expires_at || Date.now() / 1000 + Number(data.expires_in || 3600),
    supabase_url: url,
    anon_key: anonKey,
    email: data.user?.email,
  };
}

/** Supabase Auth, email and password. */
export async function signInWithPassword(url, anonKey, email, password) {
  const data = await gotrue(url, anonKey, "token?grant_type=password", { email, password });
  saveSession(fromGotrue(url, anonKey, data));
}

/** Supabase Auth: email a magic link that comes back to this page. */
export async function sendMagicLink(url, anonKey, email) {
  const back = encodeURIComponent(location.origin + location.pathname);
  await gotrue(url, anonKey, `otp?redirect_to=${back}`, { email });
}

/** The access token to send now, refreshed first when it is about to expire. */
export async function currentToken() {
  const current = session();
  if (!current) return null;
  const expiring = current.expires_at && current.expires_at - Date.now() / 1000 < REFRESH_MARGIN_S;
  if (expiring && current.refresh_token && current.supabase_url && current.anon_key) {
    try {
      const data = await gotrue(current.supabase_url, current.anon_key,
        "token?grant_type=refresh_token", { refresh_token: current.refresh_token });
      const next = fromGotrue(current.supabase_url, current.anon_key, data);
      next.email = next.email || current.email;
      saveSession(next);
      return next.access_token;
    } catch {
      return current.access_token; // the API says whether it still holds (401: sign in again)
    }
  }
  return current.access_token;
}
