// A stand-in for `memoreel serve` that speaks docs/protocol.md and the parts of docs/api.md the web client
// uses, with FFmpeg's test pattern (1 s fragments of H.264 in fragmented MP4) instead of a model. It lets the
// web client and tests/web/e2e.mjs be tried without the model or the C++ server:
//   node tests/web/mock_server.mjs [--port 8090] [--section-ms 700] [--drop-at N] [--skip-at N]
// --drop-at N: the first connection of every session is cut (no close frame) right after section N.
// --skip-at N: sections N and N+1 are withheld from the first connection, which gets session.skipped.
// Only format mp4. Node's standard library and the ffmpeg command only; no dependencies.
import http from 'node:http';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {execFileSync} from 'node:child_process';
import {fileURLToPath} from 'node:url';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []));
const PORT = Number(args.port ?? 8090);
const SECTION_MS = Number(args['section-ms'] ?? 700);
const DROP_AT = args['drop-at'] !== undefined ? Number(args['drop-at']) : null;
const SKIP_AT = args['skip-at'] !== undefined ? Number(args['skip-at']) : null;
const WEB = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../web');
const MAX_SECONDS = 60;
const MIME = 'video/mp4; codecs="avc1.42C01E"';

// ---- media: FFmpeg's test pattern, split into the init segment and one segment per 1 s fragment ----------
function makeMedia() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'memoreel-mock-'));
  const mp4 = path.join(dir, 'pattern.mp4');
  const png = path.join(dir, 'inspect.png');
  const ff = ['-hide_banner', '-loglevel', 'error', '-y'];
  execFileSync('nice', ['ffmpeg', ...ff, '-f', 'lavfi', '-i', `testsrc2=size=320x192:rate=16`, '-t', String(MAX_SECONDS),
    '-c:v', 'libx264', '-preset', 'ultrafast', '-profile:v', 'baseline', '-level', '3.0', '-pix_fmt', 'yuv420p',
    '-g', '16', '-keyint_min', '16', '-sc_threshold', '0',
    '-movflags', '+frag_keyframe+empty_moov+default_base_moof', '-f', 'mp4', mp4]);
  execFileSync('nice', ['ffmpeg', ...ff, '-f', 'lavfi', '-i', 'testsrc2=size=640x192:rate=1', '-frames:v', '1', png]);
  const buf = fs.readFileSync(mp4);
  const boxes = [];
  for (let off = 0; off + 8 <= buf.length;) {
    const size = buf.readUInt32BE(off);
    boxes.push({type: buf.toString('latin1', off + 4, off + 8), data: buf.subarray(off, off + size)});
    off += size;
  }
  const init = Buffer.concat(boxes.filter((b) => b.type === 'ftyp' || b.type === 'moov').map((b) => b.data));
  const segments = [];
  for (let i = 0; i < boxes.length; i++) {
    if (boxes[i].type === 'moof' && boxes[i + 1]?.type === 'mdat') segments.push(Buffer.concat([boxes[i].data, boxes[i + 1].data]));
  }
  const inspectPng = fs.readFileSync(png);
  fs.rmSync(dir, {recursive: true, force: true});
  return {init, segments, inspectPng};
}
const media = makeMedia();

// ---- WebSocket (RFC 6455, server side, enough for one browser) ----------------------------------------
function wsAccept(req, socket) {
  const key = req.headers['sec-websocket-key'];
  const accept = crypto.createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
  socket.setNoDelay(true);
  const conn = {socket, open: true, onText: () => {}, onClose: () => {}};
  const frame = (opcode, payload) => {
    if (!conn.open) return;
    const n = payload.length;
    const head = n < 126 ? Buffer.from([0x80 | opcode, n])
      : n < 65536 ? Buffer.from([0x80 | opcode, 126, n >> 8, n & 255])
        : Buffer.concat([Buffer.from([0x80 | opcode, 127]), (() => { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(n)); return b; })()]);
    socket.write(Buffer.concat([head, payload]));
  };
  conn.sendJson = (obj) => frame(1, Buffer.from(JSON.stringify(obj)));
  conn.sendBinary = (buf) => frame(2, buf);
  conn.close = (code = 1000) => {
    if (!conn.open) return;
    const b = Buffer.alloc(2);
    b.writeUInt16BE(code);
    frame(8, b);
    conn.open = false;
    socket.end();
  };
  let pending = Buffer.alloc(0);
  socket.on('data', (chunk) => {
    pending = Buffer.concat([pending, chunk]);
    while (pending.length >= 2) {
      const opcode = pending[0] & 15;
      let len = pending[1] & 127;
      let off = 2;
      if (len === 126) { if (pending.length < 4) return; len = pending.readUInt16BE(2); off = 4; }
      else if (len === 127) { if (pending.length < 10) return; len = Number(pending.readBigUInt64BE(2)); off = 10; }
      const masked = pending[1] & 128;
      if (pending.length < off + (masked ? 4 : 0) + len) return;
      const mask = masked ? pending.subarray(off, off + 4) : null;
      off += masked ? 4 : 0;
      const payload = Buffer.from(pending.subarray(off, off + len));
      if (mask) for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i & 3];
      pending = pending.subarray(off + len);
      if (opcode === 1) conn.onText(payload.toString('utf8')); // (no fragmented messages from browsers here)
      else if (opcode === 8) conn.close(1000);
      else if (opcode === 9) frame(10, payload);
    }
  });
  const gone = () => { if (conn.open || !conn.closed) { conn.open = false; conn.closed = true; conn.onClose(); } };
  socket.on('close', gone);
  socket.on('error', gone);
  return conn;
}

// ---- sessions -------------------------------------------------------------------------------------------
const sessions = new Map();

function createSession(start) {
  const id = `s_${crypto.randomBytes(6).toString('hex')}`;
  const seconds = Math.min(MAX_SECONDS, Number(start.seconds ?? MAX_SECONDS));
  const s = {
    id, token: crypto.randomBytes(12).toString('hex'), status: 'running', createdAt: Date.now(),
    storyboard: (start.storyboard?.prompts || [{time: 0, prompt: start.prompt || ''}]).map((p) => ({...p, event_id: null, applied_section: null})),
    memory: start.memory?.enabled !== false, seconds, sections: 0, viewers: new Set(), events: new Map(),
    stopRequested: false, done: null, latency: [],
  };
  s.config = {width: 320, height: 192, fps: 16, format: 'mp4', mime_type: MIME, section_frames: 4, seconds,
    seed: start.seed ?? 1, memory: {enabled: s.memory, window: 1}, model: 'mock'};
  s.timer = setInterval(() => generate(s), SECTION_MS);
  sessions.set(id, s);
  return s;
}

function statsOf(s) {
  const last = s.latency.at(-1) ?? 0;
  return {seconds_generated: s.sections, sections: s.sections, context_tokens: 360, memory_tokens: 300,
    uncompressed_tokens: 440 * Math.max(1, s.sections * 4), section_latency_ms: last,
    realtime_factor: 1000 / SECTION_MS, behind_realtime: SECTION_MS > 1000, queue_position: 0, viewers: s.viewers.size};
}

function generate(s) {
  const i = s.sections;
  const t0 = Date.now();
  const started = [];
  // Pending "now" events and timed events that fall in this section start here.
  for (const [id, ev] of s.events) {
    if (ev.status === 'queued' && ev.time < i + 1 - 1e-9) {
      ev.status = 'applied';
      ev.section = i;
      started.push(id);
      const existing = s.storyboard.find((e) => e.time === ev.time);
      if (existing) Object.assign(existing, {prompt: ev.prompt, event_id: id, applied_section: i});
      else s.storyboard.push({time: ev.time, prompt: ev.prompt, event_id: id, applied_section: i});
      s.storyboard.sort((a, b) => a.time - b.time);
    }
  }
  const inForce = s.storyboard.filter((e) => e.time <= i + 1e-9).at(-1);
  for (const e of s.storyboard) if (e.time <= i + 1e-9 && e.applied_section === null) e.applied_section = i;
  s.sections++;
  s.latency.push(Date.now() - t0 + SECTION_MS);
  for (const id of started) broadcast(s, {type: 'session.interaction.applied', event_id: id, section: i, start_seconds: i});
  const meta = {type: 'video.chunk_metadata', chunk_index: i, frames: 16, start_seconds: i, duration_seconds: 1,
    byte_length: media.segments[i].length, prompt: inForce?.prompt ?? '',
    events: {started, active: inForce?.event_id ? [inForce.event_id] : []}, stats: statsOf(s)};
  for (const v of s.viewers) sendSection(s, v, i, meta);
  broadcast(s, {type: 'session.stats', ...statsOf(s)});
  if (s.stopRequested || s.sections >= s.seconds) finish(s, s.stopRequested ? 'stopped' : 'completed');
}

function sendSection(s, v, i, meta) {
  if (SKIP_AT !== null && v.first && (i === SKIP_AT || i === SKIP_AT + 1)) {
    if (i === SKIP_AT + 1) v.conn.sendJson({type: 'session.skipped', from_section: SKIP_AT, to_section: SKIP_AT + 1});
    return;
  }
  v.conn.sendJson(meta);
  v.conn.sendBinary(media.segments[i]);
  if (DROP_AT !== null && v.first && i === DROP_AT) {
    console.log(`[mock] cutting ${s.id}'s first connection after section ${i}`);
    v.conn.open = false;
    v.conn.socket.destroy();
  }
}

function finish(s, reason) {
  clearInterval(s.timer);
  s.status = reason === 'stopped' ? 'stopped' : 'completed';
  s.done = {type: 'session.done', reason, sections: s.sections, seconds: s.sections};
  for (const v of s.viewers) {
    v.conn.sendJson(s.done);
    v.conn.close(1000);
  }
}

function broadcast(s, msg) {
  for (const v of s.viewers) v.conn.sendJson(msg);
}

function metaFor(s, i) {
  const inForce = s.storyboard.filter((e) => e.time <= i + 1e-9).at(-1);
  const started = [...s.events].filter(([, e]) => e.section === i && e.status === 'applied').map(([id]) => id);
  return {type: 'video.chunk_metadata', chunk_index: i, frames: 16, start_seconds: i, duration_seconds: 1,
    byte_length: media.segments[i].length, prompt: inForce?.prompt ?? '', events: {started, active: []}, stats: statsOf(s)};
}

function eventStatus(id, ev) {
  if (ev.status === 'applied') return {type: 'session.interaction.applied', event_id: id, section: ev.section, start_seconds: ev.section};
  if (ev.status === 'superseded') return {type: 'session.interaction.superseded', event_id: id, by: ev.by};
  return {type: 'session.interaction.queued', event_id: id, time: ev.time, section: Math.ceil(ev.time - 1e-9)};
}

function onViewer(conn) {
  let s = null;
  let viewer = null;
  const startTimer = setTimeout(() => {
    if (!s) { conn.sendJson({type: 'error', code: 'start_timeout', message: 'no session.start', fatal: true}); conn.close(1008); }
  }, 10000);
  const error = (code, message, extra = {}) => conn.sendJson({type: 'error', code, message, ...extra});
  const attach = (sess, from) => {
    s = sess;
    clearTimeout(startTimer);
    viewer = {conn, first: !sess.hadViewer};
    sess.hadViewer = true;
    conn.sendJson({type: 'video.start', session_id: sess.id, token: sess.token, config: sess.config});
    conn.sendJson({type: 'video.init', byte_length: media.init.length});
    conn.sendBinary(media.init);
    for (let i = Math.max(0, from ?? sess.sections); i < sess.sections; i++) {
      conn.sendJson(metaFor(sess, i));
      conn.sendBinary(media.segments[i]);
    }
    if (sess.done) { conn.sendJson(sess.done); conn.close(1000); return; }
    sess.viewers.add(viewer);
  };
  conn.onClose = () => { clearTimeout(startTimer); if (s && viewer) s.viewers.delete(viewer); };
  conn.onText = (text) => {
    let m;
    try { m = JSON.parse(text); } catch { return error('bad_json', 'not JSON'); }
    if (m.type === 'session.start') {
      if (s) return error('already_started', 'this connection already has a session');
      if ((m.format ?? 'mp4') !== 'mp4') return error('bad_field', 'the mock serves mp4 only', {field: 'format'});
      console.log(`[mock] session.start ${JSON.stringify(m.storyboard)}`);
      attach(createSession(m), 0);
    } else if (m.type === 'session.resume') {
      const sess = sessions.get(m.session_id);
      if (!sess) return error('unknown_session', 'no such session', {fatal: true});
      if (sess.token !== m.token) return error('bad_token', 'wrong token', {fatal: true});
      console.log(`[mock] session.resume ${m.session_id} from ${m.from_section}`);
      attach(sess, m.from_section);
    } else if (m.type === 'session.ping') {
      conn.sendJson({type: 'session.pong', id: m.id});
    } else if (!s) {
      error('not_started', 'send session.start first');
    } else if (m.type === 'session.stop') {
      s.stopRequested = true;
    } else if (m.type === 'session.interaction') {
      const ev = m.event || {};
      const payload = JSON.stringify({prompt: ev.prompt, time: ev.time ?? null, mode: ev.mode ?? 'add'});
      const old = s.events.get(m.event_id);
      if (old) {
        if (old.payload !== payload) return error('event_conflict', 'another payload under this event_id', {event_id: m.event_id});
        return conn.sendJson(eventStatus(m.event_id, old));
      }
      const now = ev.time === null || ev.time === undefined;
      const e = {payload, prompt: ev.prompt, time: now ? s.sections : Number(ev.time), now, status: 'queued', section: null, by: null};
      if (now) {
        for (const [id, o] of s.events) {
          if (o.now && o.status === 'queued') {
            o.status = 'superseded';
            o.by = m.event_id;
            broadcast(s, eventStatus(id, o));
          }
        }
      }
      s.events.set(m.event_id, e);
      console.log(`[mock] interaction ${m.event_id} "${ev.prompt}" at ${e.time}`);
      broadcast(s, eventStatus(m.event_id, e));
    } else {
      error('unknown_type', `unknown type ${m.type}`);
    }
  };
}

// ---- HTTP -----------------------------------------------------------------------------------------------
const TYPES = {'.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.css': 'text/css', '.png': 'image/png'};

function sessionObject(s) {
  return {id: s.id, object: 'session', status: s.status, created_at: Math.floor(s.createdAt / 1000), model: 'mock',
    config: s.config, ...statsOf(s), section_latency_ms: {last: s.latency.at(-1) ?? 0, mean: SECTION_MS, p50: SECTION_MS, p95: SECTION_MS},
    storyboard: s.storyboard.map((e) => ({time: e.time, prompt: e.prompt, event_id: e.event_id, applied_section: e.applied_section,
      state: e.time > s.sections - 1 + 1e-9 ? 'pending' : s.storyboard.filter((x) => x.time <= s.sections - 1 + 1e-9).at(-1) === e ? 'current' : 'past'})),
    events: [...s.events].map(([id, e]) => ({event_id: id, status: e.status, time: e.time, section: e.section, superseded_by: e.by})),
    error: null};
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  const json = (status, obj) => { res.writeHead(status, {'Content-Type': 'application/json'}); res.end(JSON.stringify(obj)); };
  const fail = (status, code, message) => json(status, {error: {code, message}});
  const m = url.pathname.match(/^\/v1\/sessions\/([^/]+)(\/.*)?$/);
  if (m) {
    const s = sessions.get(m[1]);
    if (!s) return fail(404, 'unknown_session', 'no such session');
    if ((req.headers['x-session-token'] || url.searchParams.get('token')) !== s.token) return fail(403, 'bad_token', 'wrong token');
    const sub = m[2] || '';
    if (sub === '' && req.method === 'GET') return json(200, sessionObject(s));
    if (sub === '/stop' && req.method === 'POST') { s.stopRequested = true; s.status = 'stopping'; return json(200, sessionObject(s)); }
    if (sub === '/video.mp4') {
      res.writeHead(200, {'Content-Type': 'video/mp4'});
      return res.end(Buffer.concat([media.init, ...media.segments.slice(0, s.sections)]));
    }
    if (sub === '/inspect.png') {
      const t = Number(url.searchParams.get('t'));
      if (!url.searchParams.has('t') || !Number.isFinite(t)) return fail(400, 'bad_field', 't is required');
      if (!s.memory || t >= s.sections - 1) return fail(409, 'not_in_memory', `t = ${t} s is not in the memory yet`);
      res.writeHead(200, {'Content-Type': 'image/png', 'X-Memoreel-Psnr': (24 + Math.random()).toFixed(2),
        'X-Memoreel-Frame': String(Math.round(t * 16)), 'X-Memoreel-Latent-Frame': String(Math.round(t * 4))});
      return res.end(media.inspectPng);
    }
    return fail(404, 'not_found', 'no such endpoint');
  }
  const file = path.join(WEB, url.pathname === '/' ? 'index.html' : path.normalize(url.pathname));
  if (!file.startsWith(WEB + path.sep) || !fs.existsSync(file) || !fs.statSync(file).isFile()) return fail(404, 'not_found', 'no such file');
  res.writeHead(200, {'Content-Type': TYPES[path.extname(file)] || 'application/octet-stream'});
  fs.createReadStream(file).pipe(res);
});
server.on('upgrade', (req, socket) => {
  if (new URL(req.url, 'http://x').pathname !== '/v1/realtime/video') return socket.destroy();
  onViewer(wsAccept(req, socket));
});
server.listen(PORT, '127.0.0.1', () => console.log(`[mock] http://127.0.0.1:${PORT} (${media.segments.length} sections of media)`));
