// The login page: user name and password, posted to /auth/login in cookie mode.

import { ApiError, describe, login } from './api.js';
import { h } from './dom.js';

/** Renders the login form into `root`; calls `done()` after a successful login. */
export function loginView(root, { done, notice }) {
  const user = h('input', { id: 'user', name: 'user', autocomplete: 'username', required: true });
  const password = h('input', {
    id: 'password', name: 'password', type: 'password', autocomplete: 'current-password', required: true,
  });
  const submit = h('button', { id: 'login-submit', type: 'submit' }, 'Log in');
  const error = h('p', { id: 'login-error', class: 'error', role: 'alert', hidden: true });
  const form = h('form', { id: 'login-form', class: 'login', onsubmit },
    h('h1', {}, 'bkg admin'),
    notice ? h('p', { class: 'muted' }, notice) : null,
    h('label', { for: 'user' }, 'User'), user,
    h('label', { for: 'password' }, 'Password'), password,
    submit, error);
  root.append(form);
  user.focus();

  async function onsubmit(event) {
    event.preventDefault();
    submit.disabled = true;
    error.hidden = true;
    try {
      await login(user.value.trim(), password.value);
      done();
    } catch (e) {
      error.textContent = e instanceof ApiError && e.status === 401 ? 'Wrong user name or password.' : describe(e);
      error.hidden = false;
      password.select();
    } finally {
      submit.disabled = false;
    }
  }
  return { destroy() {} };
}
