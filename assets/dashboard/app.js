// calllog-bridge dashboard: plain JavaScript, no library, no build step.
//
// Data flow: WebSocket messages from the local channel -> ingest() updates
// bounded aggregates (counters, ring buffers) -> a render loop, throttled to
// a few frames per second, writes the aggregates into the DOM and canvases.
// /status is polled every STATUS_EVERY_MS for per-file sync delay, state and
// bytes behind. Nothing is rendered per record, so a high record rate costs
// JSON parsing and counter updates, not layout.
//
// The aggregates are exposed on `window.__dashboard` (and `snapshot()` for a
// plain copy) so that automated tests can compare them with what was sent.
'use strict';
(function () {
  // ---- limits: every buffer in this page is bounded ----
  /** Records kept for the live tail. */
  const TAIL_KEEP = 1000;
  /** Rows shown in the live tail. */
  const TAIL_SHOW = 60;
  /** Latency and sync-delay samples kept (most recent). */
  const SAMPLE_KEEP = 8192;
  /** Seconds of calls-per-second history. */
  const RATE_SECONDS = 120;
  /** request_uuids remembered to drop re-delivered records (at-least-once). */
  const DEDUPE_KEEP = 100000;
  /** Distinct services / endpoints tracked before the smallest are folded into "other". */
  const TOP_KEYS_MAX = 2000;
  /** Rows in the top services / endpoints tables. */
  const TOP_SHOW = 10;
  /** /status samples kept per file for the sync-delay chart. */
  const SYNC_POINTS = 600;
  /** Files drawn in the sync-delay chart (the rest are listed only). */
  const CHART_FILES_MAX = 8;
  /** Render at most this often. */
  const RENDER_EVERY_MS = 250;
  /** Poll /status this often. */
  const STATUS_EVERY_MS = 1500;
  /** Reconnect back-off bounds. */
  const RECONNECT_MIN_MS = 250;
  const RECONNECT_MAX_MS = 5000;
  /** Records per WebSocket message this page asks the channel for (`records_per_message` in the fragment overrides). */
  const DEFAULT_RECORDS_PER_MESSAGE = 50;
  const TOKEN_KEY = 'calllog-bridge.channel-token';
  const COLORS = ['#58a6ff', '#3fb950', '#d29922', '#f85149', '#bc8cff', '#39c5cf', '#ff9bce', '#e3b341'];

  // ---- small helpers ----
  const $ = (id) => document.getElementById(id);
  const now = () => Date.now();

  /** A fixed-size ring of numbers. */
  class NumRing {
    constructor(n) { this.buf = new Float64Array(n); this.len = 0; this.pos = 0; }
    push(v) { this.buf[this.pos] = v; this.pos = (this.pos + 1) % this.buf.length; if (this.len < this.buf.length) this.len++; }
    sorted() { return Float64Array.from(this.buf.subarray(0, this.len)).sort(); }
  }

  /** A fixed-size ring of values, newest last. */
  class Ring {
    constructor(n) { this.buf = new Array(n); this.len = 0; this.pos = 0; }
    push(v) { this.buf[this.pos] = v; this.pos = (this.pos + 1) % this.buf.length; if (this.len < this.buf.length) this.len++; }
    /** Calls f(value) from newest to oldest until it returns false. */
    eachNewest(f) {
      for (let i = 1; i <= this.len; i++) {
        if (f(this.buf[(this.pos - i + this.buf.length) % this.buf.length]) === false) return;
      }
    }
    toArray() { const out = []; this.eachNewest((v) => { out.push(v); }); return out.reverse(); }
  }

  function quantile(sorted, q) {
    if (sorted.length === 0) return null;
    const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
    return sorted[i];
  }

  function fmtInt(n) { return n == null ? '-' : Math.round(n).toLocaleString('en-US'); }
  function fmtMs(ms) {
    if (ms == null || !isFinite(ms)) return '-';
    const a = Math.abs(ms);
    if (a < 1000) return Math.round(ms) + ' ms';
    if (a < 60000) return (ms / 1000).toFixed(a < 10000 ? 2 : 1) + ' s';
    if (a < 3600000) return (ms / 60000).toFixed(1) + ' min';
    return (ms / 3600000).toFixed(1) + ' h';
  }
  function fmtBytes(b) {
    if (b == null || !isFinite(b)) return '-';
    if (b < 1024) return b + ' B';
    const u = ['KiB', 'MiB', 'GiB', 'TiB'];
    let v = b, i = -1;
    do { v /= 1024; i++; } while (v >= 1024 && i < u.length - 1);
    return v.toFixed(1) + ' ' + u[i];
  }
  function num(v) {
    if (v == null || v === '' || v === '-') return null;
    const n = typeof v === 'number' ? v : Number(v);
    return isFinite(n) ? n : null;
  }
  /** A field's value, or null when absent (`-` or empty, as Local Edition writes it). */
  function val(v) { return v == null || v === '' || v === '-' ? null : String(v); }
  /** Sets textContent only when it changed (no needless layout work). */
  function setText(el, text) { if (el && el.textContent !== text) el.textContent = text; }

  // ---- settings from the URL fragment: #token=...&channel=...&ws=...&since=...&records_per_message=... ----
  const frag = new URLSearchParams(location.hash.replace(/^#/, ''));
  const settings = {
    wsOverride: frag.get('ws'),
    // The page opened for one channel (`[[channel.stream]]` id): the token
    // is that channel's (the channel sends its records only, numbered with
    // the bridge's sequence numbers, so gaps are expected), and the
    // channels table shows that channel only.
    channel: frag.get('channel'),
    since: frag.has('since') ? num(frag.get('since')) : null,
    // Asked of the channel for this page only: a browser handles a few
    // thousand messages a second, so at high rates records come batched
    // (the channel waits a few ms at most to fill a message).
    perMessage: frag.has('records_per_message') ? num(frag.get('records_per_message')) : DEFAULT_RECORDS_PER_MESSAGE,
  };
  // Where the token may go: the channel /status names, this page's own
  // origin (a proxy serving the channel too), and the origins the operator
  // listed in `[status] dashboard_channel_origins` (written into the page by
  // the bridge). A `#ws=` elsewhere is refused: a crafted link must not
  // make the page hand the token to another host. The page's CSP
  // (connect-src) enforces the same list.
  const allowedOrigins = ((document.querySelector('meta[name="channel-origins"]') || {}).content || '')
    .split(/\s+/).filter((o) => /^wss?:\/\//.test(o));
  const pageWsOrigin = (location.protocol === 'https:' ? 'wss:' : 'ws:') + '//' + location.host;
  /** `ws(s)://host[:port]` of a WebSocket URL, `http(s)` mapped as connect() does; null when unparsable. */
  function wsOrigin(url) {
    try {
      const u = new URL(url, location.href);
      const scheme = u.protocol === 'http:' ? 'ws:' : u.protocol === 'https:' ? 'wss:' : u.protocol;
      return scheme + '//' + u.host;
    } catch (e) { return null; }
  }
  /** True when the page may send the token to `url` (see allowedOrigins); `status` is the latest /status. */
  function mayConnect(url, fromStatus, status) {
    const o = wsOrigin(url);
    if (o == null) return false;
    if (fromStatus || o === pageWsOrigin || allowedOrigins.includes(o)) return true;
    const own = status && channelFromStatus(status);
    return !!own && o === wsOrigin(own);
  }

  if (frag.has('token')) {
    try { sessionStorage.setItem(TOKEN_KEY, frag.get('token')); } catch (e) { /* storage disabled: keep in memory */ }
    settings.token = frag.get('token');
    // Keep the token out of the address bar, history and screenshots.
    frag.delete('token');
    const rest = frag.toString();
    history.replaceState(null, '', location.pathname + location.search + (rest ? '#' + rest : ''));
  } else {
    try { settings.token = sessionStorage.getItem(TOKEN_KEY); } catch (e) { settings.token = null; }
  }

  // ---- aggregates ----
  const agg = {
    /** Records counted (after dropping re-delivered ones). */
    calls: 0,
    /** Records by status class. */
    statusMix: { '2xx': 0, '3xx': 0, '4xx': 0, '5xx': 0, other: 0 },
    /** Error responses (status >= 400) by where they came from (response_string suffix). */
    errors: { mashery: 0, api: 0, other: 0 },
    /** Highest channel sequence number received. */
    lastSeq: null,
    /** WebSocket state: no-token, connecting, open, reconnecting, refused (a #ws= the token may not go to), wrong-token (401: waits for a new token), unreachable (the bridge does not answer). */
    connection: 'idle',
    /** Successful (re)connections. */
    connects: 0,
    /** Sequence numbers skipped between consecutive messages (should stay 0). */
    gaps: 0,
    /** Records the channel said it no longer had when we asked for them. */
    lost: 0,
    /** Records dropped because their request_uuid was seen already (at-least-once re-delivery). */
    duplicates: 0,
    /** Records dropped because their sequence number was not past the last one (should stay 0). */
    seqRepeats: 0,
    /** Frames that were not JSON record messages. */
    badFrames: 0,
    /** The latest /status document. */
    status: null,
    /** /status poll state: ok or error. */
    statusState: 'idle',
  };
  const rate = { base: 0, counts: new Uint32Array(RATE_SECONDS) }; // per-second counts, index = second % RATE_SECONDS
  const latency = new NumRing(SAMPLE_KEEP); // total_request_exec_time, seconds
  const syncDelay = new NumRing(SAMPLE_KEEP); // sync_delay_ms per record
  /** sync_delay_ms of the records received since the last /status poll (sampled when there are more). */
  const syncSince = { values: new Float64Array(SAMPLE_KEEP), len: 0, seen: 0 };
  /** Median sync delay of the records between two polls: the live line of the chart. */
  const liveSeries = { color: '#e6edf3', points: new Ring(SYNC_POINTS) };
  const tail = new Ring(TAIL_KEEP);
  const dedupe = { set: new Set(), ring: new Array(DEDUPE_KEEP), pos: 0 };
  const top = { services: new Map(), endpoints: new Map() };
  const fileSeries = new Map(); // file identity -> { color, points: Ring of {t, p50, p95, max} }
  let dirty = true;

  function seen(uuid) {
    if (!uuid) return false;
    if (dedupe.set.has(uuid)) return true;
    const old = dedupe.ring[dedupe.pos];
    if (old !== undefined) dedupe.set.delete(old);
    dedupe.ring[dedupe.pos] = uuid;
    dedupe.pos = (dedupe.pos + 1) % DEDUPE_KEEP;
    dedupe.set.add(uuid);
    return false;
  }

  function bump(map, key) {
    map.set(key, (map.get(key) || 0) + 1);
    if (map.size > TOP_KEYS_MAX) {
      // Fold the smaller half into "(other)": bounded memory, the leaders stay exact.
      const entries = [...map.entries()].filter(([k]) => k !== '(other)').sort((a, b) => b[1] - a[1]);
      let folded = map.get('(other)') || 0;
      for (const [k, v] of entries.slice(TOP_KEYS_MAX / 2)) { folded += v; map.delete(k); }
      map.set('(other)', folded);
    }
  }

  function countRate(t) {
    const sec = Math.floor(t / 1000);
    advanceRate(sec);
    rate.counts[sec % RATE_SECONDS]++;
  }
  function advanceRate(sec) {
    if (rate.base === 0) rate.base = sec;
    if (sec - rate.base >= RATE_SECONDS) { rate.counts.fill(0); rate.base = sec; return; }
    while (rate.base < sec) { rate.base++; rate.counts[rate.base % RATE_SECONDS] = 0; }
  }

  /** Where an error response came from: `..._Mashery` / `(Mashery)` or `..._API` / `(API)`. */
  function errorSource(responseString) {
    const s = (responseString || '').trim();
    if (/(_|\()mashery\)?$/i.test(s)) return 'mashery';
    if (/(_|\()api\)?$/i.test(s)) return 'api';
    return 'other';
  }

  function ingest(rec, seq, t) {
    if (seen(val(rec.request_uuid))) { agg.duplicates++; return; }
    agg.calls++;
    countRate(t);
    const code = num(rec.http_status_code);
    const cls = code != null && code >= 200 && code < 600 ? Math.floor(code / 100) + 'xx' : 'other';
    agg.statusMix[cls] = (agg.statusMix[cls] || 0) + 1;
    if (code != null && code >= 400) agg.errors[errorSource(rec.response_string)]++;
    bump(top.services, val(rec.service_name) || val(rec.service_id) || '(none)');
    bump(top.endpoints, val(rec.endpoint_name) || val(rec.service_definition_endpoint_uuid) || '(none)');
    const exec = num(rec.total_request_exec_time);
    if (exec != null) latency.push(exec);
    const sd = num(rec.sync_delay_ms);
    if (sd != null) {
      syncDelay.push(sd);
      // Reservoir sampling keeps the per-poll sample bounded and unbiased.
      syncSince.seen++;
      if (syncSince.len < syncSince.values.length) syncSince.values[syncSince.len++] = sd;
      else {
        const j = Math.floor(Math.random() * syncSince.seen);
        if (j < syncSince.values.length) syncSince.values[j] = sd;
      }
    }
    tail.push({ seq: seq, rec: rec });
  }

  /**
   * One channel message: `{"data":[...],"seq":N}` where N is the sequence
   * number of the last record in `data` (records are numbered one by one,
   * and the numbering continues across bridge restarts). When a `since`
   * asked for records the channel no longer holds, it first sends
   * `{"data":[],"lost":N,"since":S,"first_available":F,"next":F}`; when
   * `since` is beyond its newest record, `{"data":[],"since":S,"next":N}`.
   */
  function onMessage(msg) {
    const t = now();
    if (!msg || typeof msg !== 'object') { agg.badFrames++; return; }
    if (msg.lost != null) {
      agg.lost += num(msg.lost) || 0;
      const f = num(msg.first_available);
      // The skipped numbers are accounted for as lost, not as a gap.
      if (f != null && (agg.lastSeq == null || f - 1 > agg.lastSeq)) agg.lastSeq = f - 1;
    } else if (msg.seq == null && msg.next != null) {
      // `since` was beyond the channel's newest record (a number from
      // another history): go on from the channel's numbering.
      const n = num(msg.next);
      if (n != null) agg.lastSeq = n - 1;
    }
    if (!Array.isArray(msg.data)) { agg.badFrames++; return; }
    const last = num(msg.seq);
    const first = last == null ? null : last - msg.data.length + 1;
    for (let i = 0; i < msg.data.length; i++) {
      const seq = first == null ? null : first + i;
      if (seq != null && agg.lastSeq != null) {
        if (seq <= agg.lastSeq) { agg.seqRepeats++; continue; } // sent twice: already counted
        // A channel with a filter skips the numbers of others' records.
        if (seq > agg.lastSeq + 1 && !settings.channel) agg.gaps += seq - agg.lastSeq - 1;
      }
      if (seq != null) agg.lastSeq = seq;
      ingest(msg.data[i], seq, t);
    }
    dirty = true;
  }

  // ---- the WebSocket channel ----
  let ws = null;
  let channelBase = settings.wsOverride; // ws://host:port/path, without query
  let retryMs = RECONNECT_MIN_MS;
  let retryTimer = null;
  let failuresBeforeOpen = 0;
  const decoder = new TextDecoder();

  function setConnection(state, detail) {
    agg.connection = state;
    const el = $('conn-state');
    el.dataset.state = state;
    setText(el, detail ? state + ': ' + detail : state);
  }

  function connect() {
    retryTimer = null;
    if (!settings.token) { setConnection('no-token'); $('token-form').hidden = false; return; }
    if (!channelBase) { setConnection('connecting', 'waiting for /status'); return; }
    $('token-form').hidden = true;
    $('forget-token').hidden = false;
    const u = new URL(channelBase, location.href);
    if (u.protocol === 'http:') u.protocol = 'ws:';
    if (u.protocol === 'https:') u.protocol = 'wss:';
    setText($('channel-url'), u.toString());
    if (!mayConnect(u.toString(), !settings.wsOverride, agg.status)) {
      // A #ws= may name this bridge's own channel: /status tells.
      if (!agg.status) { setConnection('connecting', 'waiting for /status'); return; }
      // Final: no retry, and the token never leaves the page.
      setConnection('refused', '#ws= names ' + wsOrigin(u.toString()) + ', which is not this bridge\'s channel; '
        + 'the token is not sent there (list it in status.dashboard_channel_origins to allow it)');
      return;
    }
    u.searchParams.set('key', settings.token);
    if (settings.perMessage) u.searchParams.set('records_per_message', String(settings.perMessage));
    const since = agg.lastSeq != null ? agg.lastSeq + 1 : settings.since;
    if (since != null) u.searchParams.set('since', String(since));
    setConnection(agg.connects ? 'reconnecting' : 'connecting');
    // The browser does not tell a refused handshake from a dead bridge; the
    // channel's refusal counters in /status do (see handshakeFailed).
    const refusedBefore = refusals(agg.status);
    let opened = false;
    const sock = new WebSocket(u.toString());
    sock.binaryType = 'arraybuffer';
    ws = sock;
    sock.onopen = () => {
      opened = true;
      failuresBeforeOpen = 0;
      retryMs = RECONNECT_MIN_MS;
      agg.connects++;
      setConnection('open');
    };
    sock.onmessage = (ev) => {
      const text = typeof ev.data === 'string' ? ev.data : decoder.decode(ev.data);
      if (text.startsWith('Response To')) return;
      let msg;
      try { msg = JSON.parse(text); } catch (e) { agg.badFrames++; return; }
      onMessage(msg);
    };
    sock.onclose = (ev) => {
      if (ws !== sock) return;
      ws = null;
      if (opened) {
        setConnection('reconnecting', ev.reason || 'closed ' + ev.code);
        scheduleReconnect();
        return;
      }
      failuresBeforeOpen++;
      handshakeFailed(refusedBefore);
    };
    sock.onerror = () => { /* onclose follows and reconnects */ };
  }

  /** The channel's refusal counters in a /status document (zeros when absent). */
  function refusals(st) {
    const r = (st && st.channel && st.channel.refused) || {};
    return { unauthorized: num(r.unauthorized) || 0, full: num(r.too_many_connections) || 0 };
  }

  /**
   * A handshake failed before the socket opened. /status (same origin as
   * this page) says why: no answer = the bridge is unreachable; one more
   * `unauthorized` refusal = the token is wrong (401), so stop retrying and
   * ask for it; one more `too_many_connections` = the channel is full.
   */
  async function handshakeFailed(before) {
    let st = null;
    try {
      const r = await fetch('status', { cache: 'no-store' });
      if (r.ok) st = await r.json();
    } catch (e) { st = null; }
    if (ws || retryTimer) return; // a new attempt started meanwhile
    if (!st) {
      agg.statusState = 'error';
      setConnection('unreachable', 'bridge unreachable: no answer from ' + location.host);
      scheduleReconnect();
      return;
    }
    agg.status = st;
    const after = refusals(st);
    if (after.unauthorized > before.unauthorized) {
      setConnection('wrong-token', 'wrong token: the channel refused it (401); enter the channel token');
      $('token-form').hidden = false;
      return; // retried when a token is entered
    }
    if (after.full > before.full) setConnection('reconnecting', 'channel full: too many connections (503)');
    else setConnection('reconnecting', 'channel handshake failed (channel down?)');
    scheduleReconnect();
  }

  function scheduleReconnect() {
    if (retryTimer) return;
    retryTimer = setTimeout(connect, retryMs);
    retryMs = Math.min(RECONNECT_MAX_MS, retryMs * 2);
  }

  /** The channel's WebSocket URL from /status, with the page's host when the bridge listens on all addresses. */
  function channelFromStatus(st) {
    const c = st && st.channel;
    if (!c) return null;
    if (c.url) return c.url;
    if (!c.listen) return null;
    let host = String(c.listen);
    const m = host.match(/^(\[[^\]]*\]|[^:]*):(\d+)$/);
    if (m && (m[1] === '0.0.0.0' || m[1] === '[::]')) host = location.hostname + ':' + m[2];
    const scheme = c.tls ? 'wss://' : 'ws://';
    return scheme + host + (c.path || '/stream');
  }

  // ---- /status polling ----
  async function pollStatus() {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), STATUS_EVERY_MS * 2);
    try {
      const r = await fetch('status', { cache: 'no-store', signal: ctl.signal });
      if (!r.ok) throw new Error('HTTP ' + r.status);
      const st = await r.json();
      agg.status = st;
      agg.statusState = 'ok';
      recordFiles(st, now());
      setText($('bridge-version'), st.version ? 'v' + st.version + ', up ' + fmtMs(num(st.uptime_secs) * 1000) : '');
      if (!settings.wsOverride) {
        const base = channelFromStatus(st);
        if (base && base !== channelBase) {
          channelBase = base;
          if (ws) ws.close(); else if (!retryTimer) connect();
        } else if (!base && !ws) {
          setConnection('no-channel', 'no [channel] configured; files and sinks only');
        }
      } else if (!ws && !retryTimer && agg.connection === 'connecting') {
        // A #ws= that waited for /status to be checked.
        connect();
      }
      // The bridge is answering again: do not wait out a long back-off.
      if (!ws && retryTimer && retryMs > RECONNECT_MIN_MS * 4) { clearTimeout(retryTimer); retryTimer = null; connect(); }
    } catch (e) {
      agg.statusState = 'error';
      if (!ws && !['wrong-token', 'no-token', 'refused'].includes(agg.connection)) setConnection('unreachable', 'bridge unreachable: no answer from ' + location.host);
    } finally {
      clearTimeout(timer);
      dirty = true;
      setTimeout(pollStatus, STATUS_EVERY_MS);
    }
  }

  /**
   * A file's windowed sync delay from /status (`sync_delay_ms`: {p50, p95, max, min, samples}, null when idle),
   * and the p95 of its transfer delay (`transfer_delay_ms`, LE 6 files only).
   */
  function fileDelay(f) {
    const d = f.sync_delay_ms || {};
    const t = f.transfer_delay_ms || {};
    return { p50: num(d.p50), p95: num(d.p95), max: num(d.max), transferP95: num(t.p95) };
  }

  /** A file's series key: its identity (the same file renamed or gzipped keeps it), else its path (older bridges). */
  function fileKey(f) { return f.id || f.path; }

  function recordFiles(st, t) {
    const sorted = syncSince.values.slice(0, syncSince.len).sort();
    liveSeries.points.push({ t: t, p50: quantile(sorted, 0.5), p95: null });
    syncSince.len = 0;
    syncSince.seen = 0;
    const win = st.settings && num(st.settings.delay_window_secs);
    if (win != null) setText($('delay-window'), fmtMs(win * 1000));
    const files = Array.isArray(st.files) ? st.files : [];
    for (const f of files) {
      let s = fileSeries.get(fileKey(f));
      if (!s) {
        s = { color: COLORS[fileSeries.size % COLORS.length], points: new Ring(SYNC_POINTS) };
        fileSeries.set(fileKey(f), s);
      }
      const d = fileDelay(f);
      // An idle file has no current delay: plot a gap, not an old figure.
      s.points.push({ t: t, p50: f.state === 'idle' ? null : d.p50, p95: f.state === 'idle' ? null : d.p95 });
      s.seen = t;
    }
    // Forget files gone from /status for ten minutes (bounded memory).
    for (const [p, s] of fileSeries) if (t - s.seen > 600000) fileSeries.delete(p);
  }

  // ---- rendering ----
  function render() {
    const t = now();
    advanceRate(Math.floor(t / 1000));
    setText($('calls-total'), fmtInt(agg.calls));
    setText($('calls-per-sec'), fmtInt(callsPerSecond(t)));
    for (const k of ['2xx', '3xx', '4xx', '5xx']) {
      setText($('status-' + k), fmtInt(agg.statusMix[k]));
      setText($('status-' + k + '-pct'), agg.calls ? (100 * agg.statusMix[k] / agg.calls).toFixed(1) + ' %' : '');
    }
    setText($('errors-mashery'), fmtInt(agg.errors.mashery));
    setText($('errors-api'), fmtInt(agg.errors.api));
    setText($('errors-other'), fmtInt(agg.errors.other));
    setText($('last-seq'), agg.lastSeq == null ? '-' : String(agg.lastSeq));
    const ss = $('status-state');
    ss.dataset.state = agg.statusState;
    setText(ss, agg.statusState);
    const lat = latency.sorted();
    setText($('lat-p50'), fmtMs(secToMs(quantile(lat, 0.5))));
    setText($('lat-p95'), fmtMs(secToMs(quantile(lat, 0.95))));
    setText($('lat-p99'), fmtMs(secToMs(quantile(lat, 0.99))));
    const sd = syncDelay.sorted();
    setText($('sync-p50'), fmtMs(quantile(sd, 0.5)));
    setText($('sync-p95'), fmtMs(quantile(sd, 0.95)));
    setText($('sync-max'), fmtMs(sd.length ? sd[sd.length - 1] : null));
    renderTop($('top-services'), top.services);
    renderTop($('top-endpoints'), top.endpoints);
    renderFiles();
    renderSinks();
    renderChannels();
    renderExport();
    renderTail();
    drawRate(t);
    drawSync(t);
  }
  function secToMs(s) { return s == null ? null : s * 1000; }

  function callsPerSecond(t) {
    // Mean of the last five complete seconds: steady to read, still live.
    const sec = Math.floor(t / 1000);
    let sum = 0;
    for (let i = 1; i <= 5; i++) sum += rate.counts[(sec - i) % RATE_SECONDS];
    return sum / 5;
  }

  /** Keeps `n` rows of `cells` cells in a tbody, reusing the elements. */
  function rows(tbody, n, cells) {
    while (tbody.rows.length > n) tbody.deleteRow(-1);
    while (tbody.rows.length < n) {
      const tr = tbody.insertRow();
      for (let i = 0; i < cells; i++) tr.insertCell();
    }
    return tbody.rows;
  }

  function renderTop(table, map) {
    const entries = [...map.entries()].sort((a, b) => b[1] - a[1]).slice(0, TOP_SHOW);
    const total = agg.calls || 1;
    const rs = rows(table.tBodies[0], entries.length, 3);
    entries.forEach(([k, v], i) => {
      const c = rs[i].cells;
      setText(c[0], k);
      c[0].title = k;
      setText(c[1], fmtInt(v));
      c[1].className = 'num';
      setText(c[2], (100 * v / total).toFixed(1) + ' %');
      c[2].className = 'num';
    });
  }

  function renderFiles() {
    const files = agg.status && Array.isArray(agg.status.files) ? agg.status.files : [];
    const rs = rows($('files').tBodies[0], files.length, 9);
    files.forEach((f, i) => {
      const c = rs[i].cells;
      const s = fileSeries.get(fileKey(f));
      const d = fileDelay(f);
      rs[i].dataset.path = f.path;
      if (!c[0].firstChild) c[0].appendChild(document.createElement('span')).className = 'swatch';
      c[0].firstChild.style.background = s ? s.color : 'transparent';
      setText(c[1], f.path);
      c[1].title = f.path;
      setText(c[2], f.state || '-');
      c[2].className = 'state state-' + (f.state || 'unknown');
      setText(c[3], fmtBytes(num(f.bytes_behind)));
      setText(c[4], fmtMs(d.p50));
      setText(c[5], fmtMs(d.p95));
      setText(c[6], fmtMs(d.max));
      setText(c[7], fmtMs(d.transferP95));
      setText(c[8], fmtInt(num(f.records)));
      for (let k = 3; k < 9; k++) c[k].className = 'num';
    });
  }

  function renderSinks() {
    const sinks = agg.status && Array.isArray(agg.status.sinks) ? agg.status.sinks : [];
    const rs = rows($('sinks').tBodies[0], sinks.length, 7);
    sinks.forEach((s, i) => {
      const c = rs[i].cells;
      const d = s.delivery_delay_ms || {};
      setText(c[0], s.name || '-');
      setText(c[1], fmtInt(num(s.queue_depth)));
      setText(c[2], fmtInt(num(s.delivered_records)));
      setText(c[3], fmtMs(num(d.p95)));
      setText(c[4], fmtMs(num(s.oldest_undelivered_age_ms)));
      setText(c[5], fmtInt(num(s.retries)));
      setText(c[6], fmtInt(num(s.dropped_records)));
      for (let k = 1; k < 7; k++) c[k].className = 'num';
    });
  }

  /**
   * The channels from /status (`channel`: families by channel and by
   * channel and token, see src/sink/channel/stats.rs): one row each, only
   * the page's channel when opened for one; null when the bridge has no
   * channel. Tokens are shown by label or digest prefix (never a token).
   */
  function channelRows(st) {
    const c = st && st.channel;
    if (!c || typeof c !== 'object' || !c.connections_by_channel || typeof c.connections_by_channel !== 'object') return null;
    const fam = (name) => (c[name] && typeof c[name] === 'object' ? c[name] : {});
    const sent = fam('records_sent_by_channel'), filtered = fam('records_filtered_by_channel'), lost = fam('lost_notices_by_channel');
    const slow = fam('slow_consumer_closes_by_channel'), tokens = fam('token_connections');
    return Object.keys(c.connections_by_channel).sort()
      .filter((id) => !settings.channel || id === settings.channel)
      .map((id) => {
        const t = tokens[id] && typeof tokens[id] === 'object' ? tokens[id] : {};
        const inUse = Object.keys(t).sort().filter((name) => num(t[name]) > 0).map((name) => name + ' (' + num(t[name]) + ')');
        return {
          id: id, connections: num(c.connections_by_channel[id]), recordsSent: num(sent[id]), recordsFiltered: num(filtered[id]),
          lostNotices: num(lost[id]), slowConsumerCloses: num(slow[id]), tokensInUse: inUse, tokens: Object.keys(t).length,
        };
      });
  }

  function renderChannels() {
    const list = channelRows(agg.status);
    $('channels-panel').hidden = !list;
    if (!list) return;
    const rs = rows($('channels').tBodies[0], list.length, 7);
    list.forEach((ch, i) => {
      const c = rs[i].cells;
      setText(c[0], ch.id);
      setText(c[1], fmtInt(ch.connections));
      setText(c[2], fmtInt(ch.recordsSent));
      setText(c[3], fmtInt(ch.recordsFiltered));
      setText(c[4], fmtInt(ch.lostNotices));
      setText(c[5], fmtInt(ch.slowConsumerCloses));
      setText(c[6], ch.tokensInUse.length ? ch.tokensInUse.join(', ') : 'none of ' + ch.tokens);
      for (let k = 1; k < 6; k++) c[k].className = 'num';
    });
  }

  /**
   * The export's recent slices from /status (`export`: per-slice gauge
   * families keyed by the slice's start, see src/sink/export/stats.rs),
   * newest first; null when the bridge has no `[export]`.
   */
  function exportSlices(st) {
    const e = st && st.export;
    if (!e || typeof e !== 'object') return null;
    const fam = (name) => (e[name] && typeof e[name] === 'object' ? e[name] : {});
    const open = fam('slice_open'), records = fam('slice_records'), late = fam('slice_late_records');
    const lateFiles = fam('slice_late_files'), closed = fam('slice_closed_at_seconds');
    const worst = fam('slice_worst_sync_delay_ms'), pending = fam('slice_uploads_pending');
    const starts = [...new Set([...Object.keys(open), ...Object.keys(records)])].sort().reverse();
    return starts.map((k) => {
      const closedS = num(closed[k]);
      const recs = num(records[k]), lateRecs = num(late[k]);
      return {
        slice: k,
        state: num(open[k]) === 1 ? 'open' : 'closed',
        records: recs,
        lateRecords: lateRecs,
        lateFiles: num(lateFiles[k]),
        // 0 while open (the gauge has no "none").
        closedAtMs: closedS ? closedS * 1000 : null,
        // 0 until the slice has a record.
        worstSyncDelayMs: (recs || 0) + (lateRecs || 0) > 0 ? num(worst[k]) : null,
        uploadsPending: num(pending[k]),
      };
    });
  }
  function fmtIso(ms) { return ms == null ? '-' : new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z'); }

  function renderExport() {
    const slices = exportSlices(agg.status);
    const panel = $('export-panel');
    if (panel.hidden !== !slices) panel.hidden = !slices;
    if (!slices) return;
    const e = agg.status.export;
    setText($('export-totals'), 'in total: ' + fmtInt(num(e.records)) + ' records, ' + fmtInt(num(e.late_records)) + ' late in '
      + fmtInt(num(e.late_files)) + ' late files, ' + fmtInt(num(e.files_published)) + ' files published, '
      + fmtInt(num(e.uploads_pending)) + ' waiting for upload, ' + fmtInt(num(e.upload_failures)) + ' upload failures');
    const rs = rows($('export-slices').tBodies[0], slices.length, 8);
    slices.forEach((x, i) => {
      const c = rs[i].cells;
      rs[i].dataset.slice = x.slice;
      setText(c[0], x.slice);
      setText(c[1], x.state);
      c[1].className = 'state state-' + x.state;
      setText(c[2], fmtInt(x.records));
      setText(c[3], fmtInt(x.lateRecords));
      setText(c[4], fmtInt(x.lateFiles));
      setText(c[5], fmtIso(x.closedAtMs));
      setText(c[6], fmtMs(x.worstSyncDelayMs));
      setText(c[7], fmtInt(x.uploadsPending));
      for (const k of [2, 3, 4, 6, 7]) c[k].className = 'num';
    });
  }

  // Live tail filter: plain text matches anywhere in the record's main fields;
  // `field=value` matches a field (substring; `service`, `endpoint`, `status`
  // and `method` are short for their record fields); `status=5xx` a status
  // class; `host=` the bridge that read the record (a hub's edges).
  let filterText = '';
  let filterChanged = false;
  let filterFn = () => true;
  function compileFilter(text) {
    const terms = text.trim().toLowerCase().split(/\s+/).filter(Boolean);
    if (!terms.length) return () => true;
    const tests = terms.map((term) => {
      const eq = term.indexOf('=');
      if (eq > 0) {
        const k = term.slice(0, eq), v = term.slice(eq + 1);
        if (k === 'status' && /^[1-5]xx$/.test(v)) return (r) => String(r.http_status_code || '').charAt(0) === v.charAt(0);
        const field = { status: 'http_status_code', service: 'service_name', endpoint: 'endpoint_name', method: 'http_method' }[k] || k;
        return (r) => String(r[field] == null ? '' : r[field]).toLowerCase().includes(v);
      }
      return (r) => [r.http_status_code, r.response_string, r.http_method, r.host, r.service_name, r.endpoint_name, r.uri, r.api_key, r.src_ip, r.request_uuid]
        .some((x) => x != null && String(x).toLowerCase().includes(term));
    });
    return (r) => tests.every((f) => f(r));
  }

  let tailPaused = false;
  let tailShown = null;
  function renderTail() {
    if (tailPaused) return;
    const shown = [];
    let scanned = 0;
    tail.eachNewest((e) => {
      scanned++;
      if (filterFn(e.rec)) shown.push(e);
      return shown.length < TAIL_SHOW;
    });
    const newest = shown.length ? shown[0] : null;
    if (tailShown === newest && !filterChanged) return;
    tailShown = newest;
    filterChanged = false;
    const rs = rows($('tail').tBodies[0], shown.length, 11);
    shown.forEach((e, i) => {
      const r = e.rec;
      const c = rs[i].cells;
      // Text that may be cut by its column keeps its whole value in the title.
      const cell = (k, v) => { setText(c[k], v); c[k].title = v; };
      setText(c[0], e.seq == null ? '' : String(e.seq));
      cell(1, r.request_time || '');
      setText(c[2], String(r.http_status_code || ''));
      c[2].className = 's' + String(r.http_status_code || '').charAt(0);
      cell(3, r.response_string || '');
      setText(c[4], r.http_method || '');
      cell(5, r.host || '');
      cell(6, val(r.service_name) || val(r.service_id) || '');
      cell(7, r.endpoint_name || '');
      cell(8, r.uri || '');
      setText(c[9], r.total_request_exec_time || '');
      c[9].className = 'num';
      setText(c[10], r.sync_delay_ms == null ? '' : String(r.sync_delay_ms));
      c[10].className = 'num';
    });
    setText($('tail-count'), filterText ? shown.length + (shown.length === TAIL_SHOW ? '+' : '') + ' of the last ' + scanned + ' match' : '');
  }

  // ---- canvases, drawn by hand ----
  function prepCanvas(cv) {
    const dpr = window.devicePixelRatio || 1;
    const w = cv.clientWidth, h = cv.clientHeight;
    if (cv.width !== Math.round(w * dpr) || cv.height !== Math.round(h * dpr)) {
      cv.width = Math.round(w * dpr);
      cv.height = Math.round(h * dpr);
    }
    const ctx = cv.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = '11px system-ui, sans-serif';
    return { ctx, w, h };
  }

  /** At most this many intervals between gridlines on a value axis. */
  const MAX_TICKS = 5;
  /** Round steps for a count axis: 1, 2, 5 times a power of ten (whole numbers). */
  function countSteps(max) {
    const out = [];
    for (let p = 1; p <= Math.max(10, max * 10); p *= 10) for (const m of [1, 2, 5]) out.push(m * p);
    return out;
  }
  /** Round steps for a duration axis, in ms: what a clock reads (15 s, 30 s, 1 min, 5 min, 1 h...). */
  const DURATION_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000, 15000, 30000,
    60000, 120000, 300000, 600000, 900000, 1800000, 3600000, 7200000, 10800000, 21600000, 43200000, 86400000];
  /** Gridline values 0, step, 2 step, ... covering `max`, with the smallest round step that needs at most MAX_TICKS intervals. */
  function niceTicks(max, steps) {
    const m = max > 0 ? max : 0;
    let step = steps[steps.length - 1];
    for (const s of steps) if (Math.ceil(m / s) <= MAX_TICKS) { step = s; break; }
    const n = Math.max(1, Math.ceil(m / step));
    const ticks = [];
    for (let i = 0; i <= n; i++) ticks.push(i * step);
    return ticks;
  }
  /** A tick label for a duration: 0, 250 ms, 1.5 s, 30 s, 2 min, 6 h (no needless decimals). */
  function fmtTickMs(ms) {
    const r = (x) => String(Number(x.toFixed(2)));
    if (ms === 0) return '0';
    if (ms < 1000) return r(ms) + ' ms';
    if (ms < 60000) return r(ms / 1000) + ' s';
    if (ms < 3600000) return r(ms / 60000) + ' min';
    return r(ms / 3600000) + ' h';
  }
  /** The gridlines drawn last, per chart (for tests: `snapshot().ticks`). */
  const drawnTicks = { rate: [], sync: [] };

  function axes(ctx, w, h, left, bottom, ticks, fmt) {
    ctx.strokeStyle = '#26303b';
    ctx.fillStyle = '#8593a3';
    ctx.lineWidth = 1;
    const top = ticks[ticks.length - 1];
    for (const v of ticks) {
      const y = Math.round(8 + (h - bottom - 8) * (1 - v / top)) + 0.5;
      ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(w, y); ctx.stroke();
      ctx.fillText(fmt(v), 2, y + 4);
    }
  }

  function drawRate(t) {
    const { ctx, w, h } = prepCanvas($('rate-chart'));
    const left = 56, bottom = 8;
    const sec = Math.floor(t / 1000);
    let max = 0;
    for (let i = 1; i < RATE_SECONDS; i++) max = Math.max(max, rate.counts[(sec - i) % RATE_SECONDS]);
    const ticks = niceTicks(max, countSteps(max));
    drawnTicks.rate = ticks;
    const yMax = ticks[ticks.length - 1];
    axes(ctx, w, h, left, bottom, ticks, (v) => fmtInt(v));
    const bw = (w - left) / (RATE_SECONDS - 1);
    ctx.fillStyle = '#58a6ff';
    for (let i = 1; i < RATE_SECONDS; i++) {
      const v = rate.counts[(sec - i) % RATE_SECONDS];
      if (!v) continue;
      const bh = (h - bottom - 8) * v / yMax;
      ctx.fillRect(w - i * bw, h - bottom - bh, Math.max(1, bw - 1), bh);
    }
  }

  function drawSync(t) {
    const { ctx, w, h } = prepCanvas($('sync-chart'));
    const left = 56, bottom = 18;
    const series = [...fileSeries.values()].slice(0, CHART_FILES_MAX);
    series.push(liveSeries);
    // The time axis grows with the history held: 2 minutes up to SYNC_POINTS samples.
    let oldest = t;
    let max = 0;
    for (const s of series) {
      s.points.eachNewest((p) => {
        oldest = Math.min(oldest, p.t);
        if (p.p95 != null) max = Math.max(max, p.p95);
        if (p.p50 != null) max = Math.max(max, p.p50);
      });
    }
    const spanMs = Math.min(SYNC_POINTS * STATUS_EVERY_MS, Math.max(120000, t - oldest));
    const ticks = niceTicks(max, DURATION_STEPS);
    drawnTicks.sync = ticks;
    const yMax = ticks[ticks.length - 1];
    axes(ctx, w, h, left, bottom, ticks, fmtTickMs);
    const x = (pt) => left + (w - left) * (1 - (t - pt) / spanMs);
    const y = (v) => 8 + (h - bottom - 8) * (1 - Math.max(0, v) / yMax);
    ctx.fillStyle = '#8593a3';
    const stepMin = spanMs > 600000 ? 5 : spanMs > 240000 ? 2 : 1;
    for (let m = 0; m * 60000 <= spanMs; m += stepMin) {
      const px = x(t - m * 60000);
      ctx.fillText(m ? '-' + m + ' min' : 'now', Math.max(left, Math.min(px - 10, w - 28)), h - 4);
    }
    // p95 solid, p50 dashed; an idle file or a missing figure leaves a gap.
    for (const [key, dash, width] of [['p95', [], 1.8], ['p50', [4, 3], 1]]) {
      for (const s of series) {
        // The live line (records' median) is drawn solid whatever the key.
        ctx.setLineDash(s === liveSeries ? [] : dash);
        ctx.lineWidth = s === liveSeries ? 1.5 : width;
        ctx.strokeStyle = s.color;
        ctx.beginPath();
        let pen = false;
        for (const p of s.points.toArray()) {
          const v = p[key];
          if (v == null || p.t < t - spanMs) { pen = false; continue; }
          if (pen) ctx.lineTo(x(p.t), y(v)); else ctx.moveTo(x(p.t), y(v));
          pen = true;
        }
        ctx.stroke();
      }
    }
    ctx.setLineDash([]);
    if (series.length === 1) { ctx.fillStyle = '#8593a3'; ctx.fillText('no files reported by /status yet', left + 10, h / 2); }
  }

  // Render a few times per second at most, and only when something changed
  // (or once a second so that "calls per second" and charts keep moving).
  let lastRender = 0;
  function frame(ts) {
    if (ts - lastRender >= RENDER_EVERY_MS && (dirty || ts - lastRender >= 1000)) {
      lastRender = ts;
      dirty = false;
      render();
    }
    requestAnimationFrame(frame);
  }

  // ---- wiring ----
  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const v = $('token-input').value.trim();
    if (!v) return;
    settings.token = v;
    failuresBeforeOpen = 0;
    $('token-input').value = '';
    try { sessionStorage.setItem(TOKEN_KEY, v); } catch (e) { /* memory only */ }
    if (ws) ws.close();
    if (retryTimer) { clearTimeout(retryTimer); retryTimer = null; }
    connect();
  });
  $('forget-token').addEventListener('click', () => {
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* nothing stored */ }
    settings.token = null;
    $('forget-token').hidden = true;
    if (retryTimer) { clearTimeout(retryTimer); retryTimer = null; }
    const s = ws; ws = null;
    if (s) s.close();
    connect();
  });
  $('tail-filter').addEventListener('input', (ev) => {
    filterText = ev.target.value;
    filterFn = compileFilter(filterText);
    filterChanged = true;
    dirty = true;
  });
  $('tail-pause').addEventListener('change', (ev) => { tailPaused = ev.target.checked; filterChanged = true; dirty = true; });

  window.__dashboard = Object.assign(agg, {
    /** A plain copy of the aggregates, for tests and the console. */
    snapshot() {
      const lat = latency.sorted(), sd = syncDelay.sorted();
      return {
        calls: agg.calls, statusMix: Object.assign({}, agg.statusMix), errors: Object.assign({}, agg.errors),
        lastSeq: agg.lastSeq, connection: agg.connection, connects: agg.connects, gaps: agg.gaps, lost: agg.lost,
        duplicates: agg.duplicates, seqRepeats: agg.seqRepeats, badFrames: agg.badFrames, statusState: agg.statusState, channelUrl: channelBase,
        latencyMs: { p50: secToMs(quantile(lat, 0.5)), p95: secToMs(quantile(lat, 0.95)), p99: secToMs(quantile(lat, 0.99)) },
        syncDelayMs: { p50: quantile(sd, 0.5), p95: quantile(sd, 0.95), max: sd.length ? sd[sd.length - 1] : null, samples: sd.length },
        files: (agg.status && agg.status.files || []).map((f) => Object.assign({ path: f.path, state: f.state, bytes_behind: num(f.bytes_behind) }, { delay: fileDelay(f) })),
        tailKept: tail.len,
        exportSlices: exportSlices(agg.status),
        channels: channelRows(agg.status),
        ticks: { rate: drawnTicks.rate.slice(), sync: drawnTicks.sync.slice(), syncLabels: drawnTicks.sync.map(fmtTickMs) },
        connectionText: $('conn-state').textContent,
      };
    },
  });

  if (settings.wsOverride) connect(); else setConnection(settings.token ? 'connecting' : 'no-token', settings.token ? 'waiting for /status' : '');
  if (!settings.token) $('token-form').hidden = false;
  pollStatus();
  requestAnimationFrame(frame);
})();
