// The user's page: sign in, drop songs in, watch them through the queue, play the stems.
import { api, webConfig } from "./api.js";
import { wireNotice } from "./notice.js";
import { JobList } from "./jobs.js";
import { StemPlayer } from "./player.js";
import { setUpUploads } from "./upload.js";
import { el } from "./dom.js";
import {
  sendMagicLink, session, saveSession, signInWithPassword, signOut, takeFromLink,
} from "./session.js";

const $ = (/** @type {string} */ id) => /** @type {any} */ (document.getElementById(id));

/** @type {JobList | null} */
let jobs = null;

async function boot() {
  wireNotice();
  const config = await webConfig();
  takeFromLink(config);
  // a sign-in link opened in a tab already on this page changes only the fragment
  window.addEventListener("hashchange", () => takeFromLink(config) && location.reload());
  $("sign-out").addEventListener("click", () => {
    signOut();
    location.reload();
  });
  if (session()) {
    await showApp(config);
  } else {
    showSignIn(config);
  }
}

/** @param {any} config */
function showSignIn(config) {
  $("app").hidden = true;
  $("sign-out").hidden = true;
  $("who").textContent = "";
  $("signin").hidden = false;
  const supabase = config && config.supabase_url && config.supabase_anon_key;
  $("signin-local").hidden = !(config && config.dev_auth);
  $("email-form").hidden = !supabase;
  $("signin-none").hidden = Boolean(supabase || (config && config.dev_auth));
  $("token-form").hidden = Boolean(supabase);
  $("token-form").onsubmit = (/** @type {Event} */ event) => {
    event.preventDefault();
    saveSession({ access_token: $("token-input").value.trim() });
    location.reload();
  };
  if (!supabase) return;
  const say = (/** @type {string} */ text, /** @type {string} */ kind) => {
    $("email-form").querySelector(".said")?.remove();
    $("email-form").append(el("p", { class: `said ${kind}`, role: "status" }, text));
  };
  $("email-form").onsubmit = async (/** @type {Event} */ event) => {
    event.preventDefault();
    try {
      await signInWithPassword(config.supabase_url, config.supabase_anon_key, $("email").value, $("password").value);
      location.reload();
    } catch (error) {
      say(`Not signed in: ${error.message}`, "error");
    }
  };
  $("magic-link").onclick = async () => {
    try {
      await sendMagicLink(config.supabase_url, config.supabase_anon_key, $("email").value);
      say("Check your email: the link in it signs you in here.", "ok");
    } catch (error) {
      say(`No link sent: ${error.message}`, "error");
    }
  };
}

/** @param {any} config */
async function showApp(config) {
  $("signin").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = false;
  const signedIn = session();
  $("who").textContent = signedIn?.email || (signedIn?.supabase_url ? "signed in" : "local user");
  const models = $("model");
  const list = config?.models || [];
  models.replaceChildren(...list.map((/** @type {string} */ m) =>
    el("option", { value: m === config.default_model ? "" : m }, m === config.default_model ? `${m} (default)` : m)));
  const player = new StemPlayer($("player"));
  jobs = new JobList($("jobs"), $("jobs-empty"), (job) => player.open(job));
  setUpUploads($("upload-form"), config, (job, deduplicated) => {
    const from = job.reused_from; // the job whose stems these are, where the API says so
    const note = deduplicated || from
      ? `The same audio with the same options was separated before${from ? ` (job ${from})` : ""}: its stems are reused.`
      : undefined;
    jobs?.upsert(job, note);
  });
  window.addEventListener("stemfleet:signed-out", () => {
    jobs?.stop();
    player.close();
    showSignIn(config);
  }, { once: true });
  const load = async () => {
    try {
      await jobs?.load();
    } catch (error) {
      if (error.status !== 401) setTimeout(load, 3000); // unreachable: said, and tried again
    }
  };
  await load();
}

window.addEventListener("online", () => api("/v1/jobs?limit=1").catch(() => {}));
boot();
