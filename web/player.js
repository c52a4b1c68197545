// The live player: one MediaSource + SourceBuffer per connection, fed strictly in order through a queue (one
// appendBuffer at a time, the next after `updateend`). The fragments carry their own timestamps, so the
// SourceBuffer stays in 'segments' mode and a resumed stream (which starts at a later section) or a skipped
// range lands at its true place on the timeline; the tick below seeks over the holes that leaves.

const LIVE_MAX_LAG_S = 4; // behind the live edge by more than this: jump (content is skipped)
const LIVE_TARGET_LAG_S = 1; // where the jump lands, behind the live edge
const CATCHUP_LAG_S = 2; // behind by more than this: play slightly faster (nothing is skipped)
const CATCHUP_RATE = 1.1;
const KEEP_BEHIND_S = 30; // buffered media kept behind the playhead; older media is removed
const GAP_EPSILON_S = 0.05;

export class LivePlayer {
  constructor(video, log) {
    this.video = video;
    this.log = log || (() => {});
    this.ms = null;
    this.sb = null;
    this.url = null;
    this.queue = []; // {data, section}: section null for the init segment
    this.generation = 0; // bumps on every reset: callbacks of an old MediaSource are ignored
    this.lastAppended = -1; // the highest section appended to the current SourceBuffer
    this.onAppended = () => {};
    this.ending = false;
    this.startedPlaying = false;
    this.tickTimer = setInterval(() => this.tick(), 250);
    video.addEventListener('waiting', () => this.tick());
  }

  static supports(mime) {
    return typeof MediaSource !== 'undefined' && MediaSource.isTypeSupported(mime);
  }

  // A fresh MediaSource for a new connection (the server sends video.init again on every connection).
  reset(mime) {
    this.destroy();
    const gen = ++this.generation;
    this.queue = [];
    this.lastAppended = -1;
    this.ending = false;
    this.startedPlaying = false;
    if (!LivePlayer.supports(mime)) throw new Error(`this browser cannot play ${mime}`);
    this.ms = new MediaSource();
    this.url = URL.createObjectURL(this.ms);
    this.video.src = this.url;
    this.ms.addEventListener('sourceopen', () => {
      if (gen !== this.generation) return;
      this.sb = this.ms.addSourceBuffer(mime);
      this.sb.mode = 'segments';
      this.sb.addEventListener('updateend', () => gen === this.generation && this.pump());
      this.sb.addEventListener('error', () => gen === this.generation && this.log('SourceBuffer error'));
      this.pump();
    }, {once: true});
  }

  destroy() {
    this.generation++;
    this.sb = null;
    this.ms = null;
    if (this.url) {
      this.video.removeAttribute('src');
      this.video.load();
      URL.revokeObjectURL(this.url);
      this.url = null;
    }
  }

  appendInit(data) {
    this.queue.push({data, section: null});
    this.pump();
  }

  appendSegment(data, section) {
    this.queue.push({data, section});
    this.pump();
  }

  // No more media on this connection (session.done): end the stream once the queue has drained, so the
  // element plays to the end and fires 'ended' instead of waiting for more.
  end() {
    this.ending = true;
    this.pump();
  }

  pump() {
    const sb = this.sb;
    if (!sb || sb.updating || this.ms.readyState !== 'open') return;
    if (this.trim()) return; // a remove() runs; updateend calls pump again
    const item = this.queue.shift();
    if (!item) {
      if (this.ending) this.ms.endOfStream();
      return;
    }
    try {
      sb.appendBuffer(item.data);
    } catch (e) {
      if (e.name === 'QuotaExceededError') {
        // Full: free what is behind the playhead and try the same item again.
        this.queue.unshift(item);
        const t = this.video.currentTime;
        if (t > 1) sb.remove(0, t - 1);
        else this.log('media buffer full');
        return;
      }
      this.log(`append failed: ${e.message}`);
      return;
    }
    const gen = this.generation;
    sb.addEventListener('updateend', () => {
      if (gen !== this.generation || item.section === null) return;
      this.lastAppended = Math.max(this.lastAppended, item.section);
      this.onAppended(item.section);
      this.tick();
    }, {once: true});
  }

  // Removes media older than KEEP_BEHIND_S behind the playhead (long sessions). True when a remove started.
  trim() {
    const b = this.sb.buffered;
    if (!b.length) return false;
    const cut = this.video.currentTime - KEEP_BEHIND_S;
    if (b.start(0) >= cut - 10) return false; // trim in steps of at least 10 s
    this.sb.remove(0, cut);
    return true;
  }

  // Keeps playback going: starts it, seeks over holes (a resumed connection starts later; skipped sections
  // leave a gap), and stays near the live edge.
  tick() {
    const v = this.video;
    const b = v.buffered;
    if (!this.sb || !b.length) return;
    const t = v.currentTime;
    const liveEdge = b.end(b.length - 1);
    let inside = false;
    for (let i = 0; i < b.length; i++) {
      if (t >= b.start(i) - GAP_EPSILON_S && t < b.end(i) - GAP_EPSILON_S) inside = true;
    }
    if (!inside) {
      // At the end of a range (or before the first): the next range that starts after the playhead.
      for (let i = 0; i < b.length; i++) {
        if (b.start(i) > t - GAP_EPSILON_S) {
          if (b.start(i) - t > GAP_EPSILON_S || v.readyState < HTMLMediaElement.HAVE_FUTURE_DATA) {
            this.log(`skipping a gap: ${t.toFixed(2)} s -> ${b.start(i).toFixed(2)} s`);
            v.currentTime = b.start(i) + 0.001;
          }
          break;
        }
      }
    } else if (liveEdge - t > LIVE_MAX_LAG_S) {
      this.log(`behind the live edge by ${(liveEdge - t).toFixed(1)} s: jumping`);
      v.currentTime = liveEdge - LIVE_TARGET_LAG_S;
    }
    v.playbackRate = liveEdge - v.currentTime > CATCHUP_LAG_S ? CATCHUP_RATE : 1;
    if (!this.startedPlaying && v.readyState >= HTMLMediaElement.HAVE_CURRENT_DATA) {
      this.startedPlaying = true;
      v.muted = true; // autoplay without a gesture needs muted (the stream has no sound anyway)
      v.play().catch((e) => this.log(`autoplay refused: ${e.message}`));
    }
  }
}
