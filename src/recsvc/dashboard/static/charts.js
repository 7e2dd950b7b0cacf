// Charts drawn with the vendored uPlot (vendor/uplot, loaded as a classic script: window.uPlot).

// Distinguishable on white, each at least 3:1 against it.
const PALETTE = [
  "#1d4ed8", "#c2410c", "#15803d", "#7e22ce", "#b91c1c", "#0e7490",
  "#a16207", "#be185d", "#4d7c0f", "#475569", "#0369a1", "#9a3412",
];

// One day either side when all points share one x (a single version): uPlot needs a range.
const padded = (u, min, max) => (min === max ? [min - 86400, max + 86400] : [min, max]);

function size(el) {
  return { width: Math.max(280, el.clientWidth || 600), height: 240 };
}

function draw(el, options, data) {
  if (el._chart) el._chart.destroy();
  el.replaceChildren();
  const legend = { live: false };
  el._chart = new window.uPlot({ ...size(el), legend, ...options }, data, el);
  el.dataset.drawn = "true";
}

// Events per hour by type, the last `hours` hours of `series` ({start, hours, counts}: per
// type, one count per hour from `start` on, as GET /v1/stats/overview answers). A type keeps its
// colour across charts: its place among all the series' types picks it.
export function hourlyChart(el, series, hours) {
  const all = Object.keys(series.counts).sort();
  const first = Date.parse(series.start) / 1000 + (series.hours - hours) * 3600;
  const xs = Array.from({ length: hours }, (_, i) => first + i * 3600);
  const ys = all.map((t) => series.counts[t].slice(series.hours - hours));
  const shown = all.map((t, i) => i).filter((i) => ys[i].some((n) => n > 0));
  const total = ys.flat().reduce((s, n) => s + n, 0);
  el.setAttribute("aria-label", `${el.getAttribute("aria-label").split(":")[0]}: ${total} events of ${shown.length} types`);
  draw(el, {
    scales: { x: { time: true } },
    series: [{ label: "hour (UTC)" }, ...shown.map((i) => ({
      label: all[i], stroke: PALETTE[i % PALETTE.length], width: 2, points: { show: false },
    }))],
    axes: [{}, { label: "events", size: 60 }],
    tzDate: (ts) => window.uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
  }, [xs, ...shown.map((i) => ys[i])]);
}

// ndcg@10 of each version and of its popularity baseline, by training time.
export function versionsChart(el, versions) {
  const ordered = [...versions].sort((a, b) => a.created_at.localeCompare(b.created_at));
  const value = (m) => (m && typeof m["ndcg@10"] === "number" ? m["ndcg@10"] : null);
  const xs = ordered.map((v) => Date.parse(v.created_at) / 1000);
  draw(el, {
    scales: { x: { time: true, range: padded } },
    series: [
      { label: "trained (UTC)" },
      { label: "ndcg@10", stroke: PALETTE[0], width: 2, points: { show: true, size: 7 } },
      { label: "popularity baseline", stroke: PALETTE[1], width: 2, dash: [6, 4], points: { show: true, size: 7 } },
    ],
    axes: [{}, { label: "ndcg@10", size: 60 }],
    tzDate: (ts) => window.uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
  }, [xs, ordered.map((v) => value(v.metrics)), ordered.map((v) => value(v.baseline_metrics))]);
}
