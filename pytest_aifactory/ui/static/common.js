// What the interface's pages share: calls to its JSON endpoints (with the token header that
// changes need) and line charts drawn as plain SVG, so no chart library has to be shipped.
"use strict";

const aif = (() => {
  const meta = (name) => {
    const element = document.querySelector(`meta[name="${name}"]`);
    return element ? element.getAttribute("content") : "";
  };
  const token = meta("aifactory-token");
  const csrfHeader = meta("aifactory-csrf-header");

  async function call(path, options = {}) {
    const response = await fetch(path, { credentials: "same-origin", ...options });
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    if (!response.ok) {
      const error = new Error(body && body.error ? body.error : `${response.status} ${response.statusText}`);
      error.problems = body && body.problems ? body.problems : [];
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function post(path, data = {}) {
    return call(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", [csrfHeader]: token },
      body: JSON.stringify(data),
    });
  }

  function el(tag, attributes = {}, ...children) {
    const element = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes)) {
      if (value !== null && value !== undefined) element.setAttribute(key, String(value));
    }
    for (const child of children) {
      element.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return element;
  }

  function when(iso) {
    if (!iso) return "";
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "";
    const s = Math.max(0, Math.round(seconds));
    if (s < 120) return `${s} s`;
    if (s < 7200) return `${Math.round(s / 60)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  }

  function number(value) {
    if (value === null || value === undefined || Number.isNaN(value)) return "";
    if (Math.abs(value) >= 1000 || Number.isInteger(value)) return Math.round(value).toLocaleString("en");
    return value.toPrecision(3);
  }

  const SVG = "http://www.w3.org/2000/svg";
  const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];

  function svg(tag, attributes = {}) {
    const element = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
    return element;
  }

  // lines: [{name, points: [[unix seconds, value], ...]}]; the container's data-points says
  // how many points the chart holds (every line's together). The unit goes in the caption.
  function lineChart(container, lines) {
    const width = 360, height = 160, left = 44, right = 8, top = 8, bottom = 22;
    const all = lines.flatMap((line) => line.points);
    container.dataset.points = String(all.length);
    container.replaceChildren();
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", class: "line-chart" });
    container.append(chart);
    if (all.length === 0) {
      const empty = svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" });
      empty.textContent = "no data yet";
      chart.append(empty);
      return;
    }
    const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
    const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
    const y0 = Math.min(0, ...ys), top1 = Math.max(...ys);
    const y1 = top1 > y0 ? top1 : y0 + 1; // all zero: an axis up to 1, not to 1e-9
    const px = (x) => left + ((x - x0) / (x1 - x0)) * (width - left - right);
    const py = (y) => height - bottom - ((y - y0) / (y1 - y0)) * (height - top - bottom);
    chart.append(svg("line", { x1: left, y1: height - bottom, x2: width - right, y2: height - bottom, class: "axis" }));
    chart.append(svg("line", { x1: left, y1: top, x2: left, y2: height - bottom, class: "axis" }));
    for (const [value, y] of [[y1, top + 8], [y0, height - bottom]]) {
      const label = svg("text", { x: left - 4, y, "text-anchor": "end", class: "tick" });
      label.textContent = number(value);
      chart.append(label);
    }
    const span = svg("text", { x: width - right, y: height - 6, "text-anchor": "end", class: "tick" });
    span.textContent = `${Math.round(x1 - x0)} s`;
    chart.append(span);
    lines.forEach((line, index) => {
      if (line.points.length === 0) return;
      const colour = COLOURS[index % COLOURS.length];
      const path = line.points.map((p) => `${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`).join(" ");
      const drawn = svg("polyline", { points: path, fill: "none", stroke: colour, "stroke-width": 1.5, class: "series" });
      const title = svg("title");
      title.textContent = line.name;
      drawn.append(title);
      chart.append(drawn);
      if (line.points.length === 1) {
        const [x, y] = line.points[0];
        chart.append(svg("circle", { cx: px(x), cy: py(y), r: 2, fill: colour }));
      }
    });
    if (lines.length > 1) {
      const legend = document.createElement("ul");
      legend.className = "legend";
      lines.forEach((line, index) => {
        const item = el("li", {}, el("span", { class: `swatch swatch-${index % COLOURS.length}` }), line.name);
        legend.append(item);
      });
      container.append(legend);
    }
  }

  return { call, post, el, when, age, number, lineChart };
})();
