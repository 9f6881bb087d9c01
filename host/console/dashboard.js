// Dashboard: today's and the last 24 hours' figures, bindings and upstreams, and two charts —
// the last hour on this gateway, per minute, and the last 24 hours of every gateway, per hour —
// refreshed while the page is shown (every 10 seconds unless the operator picks another
// interval, kept in the URL as `refresh`).

import { call } from "./api.js";
import { fmtNum, h, note } from "./ui.js";

const REFRESH = [
  ["0", "Off"],
  ["5", "5 s"],
  ["10", "10 s"],
  ["30", "30 s"],
  ["60", "1 min"],
];

/** The page's colours, read from the stylesheet (they follow light and dark mode). */
function colours() {
  const css = getComputedStyle(document.documentElement);
  const v = (name) => css.getPropertyValue(name).trim();
  return { fg: v("--fg"), muted: v("--muted"), grid: v("--line"), series: [v("--c1"), v("--c2"), v("--c3"), v("--c4")] };
}

const SERIES = [
  ["Requests", (t) => t.requests],
  ["Errors", (t) => t.errors],
  ["Intercepts", (t) => t.intercepts],
  ["Tokens", (t) => t.input_tokens + t.output_tokens],
];

/** uPlot data from a series of buckets: x in seconds, then one array per series. */
function data(buckets, key) {
  return [buckets.map((b) => b[key] / 1000), ...SERIES.map(([, get]) => buckets.map(get))];
}

/** The chart's width: its box less its padding. */
const widthOf = (el) => Math.max(240, el.clientWidth - 16);

function chart(el, title, buckets, key) {
  const c = colours();
  const axis = { stroke: c.muted, grid: { stroke: c.grid, width: 1 }, ticks: { stroke: c.grid } };
  const opts = {
    title,
    width: widthOf(el),
    height: 220,
    scales: { x: { time: true }, tok: {} },
    series: [
      {},
      ...SERIES.map(([label], i) => ({
        label,
        stroke: c.series[i],
        width: 2,
        scale: label === "Tokens" ? "tok" : "y",
        value: (_, v) => (v === null ? "–" : fmtNum(v)),
      })),
    ],
    axes: [
      { ...axis },
      { ...axis, scale: "y", label: "requests" },
      { ...axis, scale: "tok", side: 1, grid: { show: false }, label: "tokens" },
    ],
  };
  // eslint-disable-next-line no-undef
  const plot = new uPlot(opts, data(buckets, key), el);
  const fit = new ResizeObserver(() => plot.setSize({ width: widthOf(el), height: 220 }));
  fit.observe(el);
  return { update: (b) => plot.setData(data(b, key)), destroy: () => (fit.disconnect(), plot.destroy()) };
}

function tiles(d) {
  const list = [
    ["Requests today", d.today.requests],
    ["Requests (24 h)", d.last_24h.requests],
    ["Errors (24 h)", d.last_24h.errors],
    ["Tokens (24 h)", d.last_24h.input_tokens + d.last_24h.output_tokens],
    ["Intercepts (24 h)", d.last_24h.intercepts],
    ["Active bindings", d.active_bindings],
    ["Banned keys", d.banned_bindings],
    ["Upstreams healthy", `${d.healthy_upstreams} / ${d.upstreams}`],
    ["Cooling down", d.cooling_upstreams],
    ["In flight", d.in_flight],
  ];
  return list.map(([label, value]) =>
    h("div", { class: "tile" }, h("b", { text: typeof value === "number" ? fmtNum(value) : value }), label),
  );
}

export default {
  title: "Dashboard",
  async render(view, params, page) {
    const refresh = REFRESH.some(([v]) => v === params.refresh) ? Number(params.refresh) : 10;
    const d = await call("GET", "/dashboard");
    const state = note("ok", "");
    const picker = h(
      "select",
      { id: "refresh", "aria-label": "Refresh", on: { change: (ev) => page.go({ ...params, refresh: ev.target.value }) } },
      REFRESH.map(([v, label]) => h("option", { value: v, selected: Number(v) === refresh, text: label })),
    );
    const grid = h("div", { id: "tiles", class: "tiles" });
    const hourEl = h("div", { class: "chart", id: "chart-hour" });
    const dayEl = h("div", { class: "chart", id: "chart-day" });
    view.replaceChildren(
      h("h1", { text: "Dashboard" }),
      h("div", { class: "toolbar spread" }, state, h("label", { class: "inline" }, "Refresh ", picker)),
      grid,
      h("div", { class: "charts" }, hourEl, dayEl),
      h("p", {
        class: "muted small",
        text: "The last hour counts this gateway's requests as they end (it starts empty at each start). The 24-hour chart counts every gateway sharing the database, written in batches.",
      }),
    );
    state.id = "dash-state";
    const stamp = () => (state.textContent = `Updated ${new Date().toLocaleTimeString()}`);
    grid.replaceChildren(...tiles(d));
    stamp();
    let charts = [];
    if (typeof uPlot === "function") {
      charts = [chart(hourEl, "Last hour (this gateway, per minute)", d.minutes, "minute_ms"), chart(dayEl, "Last 24 hours (per hour)", d.hours, "hour_ms")];
    } else {
      hourEl.replaceChildren(note("error", "The chart library did not load."));
    }
    if (refresh) page.every(refresh * 1000, async () => {
      try {
        const next = await call("GET", "/dashboard");
        if (!page.alive) return;
        grid.replaceChildren(...tiles(next));
        charts[0]?.update(next.minutes);
        charts[1]?.update(next.hours);
        stamp();
      } catch (e) {
        state.textContent = `Could not refresh: ${e.message}`;
      }
    });
    const stop = page.stop;
    page.stop = () => {
      stop();
      charts.forEach((c) => c.destroy());
    };
  },
};
