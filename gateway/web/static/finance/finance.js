/*
 * The cost page: log in with an admin or finance token, then show what the admin API answers
 * for it (/admin/v1/usage, /tenants, /tenants/{id}/budget, /tenants/{id}/statements/{month}).
 *
 * - The token lives in this tab's sessionStorage only and travels only in the Authorization
 *   header: never in a URL, a cookie or the DOM.
 * - Every text goes in through text nodes, never as HTML (tenant names may hold markup).
 * - Money is summed as integer micro-units (`cost_micros`) and formatted exactly; charts get
 *   plain numbers. Each chart's figures are also in a table under it (and in data-* attributes),
 *   for screen readers and for the browser test.
 * - Periods are whole UTC days, like the daily rollup the usage report reads.
 */
(function () {
  "use strict";

  const API = "/admin/v1";
  const TOKEN_KEY = "gateway.finance.token";
  const COLORS = ["#1f5fbf", "#d9822b", "#2e8540", "#8e44ad", "#c0392b", "#16a085", "#7f8c8d"];
  const $ = (id) => document.getElementById(id);

  let tenantNames = new Map(); // id -> name
  let generation = 0; // the latest refresh; older answers are dropped
  const charts = {};

  // --- the admin API ---------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, params, accept) {
    const url = new URL(API + path, window.location.origin);
    for (const [name, value] of Object.entries(params || {})) {
      if (value) url.searchParams.set(name, value);
    }
    const response = await fetch(url, {
      headers: {
        authorization: "Bearer " + sessionStorage.getItem(TOKEN_KEY),
        accept: accept || "application/json",
      },
      cache: "no-store",
      credentials: "omit",
    });
    if (!response.ok) {
      let message = response.status + " " + response.statusText;
      try {
        message = (await response.json()).error.message || message;
      } catch (ignored) {
        // not our error shape: keep the status line
      }
      throw new ApiError(response.status, message);
    }
    return accept ? response.blob() : response.json();
  }

  async function loadTenants() {
    const names = new Map();
    let cursor = null;
    for (let page = 0; page < 100; page += 1) {
      const body = await api("/tenants", { limit: "500", cursor: cursor });
      for (const tenant of body.data) names.set(tenant.id, tenant.name);
      cursor = body.next_cursor;
      if (!cursor) break;
    }
    return names;
  }

  async function loadBudget(tenantId) {
    let budget;
    try {
      budget = await api("/tenants/" + encodeURIComponent(tenantId) + "/budget");
    } catch (error) {
      if (error.status === 404) return null;
      throw error;
    }
    const days = await api("/usage", {
      tenant_id: tenantId,
      start: budget.period_start,
      end: budget.period_end,
      group_by: "day",
    });
    return { budget: budget, days: days.data };
  }

  // --- numbers and dates -----------------------------------------------------------------

  function money(micros) {
    const sign = micros < 0 ? "-" : "";
    const abs = Math.abs(micros);
    const fraction = String(abs % 1e6).padStart(6, "0").replace(/0+$/, "").padEnd(2, "0");
    return sign + Math.floor(abs / 1e6).toLocaleString("en-US") + "." + fraction;
  }

  function microsOf(decimal) {
    const [whole, fraction = ""] = String(decimal).split(".");
    return Number(whole) * 1e6 + Number((fraction + "000000").slice(0, 6));
  }

  const count = (n) => n.toLocaleString("en-US");
  const isoDay = (date) => date.toISOString().slice(0, 10);
  const isoInstant = (date) => date.toISOString().replace(".000Z", "Z");
  const utcDay = (year, month, day) => new Date(Date.UTC(year, month, day));

  function addDays(date, days) {
    const next = new Date(date.getTime());
    next.setUTCDate(next.getUTCDate() + days);
    return next;
  }

  /** The chosen period as [start, end) UTC instants, or null while a custom range is unset. */
  function period() {
    const now = new Date();
    const year = now.getUTCFullYear();
    const month = now.getUTCMonth();
    const kind = $("period").value;
    if (kind === "this-month") return { start: utcDay(year, month, 1), end: utcDay(year, month + 1, 1) };
    if (kind === "last-month") return { start: utcDay(year, month - 1, 1), end: utcDay(year, month, 1) };
    const start = $("start").value;
    const end = $("end").value;
    if (!start || !end || end < start) return null;
    return { start: new Date(start + "T00:00:00Z"), end: addDays(new Date(end + "T00:00:00Z"), 1) };
  }

  function daysOf(start, end) {
    const days = [];
    for (let day = start; day < end && days.length < 1000; day = addDays(day, 1)) {
      days.push(isoDay(day));
    }
    return days;
  }

  // --- the DOM ---------------------------------------------------------------------------

  /** An element with attributes and children; strings become text nodes, never markup. */
  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value !== null && value !== undefined) node.setAttribute(name, String(value));
    }
    node.append(...children.map((child) => (child instanceof Node ? child : String(child))));
    return node;
  }

  const tenantName = (id) => tenantNames.get(id) || id;

  function setStatus(text, isError) {
    $("status").textContent = text;
    $("status").classList.toggle("error", Boolean(isError));
  }

  function fillTenantSelect() {
    const select = $("tenant");
    const chosen = select.value;
    const sorted = [...tenantNames].sort((a, b) => a[1].localeCompare(b[1]));
    select.replaceChildren(el("option", { value: "" }, "All tenants"));
    for (const [id, name] of sorted) select.append(el("option", { value: id }, name));
    select.value = tenantNames.has(chosen) ? chosen : "";
  }

  /** Sums of the priced rows' cost per (key, currency), biggest first. */
  function spendBy(rows, keyOf) {
    const sums = new Map();
    for (const row of rows) {
      if (row.currency === null) continue; // unpriced: no cost to chart
      const id = keyOf(row) + "\u0000" + row.currency;
      const entry = sums.get(id) || { key: keyOf(row), currency: row.currency, micros: 0 };
      entry.micros += row.cost_micros;
      sums.set(id, entry);
    }
    return [...sums.values()].sort((a, b) => b.micros - a.micros || a.key.localeCompare(b.key));
  }

  function currenciesOf(entries) {
    return [...new Set(entries.map((e) => e.currency))].sort();
  }

  function dataTable(id, heading, entries, labelOf) {
    const rows = entries.map((e) =>
      el("tr", { "data-key": e.key, "data-currency": e.currency, "data-cost-micros": e.micros },
        el("th", { scope: "row" }, labelOf(e.key)),
        el("td", {}, e.currency),
        el("td", { class: "n" }, money(e.micros))));
    const head = el("tr", {}, el("th", { scope: "col" }, heading), el("th", { scope: "col" }, "Currency"),
      el("th", { scope: "col", class: "n" }, "Cost"));
    $(id).replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
  }

  function drawChart(name, type, labels, datasets, options) {
    if (typeof window.Chart === "undefined") return; // the tables still show every figure
    const data = { labels: labels, datasets: datasets };
    const all = Object.assign({ responsive: true, maintainAspectRatio: false, animation: false }, options);
    if (charts[name]) {
      charts[name].data = data;
      charts[name].options = all;
      charts[name].update();
      return;
    }
    charts[name] = new window.Chart($("chart-" + name), { type: type, data: data, options: all });
  }

  /** One bar dataset per currency over the entries' keys. */
  function barDatasets(entries, keys) {
    return currenciesOf(entries).map((currency, i) => ({
      label: currency,
      backgroundColor: COLORS[i % COLORS.length],
      data: keys.map((key) => {
        const hit = entries.find((e) => e.key === key && e.currency === currency);
        return hit ? hit.micros / 1e6 : 0;
      }),
    }));
  }

  function renderOverTime(rows, range) {
    const entries = spendBy(rows, (row) => row.day).sort((a, b) => a.key.localeCompare(b.key));
    dataTable("data-over-time", "Day", entries, (key) => key);
    const days = daysOf(range.start, range.end);
    const datasets = barDatasets(entries, days).map((d) => Object.assign(d, { borderColor: d.backgroundColor }));
    drawChart("over-time", "bar", days, datasets, { scales: { y: { beginAtZero: true } } });
  }

  function renderBreakdown(name, heading, entries, labelOf) {
    dataTable("data-" + name, heading, entries, labelOf);
    const keys = [...new Set(entries.map((e) => e.key))];
    drawChart(name, "bar", keys.map(labelOf), barDatasets(entries, keys), {
      indexAxis: "y",
      scales: { x: { beginAtZero: true } },
    });
  }

  function renderBudget(tenantId, burn) {
    const note = $("budget-note");
    const figure = $("fig-budget");
    figure.removeAttribute("data-budget-micros");
    figure.removeAttribute("data-spent-micros");
    figure.querySelector(".canvas").hidden = !burn;
    if (!tenantId || !burn) {
      note.textContent = tenantId
        ? "No budget is set for " + tenantName(tenantId) + "."
        : "Choose a tenant above to see its budget burn.";
      $("data-budget").replaceChildren();
      drawChart("budget", "line", [], []);
      return;
    }
    const budget = burn.budget;
    const amount = microsOf(budget.amount);
    const spent = microsOf(budget.spent);
    figure.setAttribute("data-budget-micros", amount);
    figure.setAttribute("data-spent-micros", spent);
    const used = amount > 0 ? " (" + ((spent * 100) / amount).toFixed(1) + "%)" : "";
    note.textContent = tenantName(tenantId) + ": spent " + money(spent) + " of " + money(amount) + " " +
      budget.currency + used + ", " + money(microsOf(budget.remaining)) + " left; " +
      (budget.hard ? "hard cap." : "soft budget (alerts only).");
    const perDay = new Map();
    for (const row of burn.days) {
      if (row.currency === budget.currency) perDay.set(row.day, (perDay.get(row.day) || 0) + row.cost_micros);
    }
    const days = daysOf(new Date(budget.period_start), new Date(budget.period_end));
    const today = isoDay(new Date());
    let total = 0;
    const cumulative = days.map((day) => {
      total += perDay.get(day) || 0;
      return { key: day, currency: budget.currency, micros: total };
    });
    dataTable("data-budget", "Day (cumulative)", cumulative.filter((e) => perDay.has(e.key)), (key) => key);
    drawChart("budget", "line", days, [
      {
        label: "Spent (cumulative)",
        borderColor: COLORS[0],
        backgroundColor: COLORS[0],
        data: cumulative.map((e) => (e.key <= today || perDay.has(e.key) ? e.micros / 1e6 : null)),
      },
      {
        label: "Budget " + budget.currency,
        borderColor: COLORS[4],
        backgroundColor: COLORS[4],
        borderDash: [6, 4],
        pointRadius: 0,
        data: days.map(() => amount / 1e6),
      },
    ], { scales: { y: { beginAtZero: true } } });
  }

  function renderSummary(rows) {
    const spend = spendBy(rows, () => "all");
    const sum = (field) => rows.reduce((total, row) => total + row[field], 0);
    const items = spend.map((e) => [
      "Spend (" + e.currency + ")", money(e.micros), { "data-metric": "spend", "data-currency": e.currency, "data-value": e.micros },
    ]);
    if (items.length === 0) items.push(["Spend", "0.00", { "data-metric": "spend", "data-value": 0 }]);
    for (const [label, field] of [["Requests", "requests"], ["Prompt tokens", "prompt_tokens"],
      ["Completion tokens", "completion_tokens"], ["Unpriced requests", "unpriced_requests"]]) {
      items.push([label, count(sum(field)), { "data-metric": field, "data-value": sum(field) }]);
    }
    $("summary").replaceChildren(...items.map(([label, text, attributes]) =>
      el("div", {}, el("dt", {}, label), el("dd", attributes, text))));
  }

  function renderTable(rows) {
    const sorted = [...rows].sort((a, b) =>
      tenantName(a.tenant_id).localeCompare(tenantName(b.tenant_id)) || a.model.localeCompare(b.model) ||
      (a.currency === null) - (b.currency === null) || String(a.currency).localeCompare(String(b.currency)));
    const body = sorted.map((row) =>
      el("tr", {
        "data-tenant-id": row.tenant_id, "data-model": row.model, "data-currency": row.currency || "",
        "data-requests": row.requests, "data-cost-micros": row.cost_micros,
      },
      el("td", {}, tenantName(row.tenant_id)), el("td", {}, row.model), el("td", {}, row.currency || "unpriced"),
      el("td", { class: "n" }, count(row.requests)), el("td", { class: "n" }, count(row.prompt_tokens)),
      el("td", { class: "n" }, count(row.completion_tokens)),
      el("td", { class: "n" }, row.currency === null ? "-" : money(row.cost_micros)),
      el("td", { class: "n" }, count(row.unpriced_requests))));
    if (body.length === 0) body.push(el("tr", {}, el("td", { colspan: 8 }, "No usage in this period.")));
    $("usage-table").tBodies[0].replaceChildren(...body);
    const totals = spendBy(rows, () => "total").map((e) => {
      const inCurrency = rows.filter((row) => row.currency === e.currency);
      const sum = (field) => inCurrency.reduce((total, row) => total + row[field], 0);
      return el("tr", { "data-currency": e.currency, "data-cost-micros": e.micros },
        el("td", { colspan: 2 }, "Total"), el("td", {}, e.currency),
        el("td", { class: "n" }, count(sum("requests"))), el("td", { class: "n" }, count(sum("prompt_tokens"))),
        el("td", { class: "n" }, count(sum("completion_tokens"))), el("td", { class: "n" }, money(e.micros)),
        el("td", { class: "n" }, ""));
    });
    $("usage-table").tFoot.replaceChildren(...totals);
  }

  function renderStatements(tenantId) {
    const ids = tenantId ? [tenantId] : [...tenantNames.keys()];
    ids.sort((a, b) => tenantName(a).localeCompare(tenantName(b)));
    $("statements").tBodies[0].replaceChildren(...ids.map((id) => {
      const open = el("button", { type: "button", class: "secondary", "data-action": "statement-html" }, "Printable page");
      const csv = el("button", { type: "button", class: "secondary", "data-action": "statement-csv" }, "CSV");
      open.addEventListener("click", () => openStatement(id));
      csv.addEventListener("click", () => downloadStatement(id));
      return el("tr", { "data-tenant-id": id }, el("td", {}, tenantName(id)), el("td", { class: "actions" }, open, csv));
    }));
  }

  // --- actions ---------------------------------------------------------------------------

  function query(range) {
    return { tenant_id: $("tenant").value, start: isoInstant(range.start), end: isoInstant(range.end) };
  }

  async function refresh() {
    const range = period();
    if (range === null) {
      setStatus("Choose a start and an end date (the end on or after the start).", true);
      return;
    }
    const mine = (generation += 1);
    const report = $("report");
    const params = query(range);
    report.dataset.state = "loading";
    setStatus("Loading…");
    $("statement-month").value = params.start.slice(0, 7);
    try {
      const [byDay, byModel, burn] = await Promise.all([
        api("/usage", Object.assign({ group_by: "day" }, params)),
        api("/usage", Object.assign({ group_by: "model" }, params)),
        params.tenant_id ? loadBudget(params.tenant_id) : Promise.resolve(null),
      ]);
      if (mine !== generation) return;
      renderSummary(byModel.data);
      renderOverTime(byDay.data, range);
      renderBreakdown("by-tenant", "Tenant", spendBy(byModel.data, (row) => row.tenant_id), tenantName);
      renderBreakdown("by-model", "Model", spendBy(byModel.data, (row) => row.model), (key) => key);
      renderBudget(params.tenant_id, burn);
      renderTable(byModel.data);
      renderStatements(params.tenant_id);
      Object.assign(report.dataset, { state: "ready", start: params.start, end: params.end, tenant: params.tenant_id });
      setStatus("From " + isoDay(range.start) + " to " + isoDay(addDays(range.end, -1)) + " (UTC, inclusive).");
    } catch (error) {
      if (mine === generation) failed(error);
    }
  }

  function failed(error) {
    $("report").dataset.state = "error";
    if (error.status === 401) {
      logout("The token was not accepted (" + error.message + ") Log in again.");
      return;
    }
    setStatus(error.message || String(error), true);
  }

  function saveBlob(blob, filename) {
    const url = URL.createObjectURL(blob);
    const link = el("a", { href: url, download: filename });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  async function downloadCsv() {
    const range = period();
    if (range === null) return;
    const params = query(range);
    const name = "usage-" + (params.tenant_id ? params.tenant_id + "-" : "") + isoDay(range.start) +
      "-to-" + isoDay(addDays(range.end, -1)) + ".csv";
    try {
      saveBlob(await api("/usage", Object.assign({ group_by: "model" }, params), "text/csv"), name);
    } catch (error) {
      failed(error);
    }
  }

  function statementPath(tenantId) {
    return "/tenants/" + encodeURIComponent(tenantId) + "/statements/" + encodeURIComponent($("statement-month").value);
  }

  async function openStatement(tenantId) {
    const tab = window.open("", "_blank"); // now, while the click still counts as the user's
    try {
      const page = await api(statementPath(tenantId), null, "text/html");
      const url = URL.createObjectURL(page);
      if (tab) tab.location.href = url;
      else window.location.href = url;
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (error) {
      if (tab) tab.close();
      failed(error);
    }
  }

  async function downloadStatement(tenantId) {
    try {
      const csv = await api(statementPath(tenantId), null, "text/csv");
      saveBlob(csv, "statement-" + tenantId + "-" + $("statement-month").value + ".csv");
    } catch (error) {
      failed(error);
    }
  }

  async function start() {
    try {
      tenantNames = await loadTenants();
    } catch (error) {
      logout(error.status === 401 || error.status === 403
        ? "That token was not accepted: " + error.message
        : "Could not reach the admin API: " + error.message);
      return;
    }
    $("login").hidden = true;
    $("report").hidden = false;
    $("logout").hidden = false;
    fillTenantSelect();
    await refresh();
  }

  function logout(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    generation += 1;
    for (const id of ["summary", "data-over-time", "data-by-tenant", "data-by-model", "data-budget"]) {
      $(id).replaceChildren();
    }
    $("usage-table").tBodies[0].replaceChildren();
    $("usage-table").tFoot.replaceChildren();
    $("statements").tBodies[0].replaceChildren();
    $("report").hidden = true;
    $("report").dataset.state = "";
    $("logout").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("login-error").hidden = !message;
  }

  function onPeriodChange() {
    const custom = $("period").value === "custom";
    $("custom-range").hidden = !custom;
    if (custom && (!$("start").value || !$("end").value)) {
      const report = $("report").dataset;
      $("start").value = (report.start || "").slice(0, 10);
      $("end").value = report.end ? isoDay(addDays(new Date(report.end), -1)) : "";
    }
    refresh();
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (window.Chart) window.Chart.defaults.animation = false;
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token").value.trim();
      $("token").value = "";
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      start();
    });
    $("logout").addEventListener("click", () => logout(""));
    $("filters").addEventListener("submit", (event) => event.preventDefault());
    $("statement-form").addEventListener("submit", (event) => event.preventDefault());
    $("period").addEventListener("change", onPeriodChange);
    $("start").addEventListener("change", refresh);
    $("end").addEventListener("change", refresh);
    $("tenant").addEventListener("change", refresh);
    $("download-csv").addEventListener("click", downloadCsv);
    if (sessionStorage.getItem(TOKEN_KEY)) start();
  });
})();
