// Dropping or picking files: each goes up with a progress bar and becomes a job. Small files
// go in the job's own multipart request; big ones straight to storage through a presigned PUT.
import { api, send } from "./api.js";
import { currentToken } from "./session.js";
import { el } from "./dom.js";

/** Files bigger than this go through POST /v1/uploads and a presigned PUT (the server's
 * STEMFLEET_WEB_PRESIGN_ABOVE_MB, from /v1/web/config). */
let presignAbove = 8 * 1024 * 1024;

/**
 * The job's kind and params from the form.
 * @param {HTMLFormElement} form
 * @returns {{kind: string, params: Record<string, any>}}
 */
export function chosenOptions(form) {
  const data = new FormData(form);
  /** @type {Record<string, any>} */
  const params = {};
  const model = String(data.get("model") || "");
  if (model) params.model = model;
  const stems = String(data.get("stems") || "");
  if (stems.startsWith("two:")) params.two_stems = stems.slice(4);
  if (stems.startsWith("some:")) params.stems = stems.slice(5).split(",");
  params.format = String(data.get("format") || "wav");
  const bitrate = String(data.get("bitrate") || "");
  if (bitrate && (params.format === "mp3" || params.format === "opus")) {
    params.bitrate = Number(bitrate);
  }
  return { kind: String(data.get("kind") || "separate"), params };
}

/**
 * Upload one file and submit its job.
 * @param {File} file @param {{kind: string, params: any}} options
 * @param {(fraction: number) => void} progress
 * @returns {Promise<{job: any, deduplicated: boolean}>}
 */
export async function submitFile(file, options, progress) {
  const token = await currentToken();
  const auth = { Authorization: `Bearer ${token}` };
  if (file.size > presignAbove) {
    const type = file.type || undefined;
    const ticket = await api("/v1/uploads", {
      method: "POST",
      json: { filename: file.name, size: file.size, content_type: type },
    });
    await send("PUT", ticket.upload_url, file, ticket.headers || {}, (f) => progress(f * 0.98));
    const body = JSON.stringify({ input_key: ticket.input_key, ...options });
    const answer = await send("POST", "/v1/jobs", body,
      { ...auth, "Content-Type": "application/json" }, () => {});
    progress(1);
    return { job: answer.data, deduplicated: answer.headers("Stemfleet-Deduplicated") === "true" };
  }
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("kind", options.kind);
  form.append("params", JSON.stringify(options.params));
  const answer = await send("POST", "/v1/jobs", form, auth, progress);
  const deduplicated = answer.headers("Stemfleet-Deduplicated") === "true";
  return { job: answer.data, deduplicated };
}

/**
 * Wire the drop zone, the file picker and the options.
 * @param {HTMLFormElement} form @param {any} config /v1/web/config
 * @param {(job: any, deduplicated: boolean) => void} onSubmitted
 */
export function setUpUploads(form, config, onSubmitted) {
  if (config && typeof config.presign_above_bytes === "number") presignAbove = config.presign_above_bytes;
  const drop = /** @type {HTMLElement} */ (form.querySelector("#drop"));
  const input = /** @type {HTMLInputElement} */ (form.querySelector("#files"));
  const list = /** @type {HTMLElement} */ (form.querySelector("#uploads"));
  const format = /** @type {HTMLSelectElement} */ (form.querySelector("#format"));
  const bitrate = /** @type {HTMLSelectElement} */ (form.querySelector("#bitrate"));

  format.addEventListener("change", () => {
    bitrate.disabled = !(format.value === "mp3" || format.value === "opus");
  });
  form.addEventListener("submit", (event) => event.preventDefault());

  /** @param {FileList | File[]} files */
  const start = (files) => {
    const options = chosenOptions(form);
    for (const file of Array.from(files)) {
      const bar = el("progress", { max: "1", value: "0" });
      const state = el("span", { class: "muted" }, "uploading…");
      const row = el("li", { class: "upload", "data-name": file.name },
        el("span", { class: "name" }, file.name), bar, state);
      list.prepend(row);
      submitFile(file, options, (fraction) => { bar.value = fraction; })
        .then(({ job, deduplicated }) => {
          row.remove();
          onSubmitted(job, deduplicated);
        })
        .catch((error) => {
          row.classList.add("failed");
          state.className = "error";
          state.textContent = `not submitted: ${error.message}`;
          const dismiss = el("button", { type: "button", class: "small" }, "Dismiss");
          dismiss.addEventListener("click", () => row.remove());
          row.append(dismiss);
        });
    }
  };

  input.addEventListener("change", () => {
    if (input.files) start(input.files);
    input.value = "";
  });
  drop.addEventListener("click", () => input.click());
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer?.files.length) start(event.dataTransfer.files);
  });
}
