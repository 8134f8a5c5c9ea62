// One rich output of a program, inside the playground's sandboxed frame (opaque origin: see
// server/playground.py). The page posts {html} or {plotly}; HTML is inserted as markup (its
// scripts do not run), a plotly figure is drawn from its JSON with the server's plotly.js.
"use strict";

function report() {
  parent.postMessage({ height: document.documentElement.scrollHeight }, "*");
}

function loadPlotly() {
  return new Promise((resolve, reject) => {
    const s = document.createElement("script");
    s.src = "/static/vendor/plotly.min.js";
    s.onload = resolve;
    s.onerror = reject;
    document.head.append(s);
  });
}

window.addEventListener("message", async (event) => {
  if (event.source !== parent || typeof event.data !== "object" || event.data === null) return;
  const out = document.getElementById("out");
  const { html, plotly } = event.data;
  try {
    if (plotly && typeof plotly === "object") {
      await loadPlotly();
      const div = document.createElement("div");
      out.replaceChildren(div);
      await window.Plotly.newPlot(div, plotly.data || [], plotly.layout || {}, { responsive: true });
    } else if (typeof html === "string") {
      out.innerHTML = html;
    }
  } catch (err) {
    out.textContent = `could not show this output: ${err}`;
  }
  report();
  requestAnimationFrame(() => { report(); document.body.dataset.rendered = "1"; });
});
window.addEventListener("resize", report);
