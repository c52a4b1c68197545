// The live protocol (docs/protocol.md) over one WebSocket at a time: start or resume a session, pair every
// binary message with the JSON header that announced it, ping, and reconnect with backoff after a drop.
// The UI listens through `on(type, fn)`: every server message type, plus the local events
// 'init' (ArrayBuffer), 'segment' ({meta, data}), 'open', 'close' ({code, reason, willRetry}), 'giveup'.

const PING_MS = 15000;
const BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 15000];
const MAX_RETRIES = 30;
// Errors after which reconnecting cannot help: the session or its token is not valid.
const NO_RETRY_CODES = new Set(['unknown_session', 'bad_token', 'unauthorized']);

export function socketUrl(apiKey) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const q = apiKey ? `?api_key=${encodeURIComponent(apiKey)}` : '';
  return `${scheme}//${location.host}/v1/realtime/video${q}`;
}

// 1-64 characters; crypto.randomUUID exists only in secure contexts, getRandomValues everywhere.
export function newEventId() {
  const r = crypto.getRandomValues(new Uint32Array(2));
  return `e_${Date.now().toString(36)}_${r[0].toString(36)}${r[1].toString(36)}`;
}

export class LiveSession {
  constructor() {
    this.ws = null;
    this.apiKey = '';
    this.sessionId = null;
    this.token = null;
    this.started = false; // video.start seen on the current connection
    this.ended = false; // session.done seen, stopped by us, or a fatal refusal: never reconnect
    this.retries = 0;
    this.pingId = 0;
    this.pingTimer = null;
    this.pingSentAt = new Map(); // ping id -> performance.now() when sent
    this.rttMs = null; // the latest ping's round trip
    this.retryTimer = null;
    this.expect = null; // {kind: 'init'} | {kind: 'segment', meta}: what the next binary message is
    this.nextSectionFn = () => null; // the UI says which section to resume from
    this.handlers = new Map();
  }

  on(type, fn) {
    if (!this.handlers.has(type)) this.handlers.set(type, []);
    this.handlers.get(type).push(fn);
  }

  emit(type, arg) {
    for (const fn of this.handlers.get(type) || []) {
      try {
        fn(arg);
      } catch (e) {
        console.error(`handler for ${type} failed`, e); // one broken view must not stop the stream
      }
    }
  }

  get connected() {
    return !!this.ws && this.ws.readyState === WebSocket.OPEN;
  }

  start(request, apiKey) {
    this.apiKey = apiKey || '';
    this.sessionId = null;
    this.token = null;
    this.ended = false;
    this.retries = 0;
    this.open({type: 'session.start', ...request});
  }

  resume(sessionId, token, apiKey, fromSection) {
    this.apiKey = apiKey || '';
    this.sessionId = sessionId;
    this.token = token;
    this.ended = false;
    this.retries = 0;
    this.open(this.resumeMessage(fromSection));
  }

  resumeMessage(fromSection) {
    const m = {type: 'session.resume', session_id: this.sessionId, token: this.token};
    if (Number.isInteger(fromSection) && fromSection >= 0) m.from_section = fromSection;
    return m;
  }

  open(firstMessage) {
    this.teardown();
    const ws = new WebSocket(socketUrl(this.apiKey));
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    this.started = false;
    this.expect = null;
    ws.onopen = () => {
      if (ws !== this.ws) return;
      ws.send(JSON.stringify(firstMessage));
      this.pingTimer = setInterval(() => {
        this.pingSentAt.set(++this.pingId, performance.now());
        this.send({type: 'session.ping', id: this.pingId});
      }, PING_MS);
      this.emit('open');
    };
    ws.onmessage = (ev) => {
      if (ws === this.ws) this.receive(ev.data);
    };
    ws.onclose = (ev) => {
      if (ws === this.ws) this.closed(ev);
    };
    // onerror is always followed by onclose, which decides what to do.
  }

  receive(data) {
    if (typeof data !== 'string') {
      const expect = this.expect;
      this.expect = null;
      if (!expect) {
        console.warn('memoreel: a binary message without a header was ignored');
        return;
      }
      if (expect.kind === 'init') this.emit('init', data);
      else this.emit('segment', {meta: expect.meta, data});
      return;
    }
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      console.warn('memoreel: a text message that is not JSON was ignored');
      return;
    }
    switch (msg.type) {
      case 'video.start':
        this.sessionId = msg.session_id;
        this.token = msg.token || this.token; // a resume may not repeat the token
        this.started = true;
        this.retries = 0;
        break;
      case 'video.init':
        this.expect = {kind: 'init'};
        break;
      case 'video.chunk_metadata':
        this.expect = {kind: 'segment', meta: msg};
        break;
      case 'session.pong':
        if (this.pingSentAt.has(msg.id)) this.rttMs = performance.now() - this.pingSentAt.get(msg.id);
        this.pingSentAt.clear();
        break;
      case 'session.done':
        this.ended = true;
        break;
      case 'error':
        if (msg.fatal && NO_RETRY_CODES.has(msg.code)) this.ended = true;
        break;
    }
    this.emit(msg.type, msg);
  }

  closed(ev) {
    this.teardown();
    // Nothing to resume before video.start named the session: the start itself was refused or failed.
    const willRetry = !this.ended && !!this.sessionId && this.retries < MAX_RETRIES;
    this.emit('close', {code: ev.code, reason: ev.reason, willRetry});
    if (!willRetry) {
      if (!this.ended && this.sessionId) this.emit('giveup');
      return;
    }
    const base = BACKOFF_MS[Math.min(this.retries, BACKOFF_MS.length - 1)];
    const delay = base * (0.75 + Math.random() * 0.5); // jitter: many viewers do not return in step
    this.retries++;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      if (!this.ended) this.open(this.resumeMessage(this.nextSectionFn()));
    }, delay);
  }

  teardown() {
    clearInterval(this.pingTimer);
    this.pingTimer = null;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.ws) {
      const ws = this.ws;
      this.ws = null; // its late events are ignored from here on
      if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) ws.close(1000);
    }
  }

  send(msg) {
    if (!this.connected) return false;
    this.ws.send(JSON.stringify(msg));
    return true;
  }

  // False when not sent (no connection, or video.start not yet seen): the UI sends the event again after
  // the next video.start, with the same event_id, which the server treats as a retry.
  interact(eventId, prompt) {
    if (!this.started) return false;
    return this.send({type: 'session.interaction', event_id: eventId, event: {prompt, time: null, mode: 'add'}});
  }

  stop() {
    return this.send({type: 'session.stop'});
  }

  // The viewer leaves; the session goes on on the server.
  leave() {
    this.ended = true;
    this.teardown();
  }
}
