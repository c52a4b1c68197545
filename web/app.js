// memoreel's web client: the storyboard editor, the live player, steering prompts, live figures, the memory
// inspector, reconnect/resume. The protocol is docs/protocol.md, the REST API docs/api.md.
import {LiveSession, newEventId} from './session.js';
import {LivePlayer} from './player.js';
import {timelineEntries, renderTimeline} from './timeline.js';
import {renderStats, Inspector} from './panels.js';

const $ = (id) => document.getElementById(id);
const STORE_KEY = 'memoreel.session';
const MAX_PROMPT_BYTES = 1000;
const DEFAULT_ROWS = [
  [0, 'a green striped fox walks into a red room'],
  [6, 'cut to the beach, the fox walks across'],
];
const GUESS_MIME = {mp4: 'video/mp4; codecs="avc1.42C01E"', webm: 'video/webm; codecs="vp8"'};

const state = {
  sessionId: null,
  token: null,
  apiKey: '',
  config: null,
  active: false, // a session this page follows is running (or being reconnected)
  done: null, // the session.done message
  connected: false,
  sectionsReceived: 0,
  nextSection: null, // the first section not yet appended: where a resume starts
  appliedEvents: {}, // event_id -> section
  events: new Map(), // event_id -> {prompt, status, time, section, by, error}
  storyboard: [], // [{time, prompt}] as started (the fallback when the session object is not at hand)
  server: null, // the latest session object
  promptFirstSection: new Map(), // prompt -> the first section it was in force
  lastChunk: null, // {index, prompt} of the latest section's metadata
  genSeconds: null, // start_seconds of the latest section
  stats: {},
  lastError: null,
  rttMs: null,
};

const session = new LiveSession();
const player = new LivePlayer($('video'), (m) => console.info(`player: ${m}`));
const inspector = new Inspector({
  slider: $('inspect-slider'),
  output: $('inspect-t'),
  image: $('inspect-image'),
  info: $('inspect-info'),
  urlFor: (t) => (state.sessionId ? restUrl(`/v1/sessions/${state.sessionId}/inspect.png`, {t: t.toFixed(4)}) : null),
});

// Read-only state for tests (copies: nothing a test does changes the page).
Object.defineProperty(window, 'memoreel', {
  value: Object.freeze({
    get sessionId() { return state.sessionId; },
    get sectionsReceived() { return state.sectionsReceived; },
    get appliedEvents() { return {...state.appliedEvents}; },
    get lastError() { return state.lastError ? {...state.lastError} : null; },
    get connected() { return state.connected; },
    get events() { return Object.fromEntries([...state.events].map(([id, e]) => [id, {...e}])); },
    get done() { return state.done ? {...state.done} : null; },
    get nextSection() { return state.nextSection; },
    get config() { return state.config ? structuredClone(state.config) : null; },
  }),
  writable: false,
});

// ---- REST helpers -------------------------------------------------------------------------------------

function restUrl(path, params = {}) {
  const q = new URLSearchParams(params);
  if (state.token) q.set('token', state.token);
  if (state.apiKey) q.set('api_key', state.apiKey);
  return `${path}?${q}`;
}

let refreshTimer = null;
// The session object (storyboard states, events): fetched at most once a second, after the events that
// change it.
function refreshSoon() {
  if (refreshTimer || !state.sessionId) return;
  refreshTimer = setTimeout(async () => {
    refreshTimer = null;
    const id = state.sessionId;
    try {
      const res = await fetch(restUrl(`/v1/sessions/${id}`));
      if (!res.ok || id !== state.sessionId) return;
      state.server = await res.json();
      // A page that saw no live figures (reloaded after the end) shows the session object's.
      if (!Object.keys(state.stats).length) state.stats = {...state.server};
      if (!state.active && typeof state.server.seconds_generated === 'number') {
        inspector.setRange(state.server.seconds_generated, state.config?.fps);
      }
      render();
    } catch {
      // the timeline keeps what the stream told it
    }
  }, 1000);
}

// ---- status line ----------------------------------------------------------------------------------------

let statusHoldUntil = 0;
function setStatus(text, kind = 'info', holdMs = 0) {
  const now = Date.now();
  if (kind === 'info' && now < statusHoldUntil) return; // an error stays readable for a while
  statusHoldUntil = holdMs ? now + holdMs : 0;
  const el = $('status');
  el.textContent = text;
  el.className = kind;
}

function liveStatus() {
  if (!state.sessionId) return;
  const where = state.genSeconds !== null ? ` · ${state.genSeconds.toFixed(1)} s` : '';
  setStatus(`${state.connected ? 'live' : 'offline'} · ${state.sessionId}${where}`);
}

// ---- persistence (a page reload resumes) -----------------------------------------------------------------

function save() {
  if (!state.sessionId) return;
  sessionStorage.setItem(STORE_KEY, JSON.stringify({
    sessionId: state.sessionId, token: state.token, apiKey: state.apiKey, nextSection: state.nextSection,
    done: state.done, storyboard: state.storyboard, events: [...state.events], appliedEvents: state.appliedEvents,
    config: state.config,
  }));
}

function restore() {
  let s;
  try {
    s = JSON.parse(sessionStorage.getItem(STORE_KEY) || 'null');
  } catch {
    s = null;
  }
  if (!s || !s.sessionId || !s.token) return false;
  Object.assign(state, {
    sessionId: s.sessionId, token: s.token, apiKey: s.apiKey || '', nextSection: s.nextSection ?? null,
    done: s.done || null, storyboard: s.storyboard || [], events: new Map(s.events || []),
    appliedEvents: s.appliedEvents || {}, config: s.config || null,
  });
  $('api-key').value = state.apiKey;
  // The form shows the restored session's storyboard and settings.
  if (state.storyboard.length) {
    $('storyboard-rows').replaceChildren();
    for (const p of state.storyboard) addRow(p.time, p.prompt);
  }
  if (state.config) {
    if (Number.isFinite(state.config.seconds)) $('seconds').value = String(state.config.seconds);
    if (Number.isFinite(state.config.seed)) $('seed').value = String(state.config.seed);
    if (state.config.format) $('format').value = state.config.format;
    if (state.config.memory) $('memory').checked = state.config.memory.enabled !== false;
  }
  if (state.done) {
    setStatus(`finished (${state.done.reason}) · ${state.sessionId}`);
    $('video').src = restUrl(`/v1/sessions/${state.sessionId}/video.mp4`); // the whole video, from its start
    refreshSoon();
  } else {
    state.active = true;
    setStatus(`resuming ${state.sessionId}…`);
    session.resume(state.sessionId, state.token, state.apiKey, state.nextSection ?? 0);
  }
  setSessionControls();
  render();
  return true;
}

// ---- the storyboard editor -------------------------------------------------------------------------------

function addRow(time = '', prompt = '') {
  const row = document.createElement('div');
  row.className = 'sb-row';
  row.innerHTML = `<input class="sb-time" type="number" min="0" step="0.5" aria-label="time (s)">
    <input class="sb-prompt" type="text" maxlength="1000" placeholder="prompt" aria-label="prompt">
    <button class="sb-remove small" type="button" title="Remove this prompt" aria-label="remove">×</button>`;
  row.querySelector('.sb-time').value = String(time);
  row.querySelector('.sb-prompt').value = prompt;
  row.querySelector('.sb-remove').addEventListener('click', () => row.remove());
  $('storyboard-rows').append(row);
  return row;
}

// The request for session.start, or throws with what the user must fix.
function readForm() {
  const prompts = [];
  for (const row of $('storyboard-rows').querySelectorAll('.sb-row')) {
    const prompt = row.querySelector('.sb-prompt').value.trim();
    const timeText = row.querySelector('.sb-time').value.trim();
    if (!prompt && !timeText) continue;
    const time = Number(timeText || '0');
    if (!prompt) throw new Error(`the prompt at ${time} s is empty`);
    if (!Number.isFinite(time) || time < 0) throw new Error(`"${timeText}" is not a time in seconds`);
    if (new TextEncoder().encode(prompt).length > MAX_PROMPT_BYTES) throw new Error('a prompt is longer than 1000 bytes');
    prompts.push({time, prompt});
  }
  if (!prompts.length) throw new Error('the storyboard needs at least one prompt');
  prompts.sort((a, b) => a.time - b.time);
  const req = {storyboard: {prompts}, format: $('format').value, memory: {enabled: $('memory').checked}};
  const seconds = Number($('seconds').value);
  if ($('seconds').value !== '') {
    if (!(seconds > 0)) throw new Error('seconds must be positive');
    req.seconds = seconds;
  }
  if ($('seed').value !== '') {
    const seed = Number($('seed').value);
    if (!Number.isInteger(seed) || seed < 0) throw new Error('the seed must be a whole number >= 0');
    req.seed = seed;
  }
  return req;
}

function startSession(ev) {
  ev.preventDefault();
  let req;
  try {
    req = readForm();
  } catch (e) {
    setStatus(e.message, 'error', 5000);
    return;
  }
  if (!LivePlayer.supports(GUESS_MIME[req.format])) {
    setStatus(`this browser cannot play ${req.format}: choose the other format`, 'error', 5000);
    return;
  }
  session.leave(); // a previous session goes on on the server; this page follows the new one
  sessionStorage.removeItem(STORE_KEY);
  Object.assign(state, {
    sessionId: null, token: null, apiKey: $('api-key').value.trim(), config: null, active: true, done: null,
    connected: false, sectionsReceived: 0, nextSection: null, appliedEvents: {}, events: new Map(),
    storyboard: req.storyboard.prompts, server: null, promptFirstSection: new Map(), lastChunk: null, genSeconds: null,
    stats: {}, lastError: null,
  });
  player.destroy();
  inspector.reset();
  statusHoldUntil = 0;
  setStatus('starting…');
  setSessionControls();
  render();
  session.start(req, state.apiKey);
}

// ---- controls ----------------------------------------------------------------------------------------

function setSessionControls() {
  const live = state.active && !state.done;
  $('start').disabled = live;
  for (const el of $('start-form').querySelectorAll('input, select, button:not(#start)')) el.disabled = live;
  $('stop').disabled = !(live && state.sessionId);
  $('prompt-input').disabled = !(live && state.sessionId);
  $('prompt-send').disabled = !(live && state.sessionId);
  const a = $('download');
  if (state.sessionId) {
    a.href = restUrl(`/v1/sessions/${state.sessionId}/video.mp4`);
    a.download = `memoreel-${state.sessionId}.mp4`;
    a.classList.remove('disabled');
    a.removeAttribute('aria-disabled');
  } else {
    a.removeAttribute('href');
    a.classList.add('disabled');
    a.setAttribute('aria-disabled', 'true');
  }
}

function sendPrompt(ev) {
  ev.preventDefault();
  const input = $('prompt-input');
  const prompt = input.value.trim();
  if (!prompt || !state.sessionId) return;
  if (new TextEncoder().encode(prompt).length > MAX_PROMPT_BYTES) {
    setStatus('the prompt is longer than 1000 bytes', 'error', 5000);
    return;
  }
  const id = newEventId();
  state.events.set(id, {prompt, status: 'sending', time: null, section: null, by: null, error: null});
  session.interact(id, prompt); // without a connection now: sent after the next video.start
  input.value = '';
  save();
  render();
}

async function stopSession() {
  if (!state.sessionId) return;
  $('stop').disabled = true;
  setStatus('stopping after the current section…', 'info', 5000);
  if (session.stop()) return; // session.done follows
  try {
    const res = await fetch(restUrl(`/v1/sessions/${state.sessionId}/stop`), {method: 'POST'});
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
  } catch (e) {
    setStatus(`stop failed: ${e.message}`, 'error', 5000);
    $('stop').disabled = false;
  }
}

// ---- the protocol ----------------------------------------------------------------------------------------

// Nothing appended yet: from section 0, not "the next live section" (which would lose the first ones).
session.nextSectionFn = () => state.nextSection ?? 0;

session.on('open', () => {
  state.connected = true;
  liveStatus();
  render();
});

session.on('video.start', (m) => {
  state.sessionId = m.session_id;
  state.token = session.token;
  state.config = m.config || {};
  state.connected = true;
  try {
    player.reset(state.config.mime_type); // every connection brings its own init segment
  } catch (e) {
    setStatus(e.message, 'error', 10000);
  }
  // Events not yet confirmed, and queued ones (whose status may have changed while offline): sent again
  // with the same event_id, which the server answers with the event's current status.
  for (const [id, e] of state.events) {
    if (e.status === 'sending' || e.status === 'queued') session.interact(id, e.prompt);
  }
  setSessionControls();
  liveStatus();
  save();
  refreshSoon();
});

session.on('init', (data) => player.appendInit(data));

session.on('segment', ({meta, data}) => {
  state.sectionsReceived++;
  const section = meta.chunk_index;
  if (typeof meta.start_seconds === 'number') state.genSeconds = meta.start_seconds;
  // A prompt's first section, only where this page saw the change itself (section 0, or the section after
  // one with another prompt): a resumed stream's first section is not where its prompt began.
  const prev = state.lastChunk;
  if (meta.prompt && !state.promptFirstSection.has(meta.prompt) &&
      (section === 0 || (prev && prev.index === section - 1 && prev.prompt !== meta.prompt))) {
    state.promptFirstSection.set(meta.prompt, section);
  }
  state.lastChunk = {index: section, prompt: meta.prompt};
  for (const id of meta.events?.started || []) markApplied(id, section, meta.start_seconds);
  if (meta.stats) state.stats = {...state.stats, ...meta.stats};
  player.appendSegment(data, section);
  if (section % 5 === 0) refreshSoon();
  liveStatus();
  render();
});

player.onAppended = (section) => {
  state.nextSection = Math.max(state.nextSection ?? 0, section + 1);
  save();
};

function markApplied(id, section, startSeconds) {
  if (state.appliedEvents[id] === undefined) state.appliedEvents[id] = section;
  const e = state.events.get(id);
  if (e) {
    e.status = 'applied';
    e.section = state.appliedEvents[id];
    if (e.time === null && typeof startSeconds === 'number') e.time = startSeconds;
  }
}

session.on('session.interaction.queued', (m) => {
  const e = state.events.get(m.event_id);
  if (e && e.status !== 'applied') {
    e.status = 'queued';
    if (typeof m.time === 'number') e.time = m.time;
    if (Number.isInteger(m.section)) e.section = m.section;
  }
  save();
  render();
  refreshSoon();
});

session.on('session.interaction.applied', (m) => {
  markApplied(m.event_id, m.section, m.start_seconds);
  save();
  render();
  refreshSoon();
});

session.on('session.interaction.superseded', (m) => {
  const e = state.events.get(m.event_id);
  if (e) {
    e.status = 'superseded';
    e.by = m.by || null;
  }
  save();
  render();
  refreshSoon();
});

session.on('session.stats', (m) => {
  state.stats = {...state.stats, ...m};
  render();
});

session.on('session.skipped', (m) => {
  setStatus(`this connection fell behind: sections ${m.from_section}-${m.to_section} were skipped`, 'warn', 4000);
  player.tick();
});

session.on('session.done', (m) => {
  state.done = m;
  player.end();
  const secs = typeof m.seconds === 'number' ? `, ${m.seconds.toFixed(1)} s` : '';
  statusHoldUntil = 0;
  setStatus(`finished (${m.reason}): ${m.sections ?? state.sectionsReceived} sections${secs}`, m.reason === 'error' ? 'error' : 'info');
  setSessionControls();
  save();
  render();
  refreshSoon();
});

session.on('session.pong', () => {
  state.rttMs = session.rttMs;
  render();
});

session.on('error', (m) => {
  state.lastError = {code: m.code, message: m.message, event_id: m.event_id ?? null, fatal: !!m.fatal};
  const e = m.event_id ? state.events.get(m.event_id) : null;
  if (e) {
    e.status = 'refused';
    e.error = `${m.code}: ${m.message}`;
  }
  setStatus(`error ${m.code}: ${m.message}`, 'error', 8000);
  if (m.fatal && (m.code === 'unknown_session' || m.code === 'bad_token')) sessionStorage.removeItem(STORE_KEY);
  if (!state.sessionId) {
    // session.start refused: this connection has no session; the form is free for another try.
    state.active = false;
    session.leave();
    setSessionControls();
  }
  render();
});

session.on('close', ({code, willRetry}) => {
  state.connected = false;
  if (willRetry) {
    setStatus('connection lost: reconnecting…', 'warn');
  } else if (!state.done) {
    // Refused (the error, when one came, is already in the status line) or out of retries.
    state.active = false;
    if (!state.lastError) setStatus(`connection closed (${code})`, 'error', 8000);
  }
  setSessionControls();
  render();
});

session.on('giveup', () => {
  state.active = false;
  setStatus('could not reconnect: reload the page to try again', 'error');
  setSessionControls();
});

// ---- rendering ------------------------------------------------------------------------------------------

let renderQueued = false;
function render() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    renderTimeline($('timeline'), state.sessionId || state.active ? timelineEntries(state) : []);
    const v = $('video');
    const b = v.buffered;
    const lag = b.length ? b.end(b.length - 1) - v.currentTime : null;
    renderStats($('stats'), state.stats, {
      sectionsReceived: state.sectionsReceived, targetSeconds: state.config?.seconds,
      lagSeconds: state.active && !state.done ? lag : null,
      rttMs: state.rttMs,
    });
    $('behind').hidden = !state.stats.behind_realtime || !!state.done;
    if (typeof state.stats.seconds_generated === 'number') inspector.setRange(state.stats.seconds_generated, state.config?.fps);
  });
}

// ---- wiring ---------------------------------------------------------------------------------------------

$('start-form').addEventListener('submit', startSession);
$('storyboard-add').addEventListener('click', () => addRow('', '').querySelector('.sb-prompt').focus());
$('prompt-form').addEventListener('submit', sendPrompt);
$('stop').addEventListener('click', stopSession);
$('video').addEventListener('timeupdate', render);
for (const [t, p] of DEFAULT_ROWS) addRow(t, p);
if (!restore()) setSessionControls();
