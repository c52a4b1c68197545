// The storyboard timeline: past, current and pending prompts, each applied one with the section where it
// took effect. Built from the best knowledge at hand: the session object's storyboard (GET /v1/sessions/{id},
// refreshed now and then), the storyboard this page started, the viewer's own events and the latest section.

const EPS = 1e-6;

// s: {storyboard: [{time, prompt}], server: session object or null, events: Map(id -> event),
//     appliedEvents: {id: section}, promptFirstSection: Map(prompt -> the section where this page saw it
//     take over), genSeconds: start of the latest section or null, done: session.done or null}
export function timelineEntries(s) {
  const base = s.server && Array.isArray(s.server.storyboard) ? s.server.storyboard : s.storyboard;
  const entries = base.map((e) => ({
    time: e.time,
    prompt: e.prompt,
    eventId: e.event_id || null,
    state: e.state || 'pending',
    applied: null,
  }));
  const seen = new Set(entries.map((e) => e.eventId).filter(Boolean));
  // The viewer's own events that the storyboard above does not hold yet (or never will: superseded).
  for (const [id, ev] of s.events) {
    if (seen.has(id)) continue;
    entries.push({time: ev.time ?? null, prompt: ev.prompt, eventId: id, state: ev.status, applied: null});
  }
  entries.forEach((e, i) => {
    const ev = e.eventId ? s.events.get(e.eventId) : null;
    // What this page saw for its own events, else the server's word, else a prompt change this page saw.
    const fromServer = i < base.length ? base[i].applied_section : undefined;
    if (e.eventId && s.appliedEvents[e.eventId] !== undefined) e.applied = s.appliedEvents[e.eventId];
    else if (Number.isInteger(fromServer)) e.applied = fromServer;
    else if (!e.eventId && s.promptFirstSection.has(e.prompt)) e.applied = s.promptFirstSection.get(e.prompt);
    if (ev) {
      e.event = ev;
      if (['sending', 'queued', 'superseded', 'refused'].includes(ev.status) && e.applied === null) e.state = ev.status;
    }
  });
  // Past / current / pending from the latest section: the entry in force is the last one at or before it.
  if (s.genSeconds !== null) {
    const live = entries.filter((e) => Number.isFinite(e.time) && !['superseded', 'refused', 'sending'].includes(e.state));
    let current = null;
    for (const e of live) {
      if (e.time <= s.genSeconds + EPS && (!current || e.time >= current.time)) current = e;
    }
    for (const e of live) {
      e.state = e === current ? 'current' : e.time <= s.genSeconds + EPS ? 'past' : 'pending';
    }
  }
  // A finished session never reaches its pending entries.
  if (s.done) for (const e of entries) if (['pending', 'queued', 'sending'].includes(e.state)) e.state = 'unreached';
  entries.sort((a, b) => (a.time ?? Infinity) - (b.time ?? Infinity));
  return entries;
}

export function renderTimeline(el, entries) {
  el.replaceChildren();
  if (!entries.length) {
    el.append(li('empty', 'No prompts.'));
    return;
  }
  for (const e of entries) {
    const item = document.createElement('li');
    item.className = `entry ${e.state}`;
    item.dataset.state = e.state;
    if (e.eventId) item.dataset.eventId = e.eventId;
    const time = span('time', Number.isFinite(e.time) ? `${e.time.toFixed(1)} s` : 'now');
    const prompt = span('prompt', e.prompt);
    const badge = span('badge', e.state === 'unreached' ? 'not reached' : e.state);
    const note = span('note', noteFor(e));
    item.append(time, badge, prompt, note);
    el.append(item);
  }
}

function noteFor(e) {
  if (e.applied !== null && e.applied !== undefined) return `applied at section ${e.applied}`;
  const ev = e.event;
  if (!ev) return '';
  if (ev.status === 'superseded') return ev.by ? `superseded by ${ev.by}` : 'superseded';
  if (ev.status === 'refused') return ev.error || 'refused';
  if (ev.status === 'sending') return 'sending…';
  if (ev.status === 'queued') return Number.isInteger(ev.section) ? `will apply at section ${ev.section}` : 'queued';
  return '';
}

function li(cls, text) {
  const el = document.createElement('li');
  el.className = cls;
  el.textContent = text;
  return el;
}

function span(cls, text) {
  const el = document.createElement('span');
  el.className = cls;
  el.textContent = text;
  return el;
}
