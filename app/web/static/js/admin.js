// The operator's page: the bill against the budgets, the queue, the fleet, cost per job and
// the scaler's decisions. Service token only; refreshed every few seconds.
import { api } from "./api.js";
import { wireNotice } from "./notice.js";
import { barChart, figure, gauge, gaugeText, money } from "./chart.js";
import { el, duration } from "./dom.js";
import { saveSession, session, signOut, takeFromLink, useSessionKey } from "./session.js";

const REFRESH_MS = 10000;
const DAYS_SHOWN = 14;
const $ = (/** @type {string} */ id) => /** @type {any} */ (document.getElementById(id));
/** @type {number | undefined} */
let timer;

/**
 * A table from rows.
 * @param {string[]} headings @param {(string | number | Node)[][]} rows @param {string} empty
 */
function table(headings, rows, empty) {
  if (!rows.length) return el("p", { class: "muted" }, empty);
  const numeric = (/** @type {any} */ v) => typeof v === "number";
  return el("table", {},
    el("thead", {}, el("tr", {}, ...headings.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...rows.map((row) => el("tr", {},
      ...row.map((cell) => el("td", { class: numeric(cell) ? "num" : undefined },
        numeric(cell) ? String(cell) : cell))))));
}

const short = (/** @type {string | null} */ id) => (id ? String(id).slice(0, 8) : "–");
const time = (/** @type {string | null} */ at) => (at ? new Date(at).toLocaleString() : "–");

/** The last DAYS_SHOWN UTC days, oldest first, with what was spent on each. */
function dailyBars(/** @type {any[]} */ daily) {
  const spent = new Map(daily.map((d) => [String(d.day), Number(d.cost_usd)]));
  const bars = [];
  for (let back = DAYS_SHOWN - 1; back >= 0; back--) {
    const day = new Date(Date.now() - back * 86400000).toISOString().slice(0, 10);
    bars.push({ label: day.slice(5), value: spent.get(day) || 0, day });
  }
  return bars;
}

/** @param {any} spend */
function renderSpend(spend) {
  const { now, budget } = spend;
  const meter = (/** @type {string} */ title, /** @type {number} */ value, /** @type {number} */ limit) =>
    figure(`${title}: ${gaugeText(value, limit)}`, gauge(value, limit), `${title} against its limit`);
  $("gauges").replaceChildren(
    meter("Today (UTC)", Number(now.today_usd), budget.daily_usd),
    meter("This month", Number(now.month_usd), budget.monthly_usd),
    meter("Billed now, per hour", Number(now.hourly_usd), budget.max_hourly_usd),
  );
  const bars = dailyBars(spend.daily);
  const chart = barChart(bars, { limit: budget.daily_usd, limitLabel: "daily budget", width: 640 });
  bars.forEach((bar, i) => chart.querySelectorAll("rect.bar")[i]?.setAttribute("data-day", bar.day));
  $("spend-chart").replaceChildren(figure(`Spend per day, last ${DAYS_SHOWN} days`, chart,
    "spend per UTC day against the daily budget"));
}

/** @param {any} queue */
function renderQueue(queue) {
  const kinds = [...new Set(queue.depth.map((/** @type {any} */ r) => r.kind))];
  const count = (/** @type {string} */ kind, /** @type {string} */ status) =>
    queue.depth.find((/** @type {any} */ r) => r.kind === kind && r.status === status)?.jobs || 0;
  const latest = (/** @type {string} */ kind) => queue.hourly.find((/** @type {any} */ h) => h.kind === kind);
  const oldest = (/** @type {string} */ kind) => queue.oldest.find((/** @type {any} */ o) => o.kind === kind);
  const hours = [...new Set(queue.hourly.map((/** @type {any} */ h) => h.hour))].slice(0, 12).reverse();
  const p95 = hours.map((hour) => ({
    label: new Date(hour).getHours().toString().padStart(2, "0") + "h",
    value: Math.max(...queue.hourly.filter((/** @type {any} */ h) => h.hour === hour).map((/** @type {any} */ h) => h.wait_p95_s)),
  }));
  $("queue-charts").replaceChildren(
    figure("Waiting now, by kind", barChart(kinds.map((k) => ({ label: k, value: count(k, "queued") })), { unit: "" }),
      "queued jobs by kind"),
    figure("Wait p95 by hour (s)", barChart(p95, { unit: "s" }), "95th percentile wait per hour"),
  );
  $("queue-table").replaceChildren(table(
    ["kind", "queued", "running", "oldest waiting", "wait p50", "wait p95", "run p50"],
    kinds.map((k) => [k, count(k, "queued"), count(k, "running"), duration(oldest(k)?.oldest_age_s ?? null),
      duration(latest(k)?.wait_p50_s ?? null), duration(latest(k)?.wait_p95_s ?? null),
      duration(latest(k)?.run_p50_s ?? null)]),
    "No jobs yet."));
}

/** @param {any[]} workers */
function renderFleet(workers) {
  $("fleet").replaceChildren(table(
    ["machine", "provider", "state", "worker", "current job", "jobs", "heartbeat"],
    workers.map((w) => [w.machine_id, `${w.provider}${w.gpu ? ` · ${w.gpu}` : ""}`,
      w.draining ? `${w.state} (draining)` : w.state, short(w.id), short(w.current_job_id),
      w.running_jobs ?? 0, `${duration(w.heartbeat_age_s)} ago`]),
    "No machines running: the scaler starts one when a job is queued."));
}

/** @param {any} activity */
function renderActivity(activity) {
  $("costs").replaceChildren(table(
    ["job", "kind", "status", "audio", "machine", "run", "$/h", "cost"],
    activity.job_costs.map((/** @type {any} */ j) => [short(j.job_id), j.kind, j.status, duration(j.audio_s),
      j.machine_id || "–", duration(j.run_s), money(j.hourly_usd), `$${Number(j.cost_usd || 0).toFixed(4)}`]),
    "No job has run yet."));
  $("decisions").replaceChildren(table(
    ["when", "queued", "machines → target", "did", "notes"],
    activity.decisions.map((/** @type {any} */ d) => [time(d.started_at), d.queued ?? 0,
      `${d.machines ?? 0} → ${d.target ?? 0}`,
      el("ul", {}, ...d.actions.map((/** @type {any} */ a) => el("li", { class: a.ok ? "" : "error" },
        `${a.kind} ${a.machine_id || "(new)"}: ${a.reason}${a.ok ? "" : ` (failed: ${a.detail})`}`)),
        ...d.errors.map((/** @type {any} */ e) => el("li", { class: "error" }, `${e.stage}: ${e.error}`))),
      (d.notes || []).join("; ")]),
    "The scaler has not started or stopped anything yet."));
}

async function refresh() {
  try {
    const [spend, queue, workers, activity] = await Promise.all([
      api("/v1/admin/spend"), api("/v1/admin/queue"), api("/v1/admin/workers"), api("/v1/admin/activity"),
    ]);
    renderSpend(spend);
    renderQueue(queue);
    renderFleet(workers.workers);
    renderActivity(activity);
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.loaded = "true";
  } catch (error) {
    if (error.status === 403) {
      showSignIn(error.message);
    }
  }
}

/** @param {string} [problem] */
function showSignIn(problem) {
  clearInterval(timer);
  if (problem) signOut();
  $("dashboard").hidden = true;
  $("refresh").hidden = true;
  $("sign-out").hidden = true;
  $("signin").hidden = false;
  $("signin-error").hidden = !problem;
  $("signin-error").textContent = problem || "";
}

function boot() {
  useSessionKey("stemfleet.operator");
  wireNotice();
  takeFromLink(null);
  window.addEventListener("hashchange", () => takeFromLink(null) && location.reload());
  $("token-form").addEventListener("submit", (/** @type {Event} */ event) => {
    event.preventDefault();
    saveSession({ access_token: $("token-input").value.trim() });
    location.reload();
  });
  $("sign-out").addEventListener("click", () => { signOut(); location.reload(); });
  $("refresh").addEventListener("click", refresh);
  window.addEventListener("stemfleet:signed-out", () => showSignIn());
  if (!session()) return showSignIn();
  $("dashboard").hidden = false;
  $("refresh").hidden = false;
  $("sign-out").hidden = false;
  refresh();
  timer = setInterval(refresh, REFRESH_MS);
}

boot();
