// The stem player: one <audio> per stem, started together and kept in step with the first;
// mute, solo and volume per stem, one seek bar, a waveform per stem, a download per stem.
import { el, duration, fileName } from "./dom.js";
import { drawWaveform } from "./waveform.js";
import { archiveUrl } from "./jobs.js";

const DRIFT_S = 0.08; // a stem further than this from the first one is put back in step

export class StemPlayer {
  /** @param {HTMLElement} section */
  constructor(section) {
    this.section = section;
    /** @type {{name: string, audio: HTMLAudioElement, muted: boolean, solo: boolean, row: HTMLElement}[]} */
    this.stems = [];
    this.jobId = "";
  }

  /** @param {any} job */
  open(job) {
    this.close();
    this.jobId = job.id;
    const names = Object.keys(job.stems || {}).sort();
    this.playButton = el("button", { type: "button", class: "primary", "data-action": "play-all",
      "aria-label": "Play all stems" }, "▶ Play");
    this.seek = el("input", { type: "range", min: "0", max: "0", step: "0.01", value: "0",
      class: "seek", "aria-label": "Position" });
    this.clock = el("span", { class: "clock small" }, "0 s");
    const rows = names.map((name) => this.stemRow(name, job.stems[name].url));
    const closeButton = el("button", { type: "button", class: "small", "aria-label": "Close the player" }, "Close");
    closeButton.addEventListener("click", () => this.close());
    this.section.replaceChildren(
      el("div", { class: "job-head" },
        el("h2", { id: "player-title" }, `Stems of ${fileName(job.input_key)}`), closeButton),
      el("div", { class: "transport" }, this.playButton, this.seek, this.clock),
      el("ul", { class: "stems" }, ...rows),
      el("p", {}, el("a", { class: "button", href: archiveUrl(job.id), download: "" }, "Download all stems (.zip)")),
    );
    this.section.hidden = false;
    this.section.dataset.job = job.id;
    const first = this.stems[0]?.audio;
    if (!first) return;
    this.playButton.addEventListener("click", () => (first.paused ? this.play() : this.pause()));
    this.seek.addEventListener("input", () => this.seekTo(Number(this.seek.value)));
    first.addEventListener("loadedmetadata", () => { this.seek.max = String(first.duration); });
    first.addEventListener("timeupdate", () => this.tick());
    first.addEventListener("ended", () => { this.pause(); this.seekTo(0); });
    this.section.addEventListener("keydown", (event) => {
      const target = /** @type {HTMLElement} */ (event.target);
      if (event.key === " " && !["BUTTON", "INPUT", "A"].includes(target.tagName)) {
        event.preventDefault();
        this.playButton.click();
      }
    });
    this.section.scrollIntoView({ block: "nearest" });
    this.playButton.focus();
  }

  /** @param {string} name @param {string} url */
  stemRow(name, url) {
    const audio = /** @type {HTMLAudioElement} */ (el("audio", { preload: "auto", src: url, "data-stem": name }));
    const canvas = el("canvas", { class: "wave", "aria-hidden": "true" });
    const head = el("div", { class: "playhead" });
    const wave = el("div", { class: "wave-box", title: "click to seek" }, canvas, head);
    const mute = el("button", { type: "button", class: "small", "data-action": "mute", "aria-pressed": "false",
      "aria-label": `Mute ${name}` }, "Mute");
    const solo = el("button", { type: "button", class: "small", "data-action": "solo", "aria-pressed": "false",
      "aria-label": `Solo ${name}` }, "Solo");
    const volume = el("input", { type: "range", min: "0", max: "1", step: "0.01", value: "1",
      "data-action": "volume", "aria-label": `Volume of ${name}` });
    const download = el("a", { href: url, download: "", class: "small", "aria-label": `Download ${name}` }, "Download");
    const row = el("li", { class: "stem", "data-stem": name },
      el("div", { class: "stem-head" }, el("strong", {}, name), mute, solo, volume, download), wave, audio);
    const stem = { name, audio, muted: false, solo: false, row };
    this.stems.push(stem);
    mute.addEventListener("click", () => { stem.muted = !stem.muted; this.apply(); });
    solo.addEventListener("click", () => { stem.solo = !stem.solo; this.apply(); });
    volume.addEventListener("input", () => { audio.volume = Number(volume.value); });
    wave.addEventListener("click", (event) => {
      const box = wave.getBoundingClientRect();
      const first = this.stems[0].audio;
      if (first.duration) this.seekTo(((event.clientX - box.left) / box.width) * first.duration);
    });
    drawWaveform(canvas, url);
    return row;
  }

  /** Who is heard: not muted, and soloed when any stem is. */
  apply() {
    const soloing = this.stems.some((s) => s.solo);
    for (const stem of this.stems) {
      stem.audio.muted = stem.muted || (soloing && !stem.solo);
      stem.row.classList.toggle("silent", stem.audio.muted);
      stem.row.querySelector('[data-action="mute"]')?.setAttribute("aria-pressed", String(stem.muted));
      stem.row.querySelector('[data-action="solo"]')?.setAttribute("aria-pressed", String(stem.solo));
    }
  }

  async play() {
    const at = this.stems[0].audio.currentTime;
    for (const { audio } of this.stems) audio.currentTime = at;
    this.playButton.textContent = "❚❚ Pause";
    this.playButton.setAttribute("aria-label", "Pause all stems");
    try {
      await Promise.all(this.stems.map(({ audio }) => audio.play()));
    } catch (error) {
      this.pause();
      this.section.append(el("p", { class: "error" }, `Cannot play: ${error.message}`));
    }
  }

  pause() {
    for (const { audio } of this.stems) audio.pause();
    if (!this.playButton) return;
    this.playButton.textContent = "▶ Play";
    this.playButton.setAttribute("aria-label", "Play all stems");
  }

  /** @param {number} seconds */
  seekTo(seconds) {
    for (const { audio } of this.stems) audio.currentTime = seconds;
    this.tick();
  }

  /** Keep the others on the first stem's clock; move the seek bar and playheads. */
  tick() {
    const first = this.stems[0].audio;
    const now = first.currentTime;
    for (const { audio } of this.stems.slice(1)) {
      if (!first.paused && Math.abs(audio.currentTime - now) > DRIFT_S) audio.currentTime = now;
    }
    this.seek.value = String(now);
    this.clock.textContent = `${duration(now)} / ${duration(first.duration)}`;
    const fraction = first.duration ? now / first.duration : 0;
    for (const { row } of this.stems) {
      /** @type {HTMLElement} */ (row.querySelector(".playhead")).style.left = `${fraction * 100}%`;
    }
  }

  close() {
    this.pause();
    for (const { audio } of this.stems) audio.removeAttribute("src");
    this.stems = [];
    this.section.hidden = true;
    this.section.replaceChildren();
  }
}
