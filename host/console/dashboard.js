// Dashboard: what needs attention (alerts from `/status`), today's and the last 24 hours'
// figures, and one chart per metric — the last hour on this gateway, per minute (requests,
// errors and 429s; error rate; latency and time to first byte of proxied requests; tokens) and
// the last 24 hours of every gateway, per hour (requests; tokens) — refreshed while the page is
// shown (every 10 seconds unless the operator picks another interval, kept in the URL as
// `refresh`).
//
// Each chart has one unit on its one axis, integer ticks for counts, a legend that always shows
// each series' current value (the hovered minute's while the pointer is over the chart), and an
// honest empty state: a chart with nothing to draw says so instead of inventing a scale. Times
// are in the browser's zone (named in the header), and "today" starts at its midnight.

import { call, query } from "./api.js";
import { alertsOf } from "./status.js";
import { fmtNum, h, note, zone } from "./ui.js";

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

const ms = (v) => (v < 10 ? v.toFixed(1) : fmtNum(Math.round(v)));

/**
 * The charts. `src`: the dashboard's series (`minutes` or `hours`) and its time key; `kind`:
 * `count` (integers, the legend adds the window's total), `ms` or `percent` (the legend shows
 * the value at the pointer, or the latest). `empty`: what an empty chart says.
 */
const PANELS = [
  {
    id: "requests",
    title: "Requests per minute",
    src: ["minutes", "minute_ms"],
    kind: "count",
    empty: "No requests in the last hour on this gateway.",
    series: [
      ["Requests", (m) => m.requests],
      ["Errors", (m) => m.errors],
      ["429s", (m) => m.rate_limited],
    ],
  },
  {
    id: "error-rate",
    title: "Error rate per minute (%)",
    src: ["minutes", "minute_ms"],
    kind: "percent",
    empty: "No requests in the last hour on this gateway.",
    series: [["Errors / requests", (m) => (m.requests ? (100 * m.errors) / m.requests : null)]],
  },
  {
    id: "latency",
    title: "Latency of proxied requests (ms)",
    src: ["minutes", "minute_ms"],
    kind: "ms",
    empty: "No request reached an upstream in the last hour on this gateway.",
    series: [
      ["p50", (m) => m.latency_p50_ms],
      ["p95", (m) => m.latency_p95_ms],
    ],
  },
  {
    id: "first-byte",
    title: "Time to first byte (ms; for a stream, its first token)",
    src: ["minutes", "minute_ms"],
    kind: "ms",
    empty: "No request reached an upstream in the last hour on this gateway.",
    series: [
      ["p50", (m) => m.first_byte_p50_ms],
      ["p95", (m) => m.first_byte_p95_ms],
    ],
  },
  {
    id: "tokens",
    title: "Tokens per minute",
    src: ["minutes", "minute_ms"],
    kind: "count",
    empty: "No tokens in the last hour on this gateway.",
    series: [
      ["Input", (m) => m.input_tokens],
      ["Output", (m) => m.output_tokens],
    ],
  },
  {
    id: "day-requests",
    title: "Requests per hour, last 24 h (all gateways)",
    src: ["hours", "hour_ms"],
    kind: "count",
    empty: "No requests in the last 24 hours.",
    series: [
      ["Requests", (m) => m.requests],
      ["Errors", (m) => m.errors],
      ["Intercepts", (m) => m.intercepts],
    ],
  },
  {
    id: "day-tokens",
    title: "Tokens per hour, last 24 h (all gateways)",
    src: ["hours", "hour_ms"],
    kind: "count",
    empty: "No tokens in the last 24 hours.",
    series: [
      ["Input", (m) => m.input_tokens],
      ["Output", (m) => m.output_tokens],
    ],
  },
];

/** uPlot data of a panel: x in seconds, then one array per series. */
function dataOf(p, d) {
  const [list, key] = p.src;
  return [d[list].map((b) => b[key] / 1000), ...p.series.map(([, get]) => d[list].map(get))];
}

/** Nothing to draw: counts all zero, or measurements (ms, %) all missing. */
const isEmpty = (kind, data) => data.slice(1).every((s) => s.every((v) => v === null || (kind === "count" && v === 0)));

function fmtValue(kind, v) {
  if (v === null || v === undefined) return "–";
  if (kind === "ms") return `${ms(v)} ms`;
  if (kind === "percent") return `${v.toFixed(1)} %`;
  return fmtNum(v);
}

/** Integer tick steps for counts: never a quarter of a request. */
const INT_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 2e6, 5e6, 1e7, 1e8, 1e9];

const widthOf = (el) => Math.max(240, el.clientWidth - 16);

/** One panel: its title, its legend and either its chart or its empty note. */
function panel(p) {
  const el = h("section", { class: "chart", id: `chart-${p.id}`, "aria-label": p.title });
  const legend = h("ul", { class: "legend", "aria-label": `${p.title}: current values` });
  const body = h("div", { class: "chart-body" });
  el.append(h("h2", { class: "chart-title", text: p.title }), legend, body);
  let plot = null;
  let fit = null;
  let data = null;
  const items = p.series.map(([label], i) => {
    const value = h("b", { class: "value" });
    const extra = h("span", { class: "muted extra" });
    const li = h("li", { "data-series": label }, h("span", { class: `swatch s${i}` }), `${label} `, value, " ", extra);
    legend.append(li);
    return { value, extra };
  });
  /** The legend at the pointer's bucket `idx`, or at the latest value when the pointer is away. */
  const showLegend = (idx) => {
    p.series.forEach((_, i) => {
      const ys = data[i + 1];
      let at = idx;
      if (at === null || at === undefined) {
        at = ys.length - 1;
        if (p.kind !== "count") while (at > 0 && ys[at] === null) at--;
      }
      const when = new Date(data[0][at] * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      items[i].value.textContent = fmtValue(p.kind, ys[at]);
      items[i].value.dataset.value = ys[at] ?? "";
      const unit = p.src[0] === "minutes" ? "minute" : "hour";
      items[i].extra.textContent =
        p.kind === "count"
          ? `at ${when} (${idx === null || idx === undefined ? `this ${unit} so far; ` : ""}${fmtNum(ys.reduce((a, v) => a + (v ?? 0), 0))} in all)`
          : ys[at] === null
            ? ""
            : `at ${when}`;
    });
  };
  const build = () => {
    const c = colours();
    const axis = { stroke: c.muted, grid: { stroke: c.grid, width: 1 }, ticks: { stroke: c.grid } };
    const y =
      p.kind === "count"
        ? { ...axis, incrs: INT_STEPS, values: (_, ticks) => ticks.map((t) => fmtNum(t)) }
        : { ...axis, values: (_, ticks) => ticks.map((t) => (p.kind === "ms" ? ms(t) : `${t}`)) };
    const opts = {
      width: widthOf(el),
      height: 200,
      legend: { show: false },
      scales: {
        x: { time: true },
        y: {
          range: (_, min, max) => {
            const top = Math.max(max ?? 0, p.kind === "count" ? 1 : p.kind === "percent" ? 1 : 0.1);
            return [0, p.kind === "count" ? Math.ceil(top * 1.1) : top * 1.15];
          },
        },
      },
      series: [{}, ...p.series.map(([label], i) => ({ label, stroke: c.series[i], width: 2, spanGaps: false, points: { show: p.kind !== "count" } }))],
      axes: [{ ...axis }, y],
      hooks: { setCursor: [(u) => showLegend(u.cursor.idx)] },
    };
    // eslint-disable-next-line no-undef
    plot = new uPlot(opts, data, body);
    el.plot = plot;
    fit = new ResizeObserver(() => plot.setSize({ width: widthOf(el), height: 200 }));
    fit.observe(el);
  };
  const drop = () => {
    fit?.disconnect();
    plot?.destroy();
    plot = null;
    el.plot = null;
  };
  return {
    el,
    update(d) {
      data = dataOf(p, d);
      el.data = data;
      const empty = isEmpty(p.kind, data);
      el.dataset.state = empty ? "empty" : "chart";
      // An empty chart has no current values to show: its note says why.
      legend.hidden = empty;
      showLegend(null);
      if (empty) {
        drop();
        body.replaceChildren(note("empty", p.empty));
      } else if (typeof uPlot !== "function") {
        body.replaceChildren(note("error", "The chart library did not load."));
      } else if (plot) {
        plot.setData(data);
      } else {
        body.replaceChildren();
        build();
      }
    },
    destroy: drop,
  };
}

/** Midnight in the browser's zone, Unix ms. */
function localMidnight() {
  const d = new Date();
  d.setHours(0, 0, 0, 0);
  return d.getTime();
}

function tiles(d) {
  const errRate = d.last_24h.requests ? `${((100 * d.last_24h.errors) / d.last_24h.requests).toFixed(1)} %` : "–";
  const list = [
    ["Requests today", d.today.requests, `since 00:00 ${zone}`],
    ["Requests (24 h)", d.last_24h.requests],
    ["Errors (24 h)", d.last_24h.errors, `error rate ${errRate}`],
    ["Tokens (24 h)", d.last_24h.input_tokens + d.last_24h.output_tokens],
    ["Intercepts (24 h)", d.last_24h.intercepts],
    ["Active bindings", d.active_bindings],
    ["Banned keys", d.banned_bindings],
    ["Upstreams healthy", `${d.healthy_upstreams} / ${d.upstreams}`],
    ["Cooling down", d.cooling_upstreams],
    ["In flight", d.in_flight, "this gateway, now"],
  ];
  return list.map(([label, value, sub]) =>
    h("div", { class: "tile" }, h("b", { text: typeof value === "number" ? fmtNum(value) : value }), label, sub ? h("small", { class: "sub", text: sub }) : null),
  );
}

export default {
  title: "Dashboard",
  async render(view, params, page) {
    const refresh = REFRESH.some(([v]) => v === params.refresh) ? Number(params.refresh) : 10;
    const read = () => Promise.all([call("GET", `/dashboard${query({ today_from_ms: localMidnight() })}`), call("GET", "/status")]);
    const [d, status] = await read();
    const state = note("ok", "");
    const picker = h(
      "select",
      { id: "refresh", "aria-label": "Refresh", on: { change: (ev) => page.go({ ...params, refresh: ev.target.value }) } },
      REFRESH.map(([v, label]) => h("option", { value: v, selected: Number(v) === refresh, text: label })),
    );
    const alerts = h("div", { id: "alerts" });
    const grid = h("div", { id: "tiles", class: "tiles" });
    const panels = PANELS.map(panel);
    view.replaceChildren(
      h("h1", { text: "Dashboard" }),
      h("div", { class: "toolbar spread" }, state, h("label", { class: "inline" }, "Refresh ", picker)),
      alerts,
      grid,
      h("div", { class: "charts" }, panels.map((p) => p.el)),
      h("p", {
        class: "muted small",
        text: `Times are in ${zone}. The per-minute charts count this gateway's requests with a client key as they end (they start empty at each start); latency and time to first byte are of the requests that reached an upstream, read from histograms within 10%. The per-hour charts count every gateway sharing the database, written in batches.`,
      }),
    );
    state.id = "dash-state";
    let updated = "";
    const show = (next, st) => {
      alerts.replaceChildren(...alertsOf(st));
      grid.replaceChildren(...tiles(next));
      panels.forEach((p) => p.update(next));
      updated = new Date().toLocaleTimeString();
      state.textContent = `Updated ${updated}`;
      state.dataset.state = "ok";
      view.classList.remove("stale-figures");
    };
    show(d, status);
    if (refresh)
      page.every(refresh * 1000, async () => {
        try {
          const [next, st] = await read();
          if (page.alive) show(next, st);
        } catch (e) {
          state.textContent = `Could not refresh (${e.message}): the figures below are as of ${updated}.`;
          state.dataset.state = "error";
          view.classList.add("stale-figures");
        }
      });
    const stop = page.stop;
    page.stop = () => {
      stop();
      panels.forEach((p) => p.destroy());
    };
  },
};
