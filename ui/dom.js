// Small DOM helpers. Elements are built with createElement and text nodes only: nothing in the
// UI assigns innerHTML, so plug-in names, reasons and log lines can never become markup.

/** `h('td', {class: 'x', onclick: f, dataset: {plugin: 'a'}}, 'text', child)` */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child)); // strings become text nodes
  }
  return el;
}

const SVG = 'http://www.w3.org/2000/svg';

// Stroked 16×16 icons; the text next to each one carries the meaning (never colour or icon alone).
const ICONS = {
  check: 'M3 8.5l3.2 3.2L13 4.8',
  cross: 'M4 4l8 8M12 4l-8 8',
  warn: 'M8 1.8l6.6 12H1.4zM8 6.2v3.6M8 11.9v.2',
  clock: 'M8 2a6 6 0 1 0 .01 0M8 4.8V8l2.4 1.6',
  play: 'M5 3.2l7.5 4.8L5 12.8z',
  square: 'M4.2 4.2h7.6v7.6H4.2z',
  circle: 'M8 2.5a5.5 5.5 0 1 0 .01 0',
  ban: 'M8 2a6 6 0 1 0 .01 0M3.8 12.2l8.4-8.4',
};

/** An inline SVG icon, hidden from assistive technology. */
export function icon(name) {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', '0 0 16 16');
  svg.setAttribute('class', 'icon');
  svg.setAttribute('aria-hidden', 'true');
  const path = document.createElementNS(SVG, 'path');
  path.setAttribute('d', ICONS[name] ?? ICONS.circle);
  svg.append(path);
  return svg;
}

/** 75 → "1m 15s", 7300 → "2h 1m", 200000 → "2d 7h". */
export function duration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

/** Says `text` to screen readers through the page's polite live region. */
export function announce(text) {
  const region = document.getElementById('announce');
  if (region) region.textContent = text;
}
