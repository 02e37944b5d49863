// calllog-bridge dashboard: the history panel. The bridge keeps a
// histogram of the sync delay per minute of request_time for each file
// ([status] history_minutes); this panel shows it as the lag report's
// chart (history.svg) and lists the episodes above the threshold
// (history), refreshed every minute. Separate from app.js: it reads only
// these two same-origin documents and never the channel or its token.
(() => {
  'use strict';
  /** Refresh this often. */
  const EVERY_MS = 60000;
  /** Windows of the chart and the episodes, minutes. */
  const WINDOW_MINUTES = 5;
  const $ = (id) => document.getElementById(id);

  /** A duration in human units: 350ms, 1.2s, 45s, 3m 10s, 2h 5m. */
  function fmtMs(ms) {
    const a = Math.abs(ms);
    const sign = ms < 0 ? '-' : '';
    if (a < 1000) return sign + Math.round(a) + 'ms';
    if (a < 10000) return sign + (a / 1000).toFixed(1) + 's';
    const s = Math.round(a / 1000);
    if (s < 60) return sign + s + 's';
    if (s < 3600) return sign + Math.floor(s / 60) + 'm ' + (s % 60) + 's';
    return sign + Math.floor(s / 3600) + 'h ' + Math.floor((s % 3600) / 60) + 'm';
  }

  /** `2026-11-29T14:05:00Z` as `14:05` (UTC). */
  const hhmm = (iso) => (iso || '').slice(11, 16);

  function cell(row, text, cls) {
    const td = document.createElement('td');
    td.textContent = text;
    if (cls) td.className = cls;
    row.appendChild(td);
  }

  function render(h) {
    const records = h.windows.reduce((n, w) => n + w.records, 0);
    $('history-range').textContent = h.from.slice(0, 16).replace('T', ' ') + ' to ' + hhmm(h.to) + ' UTC, windows of ' + WINDOW_MINUTES + ' min, threshold ' + h.threshold_on + ' above ' + fmtMs(h.threshold_ms);
    $('history-note').textContent = records ? records + ' records' : 'no records in this range yet';
    $('history-chart').src = 'history.svg?every_minutes=' + WINDOW_MINUTES + '&t=' + Date.now();
    const body = $('history-episodes').querySelector('tbody');
    body.replaceChildren();
    const episodes = h.episodes.slice().reverse();
    if (!episodes.length) {
      const tr = document.createElement('tr');
      cell(tr, 'no episode above the threshold');
      body.appendChild(tr);
    }
    for (const e of episodes) {
      const tr = document.createElement('tr');
      cell(tr, e.host);
      cell(tr, e.file);
      cell(tr, hhmm(e.start));
      cell(tr, e.recovered ? hhmm(e.end) : 'not yet');
      cell(tr, fmtMs(Date.parse(e.end) - Date.parse(e.start)), 'num');
      cell(tr, fmtMs(e.p95_ms), 'num');
      cell(tr, fmtMs(e.max_ms), 'num');
      body.appendChild(tr);
    }
  }

  async function poll() {
    try {
      const r = await fetch('history?every_minutes=' + WINDOW_MINUTES, { cache: 'no-store' });
      if (!r.ok) throw new Error('HTTP ' + r.status);
      render(await r.json());
      $('history-panel').hidden = false;
    } catch (e) {
      $('history-note').textContent = 'history unavailable: ' + e.message;
    } finally {
      setTimeout(poll, EVERY_MS);
    }
  }
  poll();
})();
