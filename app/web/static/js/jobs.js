// My jobs, newest first, kept live: one event stream (SSE) per job still in flight, a poll for
// any beyond the browser's connection budget, and a row per job that says what to do next.
import { api } from "./api.js";
import { currentToken, session } from "./session.js";
import { el, duration, fileName } from "./dom.js";

const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const MAX_STREAMS = 4; // a browser opens about 6 connections per host: leave room for the rest
const POLL_MS = 3000;

/** What a person can do about a failed job, by error_kind. */
const ADVICE = {
  undecodable: "The file could not be read as audio: try another file, or export it as wav, flac or mp3.",
  too_long: "The song is longer than this fleet accepts: cut it, or choose “preview clip”.",
  invalid_params: "Change the options (model, stems, format) and submit it again.",
  out_of_memory: "The worker ran out of memory on this song: try a preview clip or a shorter file.",
  lease_expired: "The worker stopped while working on it: submit it again.",
  not_found: "The uploaded file is gone: upload it again.",
};
const DEFAULT_ADVICE = "Submit it again; if it fails again, tell the operator the job id.";

/** @param {any} job */
export function advice(job) {
  return ADVICE[/** @type {keyof typeof ADVICE} */ (job.error_kind)] || DEFAULT_ADVICE;
}

/** @param {any} job */
function summary(job) {
  const p = job.params || {};
  const stems = p.two_stems ? `${p.two_stems} + the rest` : p.stems ? p.stems.join(", ") : "all stems";
  const format = p.bitrate ? `${p.format} ${p.bitrate} kbps` : p.format || "wav";
  return [job.kind === "preview" ? "preview" : null, p.model, stems, format].filter(Boolean).join(" · ");
}

/** @param {string} jobId */
export function archiveUrl(jobId) {
  const token = session()?.access_token || "";
  return `/v1/jobs/${jobId}/stems.zip?access_token=${encodeURIComponent(token)}`;
}

export class JobList {
  /**
   * @param {HTMLElement} list @param {HTMLElement} empty
   * @param {(job: any) => void} onPlay
   */
  constructor(list, empty, onPlay) {
    this.list = list;
    this.empty = empty;
    this.onPlay = onPlay;
    /** @type {Map<string, any>} */
    this.jobs = new Map();
    /** @type {Map<string, string>} reused-stems notes, by job id */
    this.notes = new Map();
    /** @type {Map<string, EventSource>} */
    this.streams = new Map();
    /** @type {Set<string>} jobs whose stream was refused (429, 404…): polled instead */
    this.refused = new Set();
    this.timer = setInterval(() => this.poll(), POLL_MS);
  }

  async load() {
    const page = await api("/v1/jobs?limit=50");
    for (const job of page.jobs.slice().reverse()) this.upsert(job);
    this.empty.hidden = this.jobs.size > 0;
  }

  stop() {
    clearInterval(this.timer);
    for (const stream of this.streams.values()) stream.close();
    this.streams.clear();
  }

  /** @param {any} job @param {string} [note] */
  upsert(job, note) {
    if (note) this.notes.set(job.id, note);
    const known = this.jobs.get(job.id);
    // an older answer (a poll that crossed an event) never rolls a row back
    if (known && known.updated_at > job.updated_at) return;
    this.jobs.set(job.id, job);
    let row = /** @type {HTMLElement | null} */ (this.list.querySelector(`[data-id="${job.id}"]`));
    if (!row) {
      row = el("li", { class: "job", "data-id": job.id });
      // newest first, whatever order the answers come in
      const older = [...this.list.children].find(
        (other) => (this.jobs.get(other.getAttribute("data-id") || "")?.created_at || "") < job.created_at);
      this.list.insertBefore(row, older || null);
    }
    this.render(row, job);
    this.empty.hidden = true;
    if (!FINAL.has(job.status)) this.follow(job.id);
  }

  /** @param {HTMLElement} row @param {any} job */
  render(row, job) {
    const focused = row.contains(document.activeElement)
      ? document.activeElement?.getAttribute("data-action") : null;
    row.dataset.status = job.status;
    const children = /** @type {HTMLElement[]} */ ([
      el("div", { class: "job-head" },
        el("strong", { class: "name" }, fileName(job.input_key)),
        el("span", { class: `badge ${job.status}` }, job.status === "succeeded" ? "done" : job.status)),
      el("div", { class: "muted small" }, summary(job)),
      this.state(job),
      this.notes.has(job.id) ? el("p", { class: "note" }, this.notes.get(job.id)) : null,
      this.actions(job),
    ].filter(Boolean));
    // a repeated answer (the final event can come twice) draws nothing: replacing the same
    // content would detach the buttons under a user's pointer
    const same = children.length === row.children.length
      && children.every((child, i) => child.isEqualNode(row.children[i]));
    if (same) return;
    row.replaceChildren(...children);
    if (focused) row.querySelector(`[data-action="${focused}"]`)?.focus();
  }

  /** @param {any} job */
  state(job) {
    if (job.status === "queued") {
      const where = job.queue_position ? `position ${job.queue_position} in the queue` : "waiting for a worker";
      return el("p", { class: "state" }, `Queued: ${where}.`);
    }
    if (job.status === "running") {
      const percent = Math.round(job.progress * 100);
      return el("div", { class: "state" },
        el("progress", { class: "job-progress", max: "1", value: String(job.progress),
          "aria-label": `separating: ${percent}%` }),
        el("span", { class: "small" }, `separating… ${percent}%`));
    }
    if (job.status === "succeeded") {
      const took = job.timings?.run_s;
      return el("p", { class: "state" }, `Done${took !== undefined ? ` in ${duration(took)}` : ""}.`);
    }
    if (job.status === "failed") {
      return el("div", { class: "state failed" },
        el("p", { class: "error reason" }, job.error || "it failed"),
        el("p", { class: "advice" }, advice(job)));
    }
    return el("p", { class: "state muted" }, "Cancelled.");
  }

  /** @param {any} job */
  actions(job) {
    const box = el("div", { class: "row actions" });
    if (job.status === "queued" || job.status === "running") {
      const cancel = el("button", { type: "button", "data-action": "cancel" }, "Cancel");
      cancel.addEventListener("click", () => this.cancel(job.id, cancel));
      box.append(cancel);
    }
    if (job.status === "succeeded" && job.stems) {
      const play = el("button", { type: "button", "data-action": "play", class: "primary" }, "Play stems");
      play.addEventListener("click", () => this.onPlay(this.jobs.get(job.id)));
      box.append(play, el("a", { class: "button", "data-action": "zip", href: archiveUrl(job.id),
        download: "" }, "Download all (.zip)"));
    }
    return box;
  }

  /** @param {string} id @param {HTMLButtonElement} button */
  async cancel(id, button) {
    button.disabled = true;
    try {
      this.upsert(await api(`/v1/jobs/${id}/cancel`, { method: "POST" }));
    } catch (error) {
      button.disabled = false;
      const row = this.list.querySelector(`[data-id="${id}"]`);
      row?.append(el("p", { class: "error" }, `Not cancelled: ${error.message}`));
    }
  }

  /** Follow one job over its event stream (while the budget of streams allows). */
  async follow(id) {
    if (this.streams.has(id) || this.refused.has(id) || this.streams.size >= MAX_STREAMS) return;
    const token = await currentToken();
    if (this.streams.has(id)) return;
    const stream = new EventSource(`/v1/jobs/${id}/events?access_token=${encodeURIComponent(token || "")}`);
    this.streams.set(id, stream);
    stream.onmessage = (event) => {
      const job = JSON.parse(event.data);
      if (FINAL.has(job.status)) this.unfollow(id);
      this.upsert(job);
    };
    stream.onerror = () => {
      // a refused stream (401, 404) closes for good; a dropped one reconnects by itself.
      // Either way, one plain request tells the page what is wrong (unreachable, expired).
      if (stream.readyState === EventSource.CLOSED) {
        this.refused.add(id);
        this.unfollow(id);
      }
      api(`/v1/jobs/${id}`).then((job) => this.upsert(job)).catch(() => {});
    };
  }

  /** @param {string} id */
  unfollow(id) {
    this.streams.get(id)?.close();
    this.streams.delete(id);
    const next = [...this.jobs.values()].find(
      (j) => !FINAL.has(j.status) && !this.streams.has(j.id) && !this.refused.has(j.id));
    if (next) this.follow(next.id);
  }

  /** Jobs in flight that have no stream of their own. */
  async poll() {
    const waiting = [...this.jobs.values()].filter((j) => !FINAL.has(j.status) && !this.streams.has(j.id));
    for (const job of waiting) {
      try {
        this.upsert(await api(`/v1/jobs/${job.id}`));
      } catch {
        return;
      }
    }
  }
}
