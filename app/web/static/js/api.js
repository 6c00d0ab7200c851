// The API client of both pages: the bearer token, error messages a person can act on, and the
// one place that notices an unreachable API or an expired session.
import { currentToken, signOut } from "./session.js";

/** An answer that is not a success, with the API's own message. */
export class ApiError extends Error {
  /** @param {number} status @param {string} code @param {string} message */
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** @type {((message: string, kind: string) => void)} */
let showNotice = () => {};

/** Where unreachable / expired messages go (the page's notice bar). */
export function onNotice(handler) {
  showNotice = handler;
}

export const UNREACHABLE =
  "The stemfleet API is not answering. Check that it is running (stemfleet up) and that you " +
  "are online; this page retries by itself.";
export const EXPIRED = "Your session has expired or its token is no longer valid: sign in again.";

/**
 * Turn a failed answer into an ApiError; a 401 signs out and says so.
 * @param {number} status @param {any} body
 */
export function failure(status, body) {
  const error = body && body.error ? body.error : {};
  const message = error.message || `the API answered ${status}`;
  if (status === 401) {
    signOut();
    showNotice(EXPIRED, "error");
    window.dispatchEvent(new Event("stemfleet:signed-out"));
    return new ApiError(status, error.code || "unauthorized", EXPIRED);
  }
  return new ApiError(status, error.code || "error", message);
}

/**
 * Call the API with the session's token.
 * @param {string} path
 * @param {{method?: string, json?: any, headers?: Record<string, string>}} [options]
 * @returns {Promise<any>}
 */
export async function api(path, options = {}) {
  const token = await currentToken();
  const headers = { ...(options.headers || {}) };
  if (token) headers.Authorization = `Bearer ${token}`;
  let body;
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(options.json);
  }
  let answer;
  try {
    answer = await fetch(path, { method: options.method || "GET", headers, body });
  } catch {
    showNotice(UNREACHABLE, "error");
    throw new ApiError(0, "unreachable", UNREACHABLE);
  }
  showNotice("", "");
  const text = await answer.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!answer.ok) throw failure(answer.status, data);
  return data;
}

/**
 * Send a body with upload progress (fetch has none): multipart to the API, or a presigned PUT.
 * @param {string} method @param {string} url
 * @param {Blob | FormData | string} body @param {Record<string, string>} headers
 * @param {(fraction: number) => void} progress
 * @returns {Promise<{status: number, data: any, headers: (name: string) => string | null}>}
 */
export function send(method, url, body, headers, progress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, url);
    for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) progress(event.loaded / event.total);
    };
    xhr.onerror = () => {
      showNotice(UNREACHABLE, "error");
      reject(new ApiError(0, "unreachable", UNREACHABLE));
    };
    xhr.onload = () => {
      let data = null;
      try {
        data = xhr.responseText ? JSON.parse(xhr.responseText) : null;
      } catch {
        data = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) {
        progress(1);
        resolve({ status: xhr.status, data, headers: (name) => xhr.getResponseHeader(name) });
      } else {
        reject(failure(xhr.status, data));
      }
    };
    xhr.send(body);
  });
}

/** The page's configuration (no token needed). */
export async function webConfig() {
  try {
    const answer = await fetch("/v1/web/config");
    if (answer.ok) return await answer.json();
  } catch {
    showNotice(UNREACHABLE, "error");
  }
  return null;
}
