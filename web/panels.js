// The live figures and the memory inspector.

// stats: the latest session.stats (or chunk metadata's stats) merged with what this page counts itself.
export function renderStats(el, stats, local) {
  const rows = [];
  const num = (v) => typeof v === 'number' && Number.isFinite(v);
  if (num(stats.seconds_generated)) {
    const of = num(local.targetSeconds) ? ` of ${local.targetSeconds}` : '';
    rows.push(['generated', 'Generated', `${stats.seconds_generated.toFixed(1)} s${of}`]);
  }
  if (num(stats.sections)) rows.push(['sections', 'Sections', String(stats.sections)]);
  rows.push(['received', 'Received', `${local.sectionsReceived} sections`]);
  if (num(stats.context_tokens)) {
    let text = `${stats.context_tokens}`;
    if (num(stats.uncompressed_tokens) && stats.uncompressed_tokens > 0) {
      const ratio = stats.uncompressed_tokens / Math.max(1, stats.context_tokens);
      text += ` of ${stats.uncompressed_tokens} uncompressed (${ratio.toFixed(1)}× smaller)`;
    }
    rows.push(['tokens', 'Context tokens', text]);
  }
  const lat = stats.section_latency_ms;
  // A number in session.stats; {last, mean, p50, p95} in the session object.
  if (num(lat)) rows.push(['latency', 'Section latency', `${Math.round(lat)} ms`]);
  else if (lat && num(lat.last)) {
    rows.push(['latency', 'Section latency', `${Math.round(lat.last)} ms (mean ${Math.round(lat.mean ?? lat.last)})`]);
  }
  if (num(stats.realtime_factor)) {
    rows.push(['rtf', 'Real-time factor', `${stats.realtime_factor.toFixed(2)}×${stats.behind_realtime ? ' (behind)' : ''}`]);
  }
  if (num(stats.queue_position) && stats.queue_position > 0) rows.push(['queue', 'Queue position', String(stats.queue_position)]);
  if (num(stats.viewers)) rows.push(['viewers', 'Viewers', String(stats.viewers)]);
  if (num(local.lagSeconds)) rows.push(['lag', 'Behind live edge', `${local.lagSeconds.toFixed(1)} s`]);
  if (num(local.rttMs)) rows.push(['rtt', 'Ping', `${Math.round(local.rttMs)} ms`]);

  el.replaceChildren();
  for (const [key, label, value] of rows) {
    const dt = document.createElement('dt');
    dt.textContent = label;
    const dd = document.createElement('dd');
    dd.dataset.stat = key;
    dd.textContent = value;
    el.append(dt, dd);
  }
}

// The inspector fetches /v1/sessions/{id}/inspect.png when the slider is released; only the answer to the
// latest request is shown.
export class Inspector {
  constructor({slider, output, image, info, urlFor}) {
    Object.assign(this, {slider, output, image, info, urlFor});
    this.seq = 0;
    this.objectUrl = null;
    slider.addEventListener('input', () => (output.textContent = Number(slider.value).toFixed(2)));
    slider.addEventListener('change', () => this.load(Number(slider.value)));
  }

  setRange(maxSeconds, fps) {
    if (fps > 0) this.slider.step = String(1 / fps);
    this.slider.max = String(Math.max(0, maxSeconds));
    this.slider.disabled = !(maxSeconds > 0);
  }

  reset() {
    this.seq++;
    this.setRange(0, 0);
    this.slider.value = '0';
    this.output.textContent = '0.00';
    this.image.hidden = true;
    this.image.removeAttribute('src');
    if (this.objectUrl) URL.revokeObjectURL(this.objectUrl);
    this.objectUrl = null;
    this.info.className = 'muted';
    this.info.textContent = 'Left: recalled from the compressed memory. Right: generated.';
  }

  async load(t) {
    const url = this.urlFor(t);
    if (!url) return;
    const seq = ++this.seq;
    this.say(`recalling t = ${t.toFixed(2)} s from the memory…`, 'muted');
    try {
      const res = await fetch(url);
      if (seq !== this.seq) return;
      if (!res.ok) {
        let message = `HTTP ${res.status}`;
        try {
          const body = await res.json();
          if (body && body.error) message = `${body.error.message || body.error.code} (${body.error.code})`;
        } catch {
          // not JSON: the status says enough
        }
        if (seq === this.seq) this.say(message, 'error');
        return;
      }
      const blob = await res.blob();
      if (seq !== this.seq) return;
      if (this.objectUrl) URL.revokeObjectURL(this.objectUrl);
      this.objectUrl = URL.createObjectURL(blob);
      this.image.src = this.objectUrl;
      this.image.hidden = false;
      this.image.alt = `t = ${t.toFixed(2)} s: recalled (left) and generated (right)`;
      const psnr = res.headers.get('X-Memoreel-Psnr');
      const frame = res.headers.get('X-Memoreel-Frame');
      const latent = res.headers.get('X-Memoreel-Latent-Frame');
      let text = `t = ${t.toFixed(2)} s`;
      if (psnr !== null && psnr !== '') text += ` · PSNR ${Number(psnr).toFixed(2)} dB`;
      if (frame !== null) text += ` · frame ${frame}`;
      if (latent !== null) text += ` · latent frame ${latent}`;
      this.say(text, 'ok');
    } catch (e) {
      if (seq === this.seq) this.say(`inspect failed: ${e.message}`, 'error');
    }
  }

  say(text, cls) {
    this.info.className = cls;
    this.info.textContent = text;
  }
}
