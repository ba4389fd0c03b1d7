// The admin UI's shell: a hash router (#/login, #/plugins, #/plugins/NAME/logs), the login gate
// and the header. Each view is a function (root, options) → {destroy}; only one is alive at a
// time, so the page holds at most one EventSource (the logs view's).

import { api, csrfToken, describe, logout, onUnauthorized } from './api.js';
import { h } from './dom.js';
import { loginView } from './login.js';
import { logsView } from './logs.js';
import { pluginsView } from './plugins.js';

const NEXT_KEY = 'bkg.next';
const main = document.getElementById('main');
const top = document.getElementById('top');
let view = null;
let me = null; // the principal of GET /auth/me
let renders = 0;

function parse(hash) {
  const logs = /^#\/plugins\/([^/]+)\/logs$/.exec(hash);
  if (logs) return { name: 'logs', plugin: decodeURIComponent(logs[1]) };
  if (hash === '#/login') return { name: 'login' };
  return { name: 'plugins' };
}

function toLogin(notice) {
  me = null;
  // Already there (a second 401 racing the first): leave the form alone, it may be in use.
  if (location.hash === '#/login') return;
  sessionStorage.setItem(NEXT_KEY, location.hash || '#/plugins');
  if (notice) sessionStorage.setItem('bkg.notice', notice);
  location.hash = '#/login';
}

async function render() {
  const ticket = ++renders;
  view?.destroy();
  view = null;
  main.replaceChildren();
  const route = parse(location.hash);
  if (route.name === 'login') {
    top.hidden = true;
    const notice = sessionStorage.getItem('bkg.notice');
    sessionStorage.removeItem('bkg.notice');
    view = loginView(main, { done: afterLogin, notice });
    return;
  }
  // Without this tab's CSRF token the session cannot change anything: log in again.
  if (!csrfToken()) return toLogin();
  if (!me) {
    try {
      me = (await api('GET', '/auth/me')).principal;
    } catch (e) {
      if (e.status !== 401 && ticket === renders) main.replaceChildren(h('p', { class: 'error' }, describe(e)));
      return;
    }
    if (ticket !== renders) return; // another navigation happened meanwhile
  }
  top.hidden = false;
  document.getElementById('who').textContent = `${me.name}${me.role ? ` (${me.role})` : ''}`;
  const canControl = me.scopes.includes('plugins:control');
  view = route.name === 'logs' ? logsView(main, { plugin: route.plugin }) : pluginsView(main, { canControl });
}

function afterLogin() {
  const next = sessionStorage.getItem(NEXT_KEY);
  sessionStorage.removeItem(NEXT_KEY);
  location.hash = next && next !== '#/login' ? next : '#/plugins';
}

document.getElementById('logout').addEventListener('click', async () => {
  try {
    await logout();
  } catch {
    // The session may already be gone; the login page is right either way.
  }
  sessionStorage.removeItem(NEXT_KEY);
  toLogin('You are logged out.');
});

onUnauthorized(() => toLogin('Your session ended; please log in again.'));
window.addEventListener('hashchange', render);
render();
