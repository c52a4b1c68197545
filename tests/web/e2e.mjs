// The browser end-to-end test of the web client against a running `memoreel serve` (or
// tests/web/mock_server.mjs): Debian's Chromium, driven by playwright-core, plays a live session, steers it
// with a prompt, and downloads the video.
//   node tests/web/e2e.mjs --url http://127.0.0.1:PORT --out DIR [--seconds 8] [--api-key KEY]
//                          [--timeout 300] [--inspect] [--expect-reconnect]
// --timeout: seconds for each wait on the model (the first frames, a prompt taking effect); the server may run
// the model on a 2-core CPU. --inspect also tries the memory inspector. --expect-reconnect asserts that the
// page reconnected and resumed at least once (for a server that cuts connections, e.g. the mock's --drop-at).
// Exit status 0 when every step passed; 1 at the first failed step (the rest do not run).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {chromium} from 'playwright-core';

function parseArgs(argv) {
  const opts = {url: null, out: null, seconds: 8, apiKey: '', timeout: 300, inspect: false, expectReconnect: false};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--url') opts.url = next().replace(/\/+$/, '');
    else if (a === '--out') opts.out = next();
    else if (a === '--seconds') opts.seconds = Number(next());
    else if (a === '--api-key') opts.apiKey = next();
    else if (a === '--timeout') opts.timeout = Number(next());
    else if (a === '--inspect') opts.inspect = true;
    else if (a === '--expect-reconnect') opts.expectReconnect = true;
    else throw new Error(`unknown argument ${a}`);
  }
  if (!opts.url || !opts.out) throw new Error('usage: node tests/web/e2e.mjs --url http://127.0.0.1:PORT --out DIR');
  if (!(opts.seconds >= 4)) throw new Error('--seconds must be at least 4 (the prompt must have time to apply)');
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const LONG = opts.timeout * 1000;
fs.mkdirSync(opts.out, {recursive: true});
const shot = (name) => path.join(opts.out, name);

let passed = 0;
const t0 = Date.now();
const secs = (ms) => `${(ms / 1000).toFixed(1)} s`;

class StepError extends Error {}
function check(cond, message) {
  if (!cond) throw new StepError(message);
}

// The page's state and status line, for failure messages.
async function pageState(page) {
  try {
    return await page.evaluate(() => JSON.stringify({
      status: document.getElementById('status')?.textContent,
      memoreel: window.memoreel || null, // its getters are enumerable: JSON.stringify reads them
      currentTime: document.getElementById('video')?.currentTime,
    }));
  } catch (e) {
    return `(page state unavailable: ${e.message})`;
  }
}

async function waitFor(page, what, fn, arg, timeout) {
  try {
    return await page.waitForFunction(fn, arg, {timeout, polling: 250});
  } catch (e) {
    throw new StepError(`timed out after ${secs(timeout)} waiting for ${what}; page: ${await pageState(page)}`);
  }
}

const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
if (!fs.existsSync(executablePath)) {
  console.error(`[e2e] FAIL no Chromium at ${executablePath} (run scripts/setup_web.sh, or set $CHROMIUM)`);
  process.exit(1);
}
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'memoreel-e2e-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--autoplay-policy=no-user-gesture-required'],
  acceptDownloads: true,
  viewport: {width: 1280, height: 900},
});
const page = context.pages()[0] || (await context.newPage());
const pageErrors = [];
page.on('pageerror', (e) => pageErrors.push(e.stack || String(e)));
page.on('console', (m) => {
  if (m.type() === 'error' || m.type() === 'warning') console.log(`[e2e]   console.${m.type()}: ${m.text()}`);
});
// Reconnects seen by the page: every session.resume it sends.
let resumes = 0;
page.on('websocket', (ws) => ws.on('framesent', (f) => {
  if (typeof f.payload === 'string' && f.payload.includes('"session.resume"')) resumes++;
}));

const state = {eventId: null, appliedSection: null};
const prompts = [
  {time: 0, prompt: 'a green striped fox walks into a red room'},
  {time: Math.max(2, Math.floor(opts.seconds / 2)), prompt: 'cut to the beach, the fox walks across'},
];
const steer = 'back in the red room, the fox picks up the lamp';

const steps = [
  ['open the page', async () => {
    const res = await page.goto(`${opts.url}/`, {waitUntil: 'load', timeout: 60000});
    check(res && res.ok(), `GET / answered ${res && res.status()}`);
    await waitFor(page, 'window.memoreel and #start', () => !!window.memoreel && !!document.getElementById('start'), null, 15000);
    const ok = await page.evaluate(() => typeof MediaSource !== 'undefined' &&
      MediaSource.isTypeSupported('video/mp4; codecs="avc1.42C01E"'));
    check(ok, 'this Chromium cannot play H.264 through Media Source Extensions');
  }],

  [`fill a ${prompts.length}-prompt storyboard of ${opts.seconds} s`, async () => {
    await page.evaluate(() => document.querySelectorAll('#storyboard-rows .sb-remove').forEach((b) => b.click()));
    for (const p of prompts) {
      await page.click('#storyboard-add');
      const row = page.locator('#storyboard-rows .sb-row').last();
      await row.locator('.sb-time').fill(String(p.time));
      await row.locator('.sb-prompt').fill(p.prompt);
    }
    check(await page.locator('#storyboard-rows .sb-row').count() === prompts.length, 'the storyboard does not have its rows');
    await page.fill('#seconds', String(opts.seconds));
    await page.fill('#seed', '1');
    await page.selectOption('#format', 'mp4');
    await page.check('#memory');
    if (opts.apiKey) await page.fill('#api-key', opts.apiKey);
  }],

  ['start: the session is created', async () => {
    await page.click('#start');
    await waitFor(page, 'video.start (window.memoreel.sessionId)', () => !!window.memoreel.sessionId || !!window.memoreel.lastError, null, 60000);
    const err = await page.evaluate(() => window.memoreel.lastError);
    check(!err, `the server refused the start: ${JSON.stringify(err)}`);
  }],

  ['playback advances past 0.5 s', async () => {
    await waitFor(page, 'video.currentTime > 0.5', () => {
      const v = document.getElementById('video');
      if (window.memoreel.lastError?.fatal) return true;
      return v.currentTime > 0.5 && !v.paused;
    }, null, LONG);
    const err = await page.evaluate(() => window.memoreel.lastError);
    check(!err || !err.fatal, `fatal error from the server: ${JSON.stringify(err)}`);
  }],

  ['the video shows a picture (not blank)', async () => {
    await page.locator('#video').screenshot({path: shot('video.png')});
    // Decoded pixels, read back in the page: the element screenshot alone may be black without a GPU.
    const r = await page.evaluate(() => {
      const v = document.getElementById('video');
      const c = document.createElement('canvas');
      c.width = v.videoWidth;
      c.height = v.videoHeight;
      if (!c.width || !c.height) return {error: `videoWidth x videoHeight = ${c.width} x ${c.height}`};
      const g = c.getContext('2d', {willReadFrequently: true});
      g.drawImage(v, 0, 0);
      const d = g.getImageData(0, 0, c.width, c.height).data;
      let sum = 0;
      let sum2 = 0;
      let max = 0;
      const n = d.length / 4;
      for (let i = 0; i < d.length; i += 4) {
        const y = 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2];
        sum += y;
        sum2 += y * y;
        if (y > max) max = y;
      }
      const mean = sum / n;
      return {width: c.width, height: c.height, mean, std: Math.sqrt(Math.max(0, sum2 / n - mean * mean)), max,
        png: c.toDataURL('image/png'), time: v.currentTime};
    });
    check(!r.error, `cannot read the video's pixels: ${r.error}`);
    fs.writeFileSync(shot('frame.png'), Buffer.from(r.png.split(',')[1], 'base64'));
    const desc = `${r.width}x${r.height} at ${r.time.toFixed(2)} s: mean luma ${r.mean.toFixed(1)}, std ${r.std.toFixed(1)}, max ${r.max.toFixed(0)}`;
    check(r.max > 24, `the frame is black (${desc})`);
    check(r.std > 2, `the frame is one flat colour (${desc})`);
    return desc;
  }],

  ['a prompt sent mid-stream is applied at a section', async () => {
    const done = await page.evaluate(() => window.memoreel.done);
    check(!done, `the session ended before the prompt could be sent (${JSON.stringify(done)}): raise --seconds`);
    await page.fill('#prompt-input', steer);
    await page.click('#prompt-send');
    const h = await waitFor(page, 'the event in window.memoreel.events',
      (p) => Object.entries(window.memoreel.events).find(([, e]) => e.prompt === p)?.[0], steer, 10000);
    state.eventId = await h.jsonValue();
    const a = await waitFor(page, `event ${state.eventId} applied (window.memoreel.appliedEvents)`, (id) => {
      const m = window.memoreel;
      const e = m.events[id];
      if (e && (e.status === 'refused' || e.status === 'superseded')) return {failed: e};
      if (m.done && m.appliedEvents[id] === undefined) return {failed: {done: m.done}};
      return m.appliedEvents[id] !== undefined ? {section: m.appliedEvents[id]} : null;
    }, state.eventId, LONG);
    const result = await a.jsonValue();
    check(!result.failed, `event ${state.eventId} did not apply: ${JSON.stringify(result.failed)}`);
    state.appliedSection = result.section;
    check(Number.isInteger(result.section) && result.section >= 0, `applied at a section that is not a number: ${result.section}`);
    const text = `applied at section ${result.section}`;
    await waitFor(page, `#timeline to show "${text}" for ${state.eventId}`, ([id, t]) =>
      [...document.querySelectorAll('#timeline [data-event-id]')].some((el) => el.dataset.eventId === id && el.textContent.includes(t)),
    [state.eventId, text], 15000);
    await page.screenshot({path: shot('applied.png')});
    return `${state.eventId} ${text}`;
  }],

  ['download the video: an MP4 of more than 1 KB', async () => {
    await waitFor(page, '#download to have an href', () => !!document.getElementById('download').getAttribute('href'), null, 5000);
    const [download] = await Promise.all([page.waitForEvent('download', {timeout: 60000}), page.click('#download')]);
    const file = shot('download.mp4');
    await download.saveAs(file);
    const failure = await download.failure();
    check(!failure, `the download failed: ${failure}`);
    const buf = fs.readFileSync(file);
    check(buf.length > 1024, `the download is ${buf.length} bytes`);
    check(buf.toString('latin1', 4, 8) === 'ftyp', `the download does not start with an ftyp box (first bytes ${buf.subarray(0, 8).toString('hex')})`);
    return `${buf.length} bytes`;
  }],
];

if (opts.inspect) {
  steps.push(['the memory inspector shows a recalled frame', async () => {
    await waitFor(page, 'the inspector slider to be enabled', () => !document.getElementById('inspect-slider').disabled, null, LONG);
    await page.evaluate(() => {
      const s = document.getElementById('inspect-slider');
      s.value = '0';
      s.dispatchEvent(new Event('input'));
      s.dispatchEvent(new Event('change'));
    });
    const h = await waitFor(page, 'the inspector image or message', () => {
      const info = document.getElementById('inspect-info');
      const img = document.getElementById('inspect-image');
      if (info.className === 'error') return {error: info.textContent};
      if (info.className === 'ok' && !img.hidden && img.complete && img.naturalWidth > 0) return {ok: info.textContent};
      return null;
    }, null, LONG);
    const r = await h.jsonValue();
    check(!r.error, `the inspector failed: ${r.error}`);
    await page.locator('#inspect-image').screenshot({path: shot('inspect.png')});
    return r.ok;
  }]);
}

if (opts.expectReconnect) {
  steps.push(['the page reconnects, resumes and plays on', async () => {
    for (const end = Date.now() + LONG; resumes === 0 && Date.now() < end;) await new Promise((r) => setTimeout(r, 250));
    check(resumes > 0, `no session.resume was sent within ${secs(LONG)}`);
    const before = await page.evaluate(() => ({n: window.memoreel.sectionsReceived, t: document.getElementById('video').currentTime}));
    await waitFor(page, 'a section and playback after the resume', (b) => window.memoreel.done ||
      (window.memoreel.sectionsReceived > b.n && document.getElementById('video').currentTime > b.t + 0.5), before, LONG);
    return `${resumes} resume(s)`;
  }]);
}

steps.push(['stop: the session ends', async () => {
  const done = await page.evaluate(() => window.memoreel.done);
  if (done) return `already done (${done.reason})`;
  await page.click('#stop');
  const h = await waitFor(page, 'session.done', () => window.memoreel.done, null, LONG);
  const d = await h.jsonValue();
  check(['stopped', 'completed'].includes(d.reason), `session.done with reason ${d.reason}`);
  return d.reason;
}]);

steps.push(['no uncaught page errors', async () => {
  await page.screenshot({path: shot('page.png'), fullPage: true});
  check(pageErrors.length === 0, `uncaught errors in the page:\n${pageErrors.join('\n')}`);
}]);

let failed = 0;
for (const [name, fn] of steps) {
  const start = Date.now();
  try {
    const detail = await fn();
    passed++;
    console.log(`[e2e] ok   ${name} (${secs(Date.now() - start)})${detail ? `: ${detail}` : ''}`);
  } catch (e) {
    failed = 1;
    console.log(`[e2e] FAIL ${name} (${secs(Date.now() - start)}): ${e instanceof StepError ? e.message : e.stack}`);
    try {
      await page.screenshot({path: shot('failure.png'), fullPage: true});
    } catch {
      // the page may be gone
    }
    break;
  }
}
await context.close().catch(() => {});
fs.rmSync(profile, {recursive: true, force: true});
console.log(`[e2e] ${secs(Date.now() - t0)} in all; screenshots in ${opts.out}`);
console.log(`e2e: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
