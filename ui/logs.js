// The logs of one plug-in: GET /admin/plugins/NAME/logs as Server-Sent Events (the session
// cookie authenticates it; EventSource resends Last-Event-ID when it reconnects). Lines are
// text nodes, never markup. At most MAX_LINES rows are kept; following pauses when the user
// scrolls up, and a pill counts the lines that arrived meanwhile.

import { api } from './api.js';
import { h } from './dom.js';

const MAX_LINES = 10000;
const TAIL = 500;
const SLACK_PX = 8; // "at the bottom" within this many pixels
const LEVELS = { trace: 'TRC', debug: 'DBG', info: 'INF', warn: 'WRN', error: 'ERR' };

/** Renders the log view of `plugin` into `root`. */
export function logsView(root, { plugin }) {
  const pane = h('div', { id: 'log', class: 'log', role: 'log', 'aria-live': 'off', tabindex: '0' });
  const pill = h('button', { id: 'new-lines', class: 'pill', type: 'button', hidden: true, onclick: follow });
  const state = h('span', { id: 'log-conn', class: 'conn' }, 'connecting');
  const pause = h('button', { id: 'follow', type: 'button', 'aria-pressed': 'true', onclick: toggle }, 'Following');
  root.append(
    h('p', {}, h('a', { href: '#/plugins' }, '← Plug-ins')),
    h('h1', {}, `Logs: ${plugin}`),
    h('div', { class: 'toolbar' }, pause, state),
    h('div', { class: 'log-wrap' }, pane, pill),
  );

  let source = null;
  let lastId = null; // id of the last event received: where a new stream resumes
  let following = true;
  let unseen = 0;
  let pending = [];
  let frame = 0;
  let retry = 0;
  let alive = true;

  function open() {
    if (!alive || source || document.visibilityState !== 'visible') return;
    const query = new URLSearchParams({ tail: String(TAIL) });
    if (lastId !== null) query.set('after', lastId);
    source = new EventSource(`/admin/plugins/${encodeURIComponent(plugin)}/logs?${query}`);
    source.onopen = () => setState('live');
    source.addEventListener('log', (ev) => {
      lastId = ev.lastEventId || lastId;
      push(JSON.parse(ev.data));
    });
    source.addEventListener('gap', (ev) => push({ gap: JSON.parse(ev.data).missed }));
    source.onerror = () => {
      if (source && source.readyState === EventSource.CLOSED) {
        // The server refused the stream (not a dropped connection, which EventSource retries
        // by itself): find out why. A 401 sends the user to the login page through `api`.
        close();
        setState('offline');
        api('GET', `/admin/plugins/${encodeURIComponent(plugin)}`).then(
          () => { retry = setTimeout(open, 3000); },
          (e) => { if (e.status !== 401) setState(`offline: ${e.message}`); },
        );
      } else {
        setState('reconnecting');
      }
    };
  }

  function close() {
    source?.close();
    source = null;
  }

  function setState(text) {
    state.textContent = text;
    state.dataset.state = text.split(':')[0];
  }

  // Lines are batched and drawn once per animation frame.
  function push(item) {
    pending.push(item);
    if (pending.length > MAX_LINES) pending = pending.slice(-MAX_LINES);
    if (!frame) frame = requestAnimationFrame(flush);
  }

  function flush() {
    frame = 0;
    const batch = pending;
    pending = [];
    const rows = document.createDocumentFragment();
    for (const item of batch) rows.append(item.gap !== undefined ? gapRow(item.gap) : lineRow(item));
    pane.append(rows);
    const height = pane.scrollHeight;
    for (let excess = pane.childElementCount - MAX_LINES; excess > 0; excess--) pane.firstElementChild.remove();
    if (following) {
      pane.scrollTop = pane.scrollHeight;
    } else {
      pane.scrollTop -= height - pane.scrollHeight; // keep the lines being read in place
      unseen += batch.length;
      showPill();
    }
  }

  function lineRow(line) {
    const fields = line.fields && Object.keys(line.fields).length ? ` ${JSON.stringify(line.fields)}` : '';
    return h('div', { class: `line lvl-${line.level} stream-${line.stream}`, dataset: { seq: String(line.seq) } },
      h('span', { class: 'ts', title: line.ts }, (line.ts || '').slice(11, 23)),
      h('span', { class: 'lvl' }, LEVELS[line.level] || line.level),
      h('span', { class: 'stream' }, line.stream),
      h('span', { class: 'msg' }, line.msg + fields + (line.truncated ? ' [cut]' : '')));
  }

  function gapRow(missed) {
    return h('div', { class: 'line gap', role: 'separator' }, `— ${missed} line${missed === 1 ? '' : 's'} missed —`);
  }

  function atBottom() {
    return pane.scrollHeight - pane.scrollTop - pane.clientHeight <= SLACK_PX;
  }

  function setFollowing(on) {
    following = on;
    pause.setAttribute('aria-pressed', String(on));
    pause.textContent = on ? 'Following' : 'Paused';
    if (on) unseen = 0;
    showPill();
  }

  function showPill() {
    pill.hidden = following || unseen === 0;
    pill.textContent = `${unseen} new line${unseen === 1 ? '' : 's'} ↓`;
  }

  function follow() {
    setFollowing(true);
    pane.scrollTop = pane.scrollHeight;
  }

  function toggle() {
    if (following) setFollowing(false);
    else follow();
  }

  // Scrolling up pauses following; scrolling back to the bottom resumes it.
  pane.addEventListener('scroll', () => {
    const bottom = atBottom();
    if (bottom !== following) setFollowing(bottom);
  });

  // A hidden tab holds no stream; it resumes from the last id when shown again.
  function onVisibility() {
    if (document.visibilityState === 'visible') open();
    else close();
  }
  document.addEventListener('visibilitychange', onVisibility);
  open();

  return {
    destroy() {
      alive = false;
      close();
      cancelAnimationFrame(frame);
      clearTimeout(retry);
      document.removeEventListener('visibilitychange', onVisibility);
    },
  };
}
