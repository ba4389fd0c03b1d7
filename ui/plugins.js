// The Plugins tab: every plug-in and plain process with its state, problems first, and
// start / stop / restart per row. Refreshed by polling GET /admin/plugins every 2 s while the
// page is visible (there is no state-event stream yet; see ARCHITECTURE.md).

import { api, describe } from './api.js';
import { announce, duration, h, icon } from './dom.js';

const POLL_MS = 2000;
// Badge of each state: icon, text and a colour tone (the text always says it).
const STATES = {
  ready: ['check', 'ok'],
  degraded: ['warn', 'warn'],
  failed: ['cross', 'bad'],
  backoff: ['clock', 'warn'],
  starting: ['play', 'busy'],
  stopping: ['square', 'busy'],
  stopped: ['circle', 'idle'],
  disabled: ['ban', 'idle'],
};
// Problems first: failed, then degraded, then crash-looping (backoff); the rest by name.
const RANK = { failed: 0, degraded: 1, backoff: 2 };
const RUNNING = ['ready', 'degraded', 'starting', 'stopping'];
const OPS = [
  ['start', 'Start', (s) => !RUNNING.includes(s)],
  ['stop', 'Stop', (s) => ['ready', 'degraded', 'starting', 'backoff'].includes(s)],
  ['restart', 'Restart', (s) => !['stopping', 'disabled'].includes(s)],
];

export const needsAttention = (p) => p.state in RANK;

/** Renders the tab into `root`; `canControl` says whether the caller may use the actions. */
export function pluginsView(root, { canControl }) {
  let plugins = [];
  const ui = new Map(); // name → {busy: op?, confirm: op?, error: text?}: survives refreshes
  const rows = new Map(); // name → {tr, sig, since}
  let poll = null;
  let loading = false;
  let alive = true;

  const banner = h('div', { id: 'attention', class: 'banner', role: 'status', hidden: true });
  const status = h('p', { id: 'plugins-status', class: 'muted' }, 'Loading…');
  const tbody = h('tbody');
  const heads = ['Name', 'State', 'Protocol', 'PID', 'Uptime', 'Restarts', 'Details', 'Actions'];
  root.append(
    h('h1', {}, 'Plug-ins'),
    banner,
    status,
    h('table', { id: 'plugins', class: 'plugins' },
      h('thead', {}, h('tr', {}, heads.map((t) => h('th', { scope: 'col' }, t)))), tbody),
  );

  async function refresh() {
    if (loading || !alive) return;
    loading = true;
    try {
      const data = await api('GET', '/admin/plugins');
      if (!alive) return;
      plugins = data.plugins.map(withSince);
      status.hidden = true;
      render();
    } catch (e) {
      if (e.status !== 401 && alive) {
        status.hidden = false;
        status.textContent = `Cannot load plug-ins: ${describe(e)}`;
      }
    } finally {
      loading = false;
    }
  }

  // Uptime counts on in the page between polls: `since` is when the process started, by our clock.
  function withSince(p) {
    return { ...p, since: p.uptime_s == null ? null : Date.now() - p.uptime_s * 1000 };
  }

  function dependents(name) {
    return plugins.filter((p) => (p.after || []).includes(name)).map((p) => p.name);
  }

  function setUi(name, patch) {
    ui.set(name, { ...(ui.get(name) || {}), ...patch });
    render();
  }

  function render() {
    const list = [...plugins].sort((a, b) => (RANK[a.state] ?? 9) - (RANK[b.state] ?? 9) || a.name.localeCompare(b.name));
    const n = list.filter(needsAttention).length;
    banner.hidden = n === 0;
    banner.replaceChildren(icon('warn'), n === 1 ? '1 plug-in needs attention' : `${n} plug-ins need attention`);
    if (list.length === 0) {
      status.hidden = false;
      status.textContent = 'No plug-ins are registered.';
    }
    const seen = new Set();
    list.forEach((p, i) => {
      const state = ui.get(p.name) || {};
      // Rows are rebuilt only when what they show changed, so focus and clicks are not lost to
      // a refresh; uptime and countdowns are updated in place by `tick`.
      const { uptime_s: _u, since, ...shown } = p;
      const sig = JSON.stringify([shown, state]);
      let row = rows.get(p.name);
      if (!row || row.sig !== sig) {
        const tr = renderRow(p, state);
        row?.tr.replaceWith(tr);
        row = { tr, sig };
        rows.set(p.name, row);
      }
      row.since = since;
      if (tbody.children[i] !== row.tr) tbody.insertBefore(row.tr, tbody.children[i] || null);
      seen.add(p.name);
    });
    for (const [name, row] of rows) {
      if (!seen.has(name)) {
        row.tr.remove();
        rows.delete(name);
      }
    }
    tick();
  }

  function renderRow(p, state) {
    const [iconName, tone] = STATES[p.state] || ['circle', 'idle'];
    const badge = h('span', { class: `badge ${tone}`, dataset: { state: p.state } }, icon(iconName), h('span', {}, p.state));
    return h('tr', { class: needsAttention(p) ? 'attention' : null, dataset: { plugin: p.name, state: p.state } },
      h('td', { class: 'name' },
        h('a', { href: `#/plugins/${encodeURIComponent(p.name)}/logs`, title: `Logs of ${p.name}` }, p.name),
        p.required ? h('span', { class: 'tag' }, 'required') : null,
        p.enabled === false ? h('span', { class: 'tag' }, 'disabled') : null),
      h('td', { class: 'state' }, badge),
      h('td', { class: 'protocol' }, p.protocol === 'none' ? 'plain process' : p.protocol),
      h('td', { class: 'num pid' }, p.pid ?? '—'),
      h('td', { class: 'num uptime' }, '—'),
      h('td', { class: 'num restarts' }, String(p.restarts)),
      h('td', { class: 'details' }, details(p)),
      h('td', { class: 'actions' }, actions(p, state)));
  }

  function details(p) {
    const out = [];
    if (p.reason) out.push(h('div', { class: 'reason' }, p.reason));
    if (p.health && p.health.status !== 'serving' && p.health.detail) {
      out.push(h('div', { class: 'health' }, `health: ${p.health.detail}`));
    }
    if (p.last_exit && p.last_exit.reason !== p.reason) {
      out.push(h('div', { class: 'last-exit', title: p.last_exit.at || '' }, `last exit: ${p.last_exit.reason}`));
    }
    if (p.waiting_for && p.waiting_for.length) {
      out.push(h('div', { class: 'waiting' }, `waiting for: ${p.waiting_for.join(', ')}`));
    }
    if (p.next_restart_at) {
      out.push(h('div', { class: 'countdown' }, icon('clock'), ' next restart in ',
        h('span', { dataset: { until: p.next_restart_at } }, '…')));
    }
    return out;
  }

  function actions(p, state) {
    if (state.confirm) {
      const deps = dependents(p.name);
      const why = [];
      if (p.required) why.push(`${p.name} is required: /health reports "down" while it is stopped.`);
      if (deps.length) why.push(`${deps.join(', ')} depend${deps.length === 1 ? 's' : ''} on it (not stopped with it).`);
      return h('div', { class: 'confirm', role: 'group', 'aria-label': `Confirm stopping ${p.name}` },
        h('p', {}, `Stop ${p.name}? `, why.join(' ')),
        h('button', { type: 'button', class: 'danger', dataset: { confirm: 'stop' }, onclick: () => run(p, 'stop') }, 'Stop anyway'),
        h('button', { type: 'button', dataset: { cancel: '' }, onclick: () => setUi(p.name, { confirm: null }) }, 'Cancel'));
    }
    const buttons = OPS.map(([op, label, allowed]) => h('button', {
      type: 'button',
      dataset: { op },
      disabled: !canControl || Boolean(state.busy) || !allowed(p.state),
      title: canControl ? null : 'needs the plugins:control scope',
      'aria-busy': state.busy === op ? 'true' : null,
      onclick: () => click(p, op),
    }, state.busy === op ? `${label}…` : label));
    return [h('div', { class: 'buttons' }, buttons),
      state.error ? h('p', { class: 'error', role: 'alert' }, state.error) : null];
  }

  function click(p, op) {
    // Stopping is reversible, so an inline confirmation, and only when it hurts others.
    if (op === 'stop' && (p.required || dependents(p.name).length)) setUi(p.name, { confirm: 'stop', error: null });
    else run(p, op);
  }

  async function run(p, op) {
    setUi(p.name, { busy: op, confirm: null, error: null });
    try {
      const view = await api('POST', `/admin/plugins/${encodeURIComponent(p.name)}/${op}`);
      plugins = plugins.map((x) => (x.name === view.name ? withSince(view) : x));
      announce(`${p.name}: ${view.state}`);
      setUi(p.name, { busy: null });
    } catch (e) {
      if (e.status === 401) return;
      setUi(p.name, { busy: null, error: `${op} failed: ${describe(e)}` });
    }
    refresh();
  }

  // Once a second: uptimes and restart countdowns, without rebuilding rows.
  function tick() {
    const now = Date.now();
    for (const row of rows.values()) {
      row.tr.querySelector('.uptime').textContent = row.since == null ? '—' : duration((now - row.since) / 1000);
    }
    for (const el of tbody.querySelectorAll('[data-until]')) {
      const ms = Date.parse(el.dataset.until) - now;
      el.textContent = ms > 0 ? `${Math.ceil(ms / 1000)} s` : 'a moment';
    }
  }

  // Poll only while the page is visible; catch up at once when it becomes visible again.
  function schedule() {
    clearInterval(poll);
    poll = null;
    if (document.visibilityState === 'visible') {
      refresh();
      poll = setInterval(refresh, POLL_MS);
    }
  }
  const ticker = setInterval(tick, 1000);
  document.addEventListener('visibilitychange', schedule);
  schedule();

  return {
    destroy() {
      alive = false;
      clearInterval(poll);
      clearInterval(ticker);
      document.removeEventListener('visibilitychange', schedule);
    },
  };
}
