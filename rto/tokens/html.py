"""The token page: one self-contained HTML file (inline CSS and JavaScript, the data inline as JSON;
no network, works from file://) showing every response token coloured by a chosen signal."""

from __future__ import annotations

import html
import json
import math

PAGE_VERSION = 1

# RdBu, the diverging scale: red below 0, white at 0, blue above (readable with red-green colour blindness)
STOPS = ["#b2182b", "#ef8a62", "#fddbc7", "#f7f7f7", "#d1e5f0", "#67a9cf", "#2166ac"]

STYLE = """
:root { --ink: #1d2330; --muted: #5b6474; --line: #e3e6ec; --bg: #fbfbfd; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--ink); background: var(--bg); }
header { padding: 18px 28px 6px; }
h1 { font-size: 21px; margin: 0 0 4px; }
.meta { color: var(--muted); font-size: 13px; margin: 0; }
.meta code { background: #eef0f4; padding: 1px 5px; border-radius: 4px; }
.bar { position: sticky; top: 0; z-index: 2; background: #fff; border-bottom: 1px solid var(--line);
       padding: 10px 28px; display: flex; flex-wrap: wrap; gap: 10px 28px; align-items: center;
       box-shadow: 0 2px 6px rgba(20, 30, 50, .05); }
#signal-switch { display: flex; flex-wrap: wrap; gap: 6px; border: 0; margin: 0; padding: 0; }
#signal-switch label { cursor: pointer; border: 1px solid #cfd4dd; border-radius: 16px; padding: 3px 12px;
                       font-size: 13px; background: #fff; user-select: none; }
#signal-switch input { display: none; }
#signal-switch input:checked + span { font-weight: 600; }
#signal-switch label:has(input:checked) { background: #1d2330; color: #fff; border-color: #1d2330; }
#legend { display: flex; align-items: center; gap: 8px; font-size: 12px; color: var(--muted); }
#legend .ramp { width: 220px; height: 12px; border-radius: 6px; border: 1px solid #d5d9e0; }
#legend .ends { display: flex; justify-content: space-between; width: 220px; font-variant-numeric: tabular-nums; }
#legend-text { max-width: 620px; font-size: 12.5px; color: var(--ink); }
#legend .hint { font-size: 11.5px; color: var(--muted); }
main { padding: 10px 28px 40px; }
table.summary { border-collapse: collapse; font-size: 13px; margin: 4px 0 10px; }
table.summary th, table.summary td { padding: 3px 12px; border-bottom: 1px solid var(--line); text-align: right; }
table.summary th:first-child, table.summary td:first-child { text-align: left; }
section.prompt { background: #fff; border: 1px solid var(--line); border-radius: 10px; margin: 14px 0;
                 padding: 10px 16px 6px; }
.prompt-text { font-size: 13px; color: var(--muted); margin-bottom: 6px; }
.prompt-text b { color: var(--ink); font-weight: 600; }
.response { display: grid; grid-template-columns: 110px 1fr 330px; gap: 12px; align-items: start;
            padding: 7px 0; border-top: 1px dashed var(--line); }
.policy { font-weight: 600; font-size: 13px; padding-top: 3px; }
.tokens { line-height: 2.0; font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace; font-size: 14px; }
.tok { padding: 2px 4px; border-radius: 4px; cursor: default; white-space: pre; }
.tok:hover { outline: 2px solid #1d2330; }
.scores { font-size: 12.5px; color: var(--muted); font-variant-numeric: tabular-nums; display: grid;
          grid-template-columns: auto auto 1fr; gap: 0 10px; align-items: baseline; padding-top: 2px; }
.scores b { color: var(--ink); text-align: right; } .scores .rest { font-size: 11.5px; }
#tip { position: fixed; z-index: 5; pointer-events: none; background: #1d2330; color: #fff; font-size: 12px;
       border-radius: 6px; padding: 8px 10px; box-shadow: 0 4px 14px rgba(0, 0, 0, .25); }
#tip table { border-collapse: collapse; } #tip td { padding: 1px 6px; font-variant-numeric: tabular-nums; }
#tip td:last-child { text-align: right; } #tip tr.active { color: #9fd0ff; font-weight: 600; }
"""

SCRIPT = """
const DATA = JSON.parse(document.getElementById('page-data').textContent);
const STOPS = DATA.stops.map(h => [1, 3, 5].map(i => parseInt(h.slice(i, i + 2), 16)));
const fmt = v => (v === undefined || v === null || Number.isNaN(v)) ? '–' : (Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(3));
const short = v => (v === undefined || v === null) ? '–' : String(+v.toFixed(2));
function colour(v, scale) {
  if (v === null || v === undefined) return '#d9dce2';
  const t = Math.max(-1, Math.min(1, v / scale)), x = (t + 1) / 2 * (STOPS.length - 1);
  const i = Math.min(Math.floor(x), STOPS.length - 2), f = x - i;
  return 'rgb(' + STOPS[i].map((c, k) => Math.round(c + (STOPS[i + 1][k] - c) * f)).join(',') + ')';
}
function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; }
const signals = Object.fromEntries(DATA.signals.map(s => [s.key, s]));
function buildSwitch() {
  const box = document.getElementById('signal-switch');
  DATA.signals.forEach((s, n) => {
    const label = el('label'); label.title = s.help + ' (key ' + (n + 1) + ')';
    const input = el('input'); input.type = 'radio'; input.name = 'signal'; input.value = s.key; input.id = 'signal-' + s.key;
    input.addEventListener('change', () => paint(s.key));
    label.append(input, el('span', null, s.short)); box.append(label);
  });
}
function buildSummary() {
  const t = document.getElementById('summary'), cols = DATA.summary_columns;
  const head = el('tr'); head.append(el('th', null, 'policy')); cols.forEach(c => head.append(el('th', null, c[1]))); t.append(head);
  DATA.policies.forEach(p => { const r = el('tr'); r.append(el('td', null, p.label));
    cols.forEach(c => r.append(el('td', null, fmt(DATA.summary[p.key][c[0]])))); t.append(r); });
}
function buildPrompts() {
  const main = document.getElementById('prompts');
  DATA.prompts.forEach((p, pi) => {
    const sec = el('section', 'prompt'), head = el('div', 'prompt-text');
    head.append('prompt ' + (pi + 1) + ': ', el('b', null, p.prompt)); sec.append(head);
    p.responses.forEach((r, ri) => {
      const row = el('div', 'response'); row.dataset.policy = r.policy; row.dataset.nTokens = r.ids.length;
      row.append(el('div', 'policy', DATA.labels[r.policy]));
      const toks = el('div', 'tokens');
      r.tokens.forEach((text, i) => {
        const lead = text.match(/^\\s*/)[0], core = text.slice(lead.length);
        if (lead) toks.append(lead.replace(/\\n/g, ' '));
        const s = el('span', 'tok', core || '\u2423'); s.dataset.p = pi; s.dataset.r = ri; s.dataset.i = i; toks.append(s);
      });
      const sc = el('div', 'scores'), g = r.scores;
      const line = (name, value, rest) => sc.append(el('span', null, name), el('b', null, fmt(value)), el('span', 'rest', rest || ''));
      if (g.gold !== undefined) line('gold', g.gold, '= ' + short(g.gold_dense) + ' dense ' + (g.gold_sequence < 0 ? '− ' : '+ ') + short(Math.abs(g.gold_sequence)) + ' sequence');
      line('RM score', g.rm, 'as PPO uses it: ' + short(g.rm_used));
      line('KL to π_ref', g.kl); line('Σ reward', g.reward);
      row.append(toks, sc); sec.append(row);
    });
    main.append(sec);
  });
}
function paint(key) {
  const s = signals[key];
  document.body.dataset.signal = key;
  document.getElementById('signal-' + key).checked = true;
  document.querySelectorAll('.tok').forEach(t => {
    const v = DATA.prompts[t.dataset.p].responses[t.dataset.r].signals[key][t.dataset.i];
    t.style.background = colour(v, s.scale);
    t.style.color = v !== null && Math.abs(v / s.scale) > 0.6 ? '#fff' : '#1d2330';
  });
  document.getElementById('legend-lo').textContent = '≤ ' + fmt(-s.scale);
  document.getElementById('legend-hi').textContent = '≥ ' + fmt(s.scale);
  document.getElementById('legend-text').textContent = s.help;
  try { history.replaceState(null, '', '#signal=' + key); } catch (e) { /* a sandboxed frame (W&B panel) */ }
}
function tip(ev) {
  const box = document.getElementById('tip'), t = ev.target.closest('.tok');
  if (!t) { box.hidden = true; return; }
  const r = DATA.prompts[t.dataset.p].responses[t.dataset.r], i = +t.dataset.i, tab = el('table');
  const title = el('tr'); const c = el('td', null, 'token ' + (i + 1) + ' / ' + r.ids.length); c.colSpan = 2; title.append(c); tab.append(title);
  DATA.signals.forEach(s => { const row = el('tr', s.key === document.body.dataset.signal ? 'active' : '');
    row.append(el('td', null, s.short), el('td', null, fmt(r.signals[s.key][i]))); tab.append(row); });
  box.replaceChildren(el('div', null, JSON.stringify(r.tokens[i])), tab); box.hidden = false;
  const x = Math.min(ev.clientX + 14, window.innerWidth - box.offsetWidth - 8);
  box.style.left = x + 'px'; box.style.top = (ev.clientY + 16) + 'px';
}
buildSwitch(); buildSummary(); buildPrompts();
document.getElementById('legend-ramp').style.background = 'linear-gradient(90deg,' + DATA.stops.join(',') + ')';
document.addEventListener('mouseover', tip); document.addEventListener('mousemove', tip);
document.addEventListener('keydown', e => { const s = DATA.signals[+e.key - 1]; if (s) paint(s.key); });
const asked = (location.hash.match(/signal=(\\w+)/) || [])[1];
paint(signals[asked] ? asked : DATA.default_signal);
document.body.dataset.ready = '1';
"""


def _finite(value):
    """NaN and infinities as null: JSON has no such numbers (the page shows them as a dash)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def page_json(data: dict) -> str:
    """The data as JSON that cannot close the script element holding it."""
    text = json.dumps(_finite(data), ensure_ascii=False, allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def render(data: dict) -> str:
    """The page for `data` (`rto.tokens.page_data`): signals, policies, prompts with their responses."""
    data = {**data, "stops": STOPS, "version": PAGE_VERSION}
    meta = " · ".join(f"<code>{html.escape(k)}={html.escape(str(v))}</code>" for k, v in data["meta"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(data['title'])}</title>
<style>{STYLE}</style></head>
<body>
<header><h1>{html.escape(data['title'])}</h1><p class="meta">{meta}</p></header>
<div class="bar">
  <fieldset id="signal-switch" aria-label="colour tokens by"></fieldset>
  <div id="legend"><div><div id="legend-ramp" class="ramp"></div>
    <div class="ends"><span id="legend-lo"></span><span>0</span><span id="legend-hi"></span></div></div>
    <div><div id="legend-text"></div>
    <div class="hint">red below 0, blue above · hover a token for all its numbers · number keys switch signals</div></div></div>
</div>
<main>
  <table class="summary" id="summary"></table>
  <div id="prompts"></div>
</main>
<div id="tip" hidden></div>
<script type="application/json" id="page-data">{page_json(data)}</script>
<script>{SCRIPT}</script>
</body></html>
"""
