// Plain SVG charts for the operator's page: bars against a limit line, and gauges (a value
// against its budget). No library: a few rectangles, lines and labels.

const SVG = "http://www.w3.org/2000/svg";

/**
 * @param {string} tag @param {Record<string, string | number>} attributes
 * @param {string} [text]
 * @returns {SVGElement}
 */
function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** @param {number} value @param {string} unit */
export function money(value, unit = "$") {
  const v = Number(value || 0);
  if (unit === "$") return `$${v < 10 ? v.toFixed(2) : v.toFixed(0)}`;
  return unit ? `${v.toFixed(v < 10 ? 1 : 0)}${unit}` : String(Math.round(v)); // "" = a count
}

/**
 * A captioned figure around a chart.
 * @param {string} caption @param {SVGElement} chart @param {string} [summary] text for readers
 */
export function figure(caption, chart, summary) {
  const box = document.createElement("figure");
  box.className = "chart";
  const title = document.createElement("figcaption");
  title.textContent = caption;
  box.append(title, chart);
  if (summary) chart.setAttribute("aria-label", summary);
  chart.setAttribute("role", "img");
  return box;
}

/**
 * Vertical bars with an optional limit line (a budget); a bar over the limit is drawn red.
 * @param {{label: string, value: number}[]} bars
 * @param {{limit?: number | null, limitLabel?: string, unit?: string, width?: number}} [options]
 */
export function barChart(bars, options = {}) {
  const width = options.width || 320;
  const height = 160;
  const left = 40;
  const bottom = 22;
  const top = 10;
  const unit = options.unit ?? "$";
  const limit = options.limit || 0;
  const peak = Math.max(limit * 1.15, ...bars.map((b) => b.value), unit ? 1e-9 : 1);
  const y = (/** @type {number} */ v) => top + (height - top - bottom) * (1 - v / peak);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "bars" });
  chart.append(svg("line", { class: "axis", x1: left, x2: width, y1: y(0), y2: y(0) }));
  chart.append(svg("text", { x: left - 4, y: y(peak) + 8, "text-anchor": "end" }, money(peak, unit)));
  chart.append(svg("text", { x: left - 4, y: y(0), "text-anchor": "end" }, money(0, unit)));
  const slot = (width - left) / Math.max(bars.length, 1);
  bars.forEach((bar, i) => {
    const x = left + i * slot + slot * 0.15;
    const over = limit > 0 && bar.value > limit;
    const rect = svg("rect", {
      class: over ? "bar over" : "bar", x, width: slot * 0.7,
      y: y(bar.value), height: Math.max(0, y(0) - y(bar.value)),
      "data-label": bar.label, "data-value": bar.value,
    });
    rect.append(svg("title", {}, `${bar.label}: ${money(bar.value, unit)}`));
    chart.append(rect);
    if (bars.length <= 16 || i % Math.ceil(bars.length / 8) === 0) {
      chart.append(svg("text", { x: x + slot * 0.35, y: height - 6, "text-anchor": "middle" }, bar.label));
    }
  });
  if (limit > 0) {
    chart.append(svg("line", { class: "limit", x1: left, x2: width, y1: y(limit), y2: y(limit),
      "data-limit": limit }));
    chart.append(svg("text", { x: width - 2, y: y(limit) - 3, "text-anchor": "end" },
      `${options.limitLabel || "limit"} ${money(limit, unit)}`));
  }
  return chart;
}

/**
 * One horizontal gauge: how much of a budget is used; `gaugeText` says it in words.
 * @param {number} value @param {number | null} limit
 */
export function gauge(value, limit) {
  const width = 320;
  const height = 28;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "gauge" });
  const scale = Math.max(limit || 0, value, 1e-9) * 1.1;
  const x = (/** @type {number} */ v) => (width - 4) * (v / scale) + 2;
  chart.append(svg("rect", { class: "axis", x: 2, y: 6, width: width - 4, height: 16, fill: "none",
    stroke: "currentColor" }));
  const over = limit !== null && limit > 0 && value > limit;
  chart.append(svg("rect", { class: over ? "bar over" : "bar", x: 2, y: 6,
    width: Math.max(0, x(value) - 2), height: 16, "data-value": value }));
  if (limit) {
    chart.append(svg("line", { class: "limit", x1: x(limit), x2: x(limit), y1: 2, y2: 26,
      "data-limit": limit }));
  }
  return chart;
}

/** "$3.20 (40% of $8.00)" @param {number} value @param {number | null} limit */
export function gaugeText(value, limit) {
  if (!limit) return `${money(value)} (no limit set)`;
  return `${money(value)} (${Math.round((100 * value) / limit)}% of ${money(limit)})`;
}
