// The sessiongate console. Everything it shows comes from the admin API with the token the
// operator typed in, kept in this tab only (sessionStorage) and sent as a bearer header.
// What the API returns is written as text (textContent), never as markup: subjects and
// User-Agents are chosen by users.
'use strict';

const $ = (sel) => document.querySelector(sel);
const KINDS = ['created', 'regenerated', 'destroyed', 'expired', 'revoked', 'evicted'];
const MAX_EVENTS = 200;

let token = sessionStorage.getItem('sg-console-token') || '';
let stream = null; // AbortController of the event stream
let statsTimer = null;
let current = ''; // the subject whose sessions the table shows
let asked = 0; // the latest lookup: an older answer arriving late is dropped
const recent = []; // [time, kind] of events in the last minute, for rates
let seen = 0;

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  Object.assign(e, props || {});
  for (const c of children) e.append(c);
  return e;
}

function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.round(s / 60) + ' min ago';
  if (s < 86400) return Math.round(s / 3600) + ' h ago';
  return Math.round(s / 86400) + ' d ago';
}

async function api(method, path) {
  const resp = await fetch(path, {
    method,
    headers: { Authorization: 'Bearer ' + token },
    cache: 'no-store',
  });
  const body = await resp.json().catch(() => ({}));
  if (resp.status === 401) {
    signOut('The token was refused.');
    throw new Error('the token was refused');
  }
  if (!resp.ok) throw new Error(body.error || 'HTTP ' + resp.status);
  return body;
}

function setLive(state, text) {
  const live = $('#live');
  live.className = 'status ' + state;
  live.textContent = text;
}

// Counts and rates: totals from /console/stats, rates from the live stream's last minute.
async function refreshStats() {
  let s;
  try {
    s = await api('GET', '/console/stats');
  } catch (e) {
    return;
  }
  $('#who').textContent = 'gateway ' + s.gateway + ' · store ' + s.store +
    ' · subject attribute "' + s.subject_attribute + '"';
  const cutoff = Date.now() - 60000;
  while (recent.length && recent[0][0] < cutoff) recent.shift();
  const cards = $('#cards');
  cards.replaceChildren();
  const live = s.sessions_live === null ? '—' : String(s.sessions_live);
  cards.append(card('sessions held', live, s.store === 'memory' ? 'in this gateway' : 'shared store', false));
  cards.append(card('tunnels open', String(s.tunnels_watched), 'WebSockets with a session', false));
  for (const k of KINDS) {
    const rate = recent.filter((r) => r[1] === k).length;
    cards.append(card(k, String(s.counts[k] ?? 0), rate + ' / min', rate > 0 && (k === 'revoked' || k === 'evicted')));
  }
}

function card(label, n, sub, hot) {
  return el('div', { className: 'card' + (hot ? ' hot' : ''), id: 'card-' + label.replace(/ /g, '-') },
    el('div', { className: 'k', textContent: label }),
    el('div', { className: 'n', textContent: n }),
    el('div', { className: 'r', textContent: sub }));
}

// The event stream, read with fetch (EventSource cannot send the token as a header).
async function follow() {
  if (stream) stream.abort();
  const ctl = new AbortController();
  stream = ctl;
  setLive('wait', 'connecting');
  try {
    const resp = await fetch('/events', {
      headers: { Authorization: 'Bearer ' + token },
      cache: 'no-store',
      signal: ctl.signal,
    });
    if (resp.status === 401) return signOut('The token was refused.');
    if (!resp.ok || !resp.body) throw new Error('HTTP ' + resp.status);
    setLive('on', 'live');
    const reader = resp.body.getReader();
    const text = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += text.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        handleBlock(block);
      }
    }
  } catch (e) {
    if (ctl.signal.aborted) return;
  }
  if (stream !== ctl || !token) return;
  setLive('off', 'reconnecting…');
  setTimeout(() => { if (stream === ctl && token) follow(); }, 2000);
}

function handleBlock(block) {
  let kind = 'message';
  let data = '';
  for (const line of block.split('\n')) {
    if (line.startsWith('event: ')) kind = line.slice(7);
    else if (line.startsWith('data: ')) data += line.slice(6);
  }
  if (!data) return;
  let e;
  try { e = JSON.parse(data); } catch (_) { return; }
  if (kind === 'lagged') {
    addEvent({ event: 'lagged', key: '', at_ms: Date.now(), gateway: '', missed: e.missed });
    return;
  }
  recent.push([Date.now(), e.event]);
  addEvent(e);
  // A session of the subject on screen changed: show it as it is now.
  if (current && e.subject === current && e.event !== 'created') markGone(e);
  if (current && e.subject === current && (e.event === 'created' || e.event === 'regenerated')) search(current, true);
}

function addEvent(e) {
  if ($('#only-subject').checked && current && e.subject !== current) return;
  const list = $('#events');
  const when = new Date(e.at_ms || Date.now()).toLocaleTimeString();
  const what = e.event === 'lagged'
    ? 'the stream fell behind: ' + e.missed + ' events missed'
    : (e.subject ? e.subject + ' · ' : '') + 'session ' + e.key +
      ' · ' + e.gateway + (e.route ? ' · route ' + e.route : '');
  list.prepend(el('li', { className: 'ev ' + e.event },
    el('span', { className: 't', textContent: when }),
    el('span', { className: 'tag ' + e.event, textContent: e.event }),
    el('span', { className: 'what', textContent: what })));
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
  seen += 1;
  $('#event-count').textContent = '(' + seen + ' since sign-in)';
}

function markGone(e) {
  if (e.event === 'regenerated') return;
  const row = document.querySelector('tr[data-key="' + CSS.escape(e.key) + '"]');
  if (row) {
    row.classList.add('gone');
    const b = row.querySelector('button');
    if (b) b.disabled = true;
  }
}

async function search(subject, quiet) {
  const mine = ++asked;
  const note = $('#result-note');
  if (!quiet) note.textContent = 'Looking up ' + subject + '…';
  let r;
  try {
    r = await api('GET', '/sessions?subject=' + encodeURIComponent(subject));
  } catch (e) {
    if (mine !== asked) return;
    // Nothing shown that the buttons could act on by mistake.
    current = '';
    $('#sessions tbody').replaceChildren();
    $('#sessions').hidden = true;
    $('#revoke-all').hidden = true;
    note.textContent = 'Lookup failed: ' + e.message;
    return;
  }
  if (mine !== asked) return;
  current = subject;
  const body = $('#sessions tbody');
  body.replaceChildren();
  for (const s of r.sessions) {
    const revoke = el('button', { className: 'revoke', type: 'button', textContent: 'Revoke' });
    revoke.addEventListener('click', () => revokeOne(subject, s.key, revoke));
    const row = el('tr', {},
      el('td', { className: 'key', textContent: s.key }),
      el('td', { textContent: s.client || '—' }),
      el('td', { className: 'agent', textContent: s.user_agent || '—', title: s.user_agent || '' }),
      el('td', { textContent: s.tracking || '—' }),
      el('td', { textContent: ago(s.created_ms), title: new Date(s.created_ms).toISOString() }),
      el('td', { textContent: ago(s.last_seen_ms), title: new Date(s.last_seen_ms).toISOString() }),
      el('td', {}, revoke));
    row.dataset.key = s.key;
    body.append(row);
  }
  $('#sessions').hidden = r.sessions.length === 0;
  $('#revoke-all').hidden = r.sessions.length === 0;
  $('#revoke-all').dataset.subject = subject;
  note.textContent = r.sessions.length === 0
    ? 'No live session of ' + subject + '.'
    : r.sessions.length + ' live session' + (r.sessions.length === 1 ? '' : 's') + ' of ' + subject + '.';
}

async function revokeOne(subject, key, button) {
  button.disabled = true;
  try {
    await api('DELETE', '/sessions/' + encodeURIComponent(key) + '?subject=' + encodeURIComponent(subject));
    $('#result-note').textContent = 'Session ' + key + ' revoked.';
    const row = button.closest('tr');
    if (row) row.classList.add('gone');
  } catch (e) {
    button.disabled = false;
    $('#result-note').textContent = 'Revoking failed: ' + e.message;
  }
  refreshStats();
}

async function revokeAll() {
  const b = $('#revoke-all');
  // The subject the table was drawn for, not whatever was typed since.
  const subject = b.dataset.subject;
  if (!subject) return;
  b.disabled = true;
  try {
    const r = await api('DELETE', '/sessions?subject=' + encodeURIComponent(subject));
    $('#result-note').textContent = r.deleted + ' session(s) of ' + subject + ' revoked.';
    await search(subject, true);
    $('#result-note').textContent = r.deleted + ' session(s) of ' + subject + ' revoked.';
  } catch (e) {
    $('#result-note').textContent = 'Revoking failed: ' + e.message;
  }
  b.disabled = false;
  refreshStats();
}

async function signIn(t) {
  token = t;
  try {
    await api('GET', '/console/stats');
  } catch (e) {
    $('#signin-error').textContent = 'Sign-in failed: ' + e.message;
    token = '';
    return;
  }
  sessionStorage.setItem('sg-console-token', token);
  $('#signin-error').textContent = '';
  $('#signin-panel').hidden = true;
  $('#app').hidden = false;
  $('#signout').hidden = false;
  refreshStats();
  clearInterval(statsTimer);
  statsTimer = setInterval(refreshStats, 2000);
  follow();
}

function signOut(why) {
  token = '';
  sessionStorage.removeItem('sg-console-token');
  if (stream) stream.abort();
  stream = null;
  clearInterval(statsTimer);
  $('#app').hidden = true;
  $('#signout').hidden = true;
  $('#signin-panel').hidden = false;
  $('#signin-error').textContent = why || '';
  setLive('off', 'signed out');
}

$('#signin').addEventListener('submit', (ev) => {
  ev.preventDefault();
  signIn($('#token').value.trim());
});
$('#search').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const s = $('#subject').value.trim();
  if (s) search(s, false);
});
$('#revoke-all').addEventListener('click', revokeAll);
$('#signout').addEventListener('click', () => signOut(''));
if (token) signIn(token);
