// The notice bar both pages share: unreachable API, expired session.
import { onNotice } from "./api.js";

/** Show the API client's messages in #notice. */
export function wireNotice() {
  const bar = /** @type {HTMLElement} */ (document.getElementById("notice"));
  onNotice((message, kind) => {
    bar.hidden = !message;
    bar.textContent = message;
    bar.className = `notice ${kind}`;
  });
}
