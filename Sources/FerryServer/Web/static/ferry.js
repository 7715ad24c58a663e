// Ferry web UI: the little JavaScript the server-rendered pages need. Plain ES2020, no build step,
// no dependencies. Every page works without it except the move/copy dialog and live progress.
(function () {
  'use strict';

  // ---------- helpers ----------

  const $ = (selector, root) => (root || document).querySelector(selector);
  const $$ = (selector, root) => Array.from((root || document).querySelectorAll(selector));

  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute('content') : '';
  }

  // Paths come as the API's text: a byte of a name that is not UTF-8 is the private-use
  // character U+F700 + byte. Sent back as they came; shown as \xNN, as ferry's CLI shows them,
  // and so is each UTF-8 byte of a control character (a newline in a name, say). Messages, made
  // by the server with their names so shown already, keep their lines (`eventMessage`).
  function shown(text) {
    const hex = (byte) => '\\x' + byte.toString(16).toUpperCase().padStart(2, '0');
    return String(text)
      .replace(/[\u0000-\u001F\u007F-\u009F]/g, (c) => (c.charCodeAt(0) < 0x80 ? '' : hex(0xC2)) + hex(c.charCodeAt(0)))
      .replace(/[\uF700-\uF7FF]/g, (c) => hex(c.charCodeAt(0) - 0xF700));
  }

  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = shown(value);
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else if (key === 'title' || key === 'aria-label') node.setAttribute(key, shown(value));
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(shown(child)));
    }
    return node;
  }

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  // JSON request to the API. State-changing requests carry the CSRF token from the page.
  async function api(method, url, body, signal) {
    const headers = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (method !== 'GET' && method !== 'HEAD') headers['X-CSRF-Token'] = csrfToken();
    let response;
    try {
      response = await fetch(url, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: 'same-origin',
        signal,
      });
    } catch (error) {
      if (error && error.name === 'AbortError') throw error;
      throw new ApiError(0, 'network', 'The server could not be reached. Check your connection and try again.');
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (_) { data = null; }
    }
    if (!response.ok) {
      const error = (data && data.error) || {};
      if (response.status === 401 && error.code === 'auth.required') {
        window.location.assign('/login');
      }
      throw new ApiError(response.status, error.code || 'http.' + response.status,
        error.message || 'The server answered ' + response.status + ' ' + response.statusText + '.');
    }
    return data;
  }

  // The same figures as the command line (FerryMove.Format): binary units, grouped counts, m:ss.
  function formatBytes(value) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];
    let amount = Number(value) || 0;
    let unit = 0;
    while (amount >= 1024 && unit < units.length - 1) {
      amount /= 1024;
      unit += 1;
    }
    if (unit === 0) return Math.round(amount) + ' B';
    return amount.toFixed(amount >= 100 ? 0 : amount >= 10 ? 1 : 2) + ' ' + units[unit];
  }

  function formatCount(value) {
    return String(Math.round(Number(value) || 0)).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  }

  function formatDuration(seconds) {
    // Past 100,000 hours (as the terminal's bar says) a time left means nothing.
    if (seconds === null || seconds === undefined || !isFinite(seconds) || seconds < 0 || seconds >= 360000000) return '—';
    const total = Math.round(seconds);
    const h = Math.floor(total / 3600);
    const m = Math.floor((total % 3600) / 60);
    const s = total % 60;
    const pad = (n) => String(n).padStart(2, '0');
    return h > 0 ? h + ':' + pad(m) + ':' + pad(s) : m + ':' + pad(s);
  }

  // Local date and time, as the server writes them on the pages ("Nov 21, 2026, 8:20 AM").
  function formatTime(iso, seconds) {
    const date = new Date(iso);
    if (isNaN(date.getTime())) return iso || '';
    return date.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: seconds === false ? 'short' : 'medium' });
  }

  function statusLabel(status) {
    return String(status || '').replace(/_/g, ' ');
  }

  function basename(path) {
    const parts = String(path).split('/').filter(Boolean);
    return parts.length ? parts[parts.length - 1] : '/';
  }

  function dirname(path) {
    const trimmed = String(path).replace(/\/+$/, '');
    const index = trimmed.lastIndexOf('/');
    return index <= 0 ? '/' : trimmed.slice(0, index);
  }

  function isInside(path, ancestor) {
    return path === ancestor || path.startsWith(ancestor.replace(/\/+$/, '') + '/');
  }

  // ---------- bars ----------

  function clampPercent(value) {
    const number = parseFloat(value);
    if (!isFinite(number)) return 0;
    return Math.max(0, Math.min(100, number));
  }

  // Percent shown to people: whole numbers, and 100 only when it is really all done.
  function displayPercent(value, status) {
    if (status === 'completed') return 100;
    const number = clampPercent(value);
    return number >= 100 ? 100 : Math.floor(number);
  }

  function setBar(bar, percent) {
    bar.style.width = percent + '%';
    bar.setAttribute('data-percent', String(percent));
    const track = bar.parentElement;
    if (track && track.getAttribute('role') === 'progressbar') track.setAttribute('aria-valuenow', String(percent));
  }

  // Times the server wrote in its own time zone, again in the reader's (as the figures the page
  // adds later are): one page, one zone.
  function localTimes(root) {
    for (const node of $$('time[datetime]', root)) {
      const iso = node.getAttribute('datetime');
      const date = new Date(iso);
      if (!iso || isNaN(date.getTime())) continue;
      const style = node.getAttribute('data-style');
      node.textContent = style === 'time' ? date.toLocaleTimeString() : formatTime(iso, style === 'short' ? false : undefined);
    }
  }

  function initBars(root) {
    localTimes(root);
    for (const fill of $$('.meter-fill[data-percent]', root)) {
      fill.style.width = clampPercent(fill.getAttribute('data-percent')) + '%';
    }
    for (const holder of $$('[data-task-id]', root)) {
      const status = holder.getAttribute('data-status');
      const bar = $('.progress-bar', holder);
      if (!bar) continue;
      const percent = displayPercent(bar.getAttribute('data-percent'), status);
      setBar(bar, percent);
      const text = $('[data-field="percent"]', holder);
      if (text) text.textContent = percent + '%';
      for (const pill of $$('[data-field="status"], [data-field="phase"]', holder)) {
        pill.textContent = statusLabel(pill.textContent.trim());
      }
      // Figures the server left empty (no rate yet, no ETA) read as a dash.
      for (const figure of $$('dd[data-field]', holder)) {
        if (!figure.textContent.trim()) figure.textContent = '—';
      }
    }
    for (const strategy of $$('dd[data-field="strategy"]', root)) {
      if (!strategy.textContent.trim()) {
        strategy.replaceChildren(el('span', { class: 'muted', text: 'chosen when it starts' }));
      }
    }
    for (const timeline of $$('.timeline', root)) labelStop(timeline);
  }

  // Where a task stopped without completing, the last step of the timeline says how it ended.
  function labelStop(timeline) {
    const page = timeline.closest('[data-status]');
    const status = page ? page.getAttribute('data-status') : '';
    for (const item of $$('li[data-phase]', timeline)) {
      const name = $('.timeline-name', item);
      if (!name) continue;
      const phase = item.getAttribute('data-phase');
      name.textContent = item.getAttribute('data-state') === 'failed' && PROBLEM.includes(status) && phase === 'completed'
        ? statusLabel(status) : statusLabel(phase);
    }
  }

  // ---------- tasks: rendering a task object from the API into an element ----------

  const PHASES = ['pending', 'validating', 'locked', 'copying', 'verifying', 'committing', 'completed'];
  const PROBLEM = ['failed', 'cancelled', 'rolled_back'];

  function setField(root, name, text) {
    for (const node of $$('[data-field="' + name + '"]', root)) node.textContent = shown(text);
  }

  function taskFigures(task) {
    const progress = task.progress || {};
    const bytesDone = progress.bytesDone || 0;
    const bytesTotal = progress.bytesTotal || 0;
    const entriesDone = progress.entriesDone || 0;
    const entriesTotal = progress.entriesTotal || 0;
    const running = !task.terminal;
    return {
      percent: displayPercent(progress.percent, task.status),
      bytes: bytesTotal > 0 ? formatBytes(bytesDone) + ' of ' + formatBytes(bytesTotal)
        : bytesDone > 0 ? formatBytes(bytesDone) : '—',
      files: entriesTotal > 0 ? formatCount(entriesDone) + ' of ' + formatCount(entriesTotal) + ' entries'
        : entriesDone > 0 ? formatCount(entriesDone) + ' entries' : '—',
      rate: running && progress.bytesPerSecond > 0 ? formatBytes(progress.bytesPerSecond) + '/s' : '—',
      eta: running && progress.etaSeconds !== null && progress.etaSeconds !== undefined
        ? formatDuration(progress.etaSeconds) : '—',
    };
  }

  // A commit is past cancelling: it is finished whatever is asked (the API answers 409).
  function canCancel(task) { return !task.terminal && !task.cancelRequested && task.status !== 'committing'; }
  function canRetry(task) { return !!task.terminal && PROBLEM.includes(task.status); }

  function renderTask(holder, task) {
    const previous = holder.getAttribute('data-status');
    holder.setAttribute('data-status', task.status);
    holder.setAttribute('data-terminal', task.terminal ? 'true' : 'false');
    const figures = taskFigures(task);
    const label = task.cancelRequested && !task.terminal ? 'cancelling' : statusLabel(task.status);
    for (const pill of $$('[data-field="status"]', holder)) {
      pill.textContent = label;
      pill.setAttribute('data-status', task.status);
    }
    setField(holder, 'phase', label);
    // While a task runs its bar only moves forward: a phase that counts afresh (committing counts
    // entries, not bytes) must not look like lost work. A retry starts from zero again.
    const bar = $('.progress-bar', holder);
    const shown = bar ? parseFloat(bar.getAttribute('data-percent')) || 0 : 0;
    const restarted = task.status === 'pending' || PROBLEM.includes(previous);
    const percent = !task.terminal && !restarted ? Math.max(shown, figures.percent) : figures.percent;
    if (bar) setBar(bar, percent);
    setField(holder, 'percent', percent + '%');
    setField(holder, 'bytes', figures.bytes);
    setField(holder, 'files', figures.files);
    setField(holder, 'rate', figures.rate);
    setField(holder, 'eta', figures.eta);
    if (task.summary) setField(holder, 'summary', task.summary);
    if (task.strategy) setField(holder, 'strategy', task.strategy);
    for (const node of $$('[data-field="created"]', holder)) {
      if (!node.textContent.trim() && task.createdAt) node.textContent = formatTime(task.createdAt, false);
    }
    const message = task.error ? task.error.message || task.error.code : '';
    for (const node of $$('[data-field="error"]', holder)) {
      node.textContent = message;
      node.hidden = !message;
    }
    // Why it moves no further now (its worker stopped, or none holds it).
    for (const node of $$('[data-field="note"]', holder)) {
      node.textContent = task.note || '';
      node.hidden = !task.note;
    }
    // A button whose request is still on its way stays disabled (a second click would only be
    // refused); one that hides itself hands the keyboard focus to the task's status.
    for (const [action, allowed] of [['cancel', canCancel(task)], ['retry', canRetry(task)]]) {
      for (const button of $$('[data-action="' + action + '"]', holder)) {
        const hadFocus = document.activeElement === button;
        button.hidden = !allowed;
        if (button.getAttribute('data-pending') !== 'true') {
          button.disabled = false;
          button.classList.remove('busy');
        }
        if (hadFocus && !allowed) {
          const status = $('[data-field="status"]', holder) || holder;
          if (!status.hasAttribute('tabindex')) status.setAttribute('tabindex', '-1');
          status.focus();
        }
      }
    }
    return previous !== task.status;
  }

  // A card for a task that appeared after the page was rendered (tasks page), from the template.
  function newTaskCard(task) {
    const template = $('#task-template');
    if (!template) return null;
    const card = template.content.firstElementChild.cloneNode(true);
    const url = '/tasks/' + encodeURIComponent(task.id);
    card.setAttribute('data-task-id', task.id);
    card.setAttribute('data-kind', task.kind);
    for (const link of $$('a[href]', card)) link.setAttribute('href', url);
    for (const label of $$('.details-link .sr-only', card)) label.textContent = ' of task ' + task.id;
    setField(card, 'kind', task.kind);
    setField(card, 'sources', (task.sources || []).join(', '));
    setField(card, 'destination', task.destination || '');
    setField(card, 'owner', task.owner || '');
    setField(card, 'created', task.createdAt ? formatTime(task.createdAt, false) : '');
    renderTask(card, task);
    return card;
  }

  function wireTaskActions(root, onTask) {
    root.addEventListener('click', async (event) => {
      const button = event.target.closest('button[data-action]');
      if (!button || !root.contains(button)) return;
      const holder = button.closest('[data-task-id]');
      if (!holder) return;
      const action = button.getAttribute('data-action');
      if (action !== 'cancel' && action !== 'retry') return;
      const id = holder.getAttribute('data-task-id');
      if (button.getAttribute('data-pending') === 'true') return;
      button.setAttribute('data-pending', 'true');
      button.disabled = true;
      button.classList.add('busy');
      try {
        const task = await api('POST', '/api/tasks/' + encodeURIComponent(id) + '/' + action);
        button.removeAttribute('data-pending');
        renderTask(holder, task);
        if (onTask) onTask(task, action);
      } catch (error) {
        button.removeAttribute('data-pending');
        button.disabled = false;
        button.classList.remove('busy');
        showToast(error.message, 'error');
      }
    });
  }

  // One live connection. EventSource reconnects by itself after a network error; `end` closes it.
  // `onReopen`: called when the connection comes back after a drop, for what it missed meanwhile
  // (a new stream sends only what runs now and what ended in the last minute).
  function openStream(url, onTask, onEnd, onReopen) {
    const indicator = $('#live-indicator');
    const setIndicator = (state, text) => {
      if (!indicator) return;
      indicator.setAttribute('data-state', state);
      const label = $('.live-text', indicator);
      if (label) label.textContent = text;
    };
    if (!window.EventSource) {
      setIndicator('off', 'Reload the page for new figures');
      return null;
    }
    setIndicator('off', 'Connecting…');
    const source = new EventSource(url);
    let dropped = false;
    source.addEventListener('open', () => {
      setIndicator('live', 'Live');
      if (dropped && onReopen) onReopen();
      dropped = false;
    });
    source.addEventListener('task', (event) => {
      setIndicator('live', 'Live');
      let task;
      try { task = JSON.parse(event.data); } catch (_) { return; }
      if (task && task.id) onTask(task);
    });
    source.addEventListener('end', (event) => {
      source.close();
      let reason = '';
      try { reason = (JSON.parse(event.data || '{}') || {}).reason || ''; } catch (_) { /* no reason */ }
      if (reason) {
        // The session ended (signed out, expired): the figures stop here, and say why.
        setIndicator('off', 'Signed out');
        showToast('You were signed out, so the figures here no longer change. Reload the page to sign in again.', 'error');
        return;
      }
      setIndicator('off', 'Finished');
      if (onEnd) onEnd();
    });
    source.addEventListener('error', () => {
      dropped = true;
      // A stream refused outright (signed out while away, or the server restarted and forgot
      // its sessions) is not retried by the browser.
      if (source.readyState === EventSource.CLOSED) setIndicator('off', 'Disconnected: reload the page (you may need to sign in again)');
      else setIndicator('retrying', 'Reconnecting…');
    });
    window.addEventListener('pagehide', () => source.close());
    // Back to this page from the browser's cache: its stream was closed on leaving, and its
    // figures are old; a fresh load shows them as they are.
    window.addEventListener('pageshow', (event) => { if (event.persisted) window.location.reload(); });
    return source;
  }

  // A short message at the bottom of the screen, for failures of background actions.
  function showToast(message, kind) {
    let box = $('#toast');
    if (!box) {
      box = el('div', { id: 'toast', class: 'toast', role: 'status', 'aria-live': 'polite' });
      document.body.append(box);
    }
    box.textContent = message;
    box.setAttribute('data-kind', kind || 'info');
    box.hidden = false;
    clearTimeout(showToast.timer);
    showToast.timer = setTimeout(() => { box.hidden = true; }, 6000);
  }

  // ---------- page: tasks ----------

  function initTasksPage(page) {
    const list = $('#task-list', page);
    const empty = $('#tasks-empty', page);
    const filterEmpty = $('#tasks-filter-empty', page);
    let filter = 'all';

    const matches = (card) => {
      const status = card.getAttribute('data-status');
      const terminal = card.getAttribute('data-terminal') === 'true';
      if (filter === 'running') return !terminal;
      if (filter === 'finished') return status === 'completed';
      if (filter === 'problem') return PROBLEM.includes(status);
      return true;
    };
    const applyFilter = () => {
      const cards = $$('[data-task-id]', list);
      let shown = 0;
      for (const card of cards) {
        card.hidden = !matches(card);
        if (!card.hidden) shown += 1;
      }
      if (empty) empty.hidden = cards.length > 0;
      if (filterEmpty) filterEmpty.hidden = cards.length === 0 || shown > 0;
    };
    for (const chip of $$('[data-filter]', page)) {
      chip.addEventListener('click', () => {
        filter = chip.getAttribute('data-filter');
        for (const other of $$('[data-filter]', page)) other.setAttribute('aria-pressed', String(other === chip));
        applyFilter();
      });
    }

    wireTaskActions(list, () => applyFilter());
    const everyone = list.getAttribute('data-show-owner') === 'true';
    // A page of older tasks updates the cards it shows; new tasks belong on the first page.
    const firstPage = (parseInt(list.getAttribute('data-offset') || '0', 10) || 0) === 0;
    openStream(everyone ? '/api/stream?all=1' : '/api/stream', (task) => {
      let card = list.querySelector('[data-task-id="' + CSS.escape(task.id) + '"]');
      if (!card && !firstPage) return;
      // The stream sends every task under way, older ones too: a task older than the oldest card
      // on this page belongs on a later page, not at the top of this one.
      const cards = Array.from(list.children).filter((other) => other.hasAttribute('data-task-id'));
      const oldest = cards.length ? cards[cards.length - 1].getAttribute('data-created') || '' : '';
      if (!card && list.getAttribute('data-has-older') === 'true' && (task.createdAt || '') < oldest) return;
      if (!card) {
        card = newTaskCard(task);
        if (!card) return;
        // Newest first: before the first card that is older (the page's own cards all are; the
        // stream sends several new ones newest first).
        card.setAttribute('data-created', task.createdAt || '');
        const older = Array.from(list.children).find((other) => (other.getAttribute('data-created') || '') < (task.createdAt || ''));
        list.insertBefore(card, older || null);
        card.classList.add('flash');
      } else {
        renderTask(card, task);
      }
      applyFilter();
    }, null, () => rereadUnfinished(list, applyFilter));
    applyFilter();
  }

  // Reads again each task shown as not ended: one that ended while the stream was down, more than
  // a minute ago, is not in what a new stream sends.
  function rereadUnfinished(root, after) {
    for (const holder of $$('[data-task-id]', root)) {
      if (holder.getAttribute('data-terminal') === 'true') continue;
      const id = holder.getAttribute('data-task-id');
      api('GET', '/api/tasks/' + encodeURIComponent(id)).then((task) => {
        renderTask(holder, task);
        if (after) after();
      }).catch(() => { /* shown as it was; the next change comes through the stream */ });
    }
  }

  // ---------- page: task detail ----------

  function renderTimeline(timeline, status) {
    const items = $$('li[data-phase]', timeline);
    const names = items.map((item) => item.getAttribute('data-phase'));
    const index = names.indexOf(status);
    if (index >= 0) {
      items.forEach((item, i) => {
        const state = status === 'completed' ? 'done' : i < index ? 'done' : i === index ? 'current' : 'todo';
        item.setAttribute('data-state', state);
      });
    } else if (PROBLEM.includes(status)) {
      // The phases it went through stay done; the last step shows how it ended (as the server renders it).
      for (const item of items) {
        if (item.getAttribute('data-state') === 'current') item.setAttribute('data-state', 'done');
      }
      const last = items[items.length - 1];
      if (last) last.setAttribute('data-state', 'failed');
    }
    labelStop(timeline);
    for (const item of items) {
      const state = $('.timeline-state', item);
      if (state) state.textContent = '(' + item.getAttribute('data-state') + ')';
    }
  }

  function eventMessage(message) {
    const node = el('span', { class: 'event-message' });
    node.textContent = message || '';
    return node;
  }

  function renderEvents(list, events) {
    list.replaceChildren(...(events || []).map((event) => el('li', { 'data-status': event.status },
      el('time', { datetime: event.at, text: formatTime(event.at) }),
      el('span', { class: 'status-pill small', 'data-status': event.status, text: statusLabel(event.status) }),
      eventMessage(event.message))));
    const none = $('#events-empty');
    if (none) none.hidden = list.children.length > 0;
  }

  function initTaskPage(page) {
    const id = page.getAttribute('data-task-id');
    const timeline = $('#timeline', page);
    const events = $('#events', page);
    let stream = null;
    let refreshing = null;

    const refreshEvents = () => {
      if (refreshing) return;
      refreshing = api('GET', '/api/tasks/' + encodeURIComponent(id))
        .then((task) => {
          if (events && task.events) renderEvents(events, task.events);
        })
        .catch(() => {})
        .finally(() => { refreshing = null; });
    };

    // The history gains entries without a change of status too (a cancel asked for, a retry's
    // delay): read again when the task's record changed, at most every ten seconds.
    let eventsSeen = '';
    let eventsReadAt = 0;
    const onTask = (task) => {
      if (task.id !== id) return;
      const changed = renderTask(page, task);
      if (timeline) renderTimeline(timeline, task.status);
      const now = Date.now();
      if (changed || (task.updatedAt !== eventsSeen && now - eventsReadAt > 10000)) {
        eventsSeen = task.updatedAt;
        eventsReadAt = now;
        refreshEvents();
      }
    };

    const connect = () => {
      const indicator = $('#live-indicator');
      if (indicator) indicator.hidden = false;  // hidden on a page loaded ended, until a retry
      if (stream) stream.close();
      stream = openStream('/api/tasks/' + encodeURIComponent(id) + '/stream', onTask, () => { stream = null; refreshEvents(); });
    };

    wireTaskActions(page, (task, action) => {
      onTask(task);
      refreshEvents();
      if (action === 'retry' && !stream) connect();
    });

    if (page.getAttribute('data-terminal') === 'true') {
      const indicator = $('#live-indicator');
      if (indicator) indicator.hidden = true;
    } else {
      connect();
    }
  }

  // ---------- page: admin ----------

  function initAdminPage(page) {
    const list = $('#task-list', page);
    const indicator = $('#live-indicator', page);
    if (indicator) indicator.hidden = !list;
    if (list) {
      openStream('/api/stream?all=1', (task) => {
        const row = list.querySelector('[data-task-id="' + CSS.escape(task.id) + '"]');
        if (row) renderTask(row, task);
      }, null, () => rereadUnfinished(list));
    }
    const result = $('#janitor-result', page);
    for (const button of $$('#janitor-dry-run, #janitor-run', page)) {
      button.addEventListener('click', async () => {
        const dryRun = button.getAttribute('data-dry-run') === 'true';
        if (!dryRun && !window.confirm('Run the janitor now? It rolls back or finishes tasks whose worker is gone and deletes orphaned staging directories.')) return;
        button.disabled = true;
        button.classList.add('busy');
        try {
          const answer = await api('POST', '/api/admin/janitor', { dryRun });
          const section = (title, items) => [
            el('h3', { text: title + ' (' + (items || []).length + ')' }),
            (items || []).length
              ? el('ul', null, ...(items || []).map((item) => el('li', null, el('code', { text: typeof item === 'string' ? item : JSON.stringify(item) }))))
              : el('p', { class: 'muted small', text: 'None.' }),
          ];
          result.replaceChildren(
            el('p', null, el('strong', { text: dryRun ? 'Dry run: nothing was changed.' : 'The janitor ran.' })),
            ...section(dryRun ? 'Would recover' : 'Recovered', answer.recovered),
            ...section(dryRun ? 'Would remove' : 'Removed', answer.removed),
            ...section('Kept', answer.kept),
            ...((answer.unmarked || []).length ? section('Left in place: not marked as made by Ferry', answer.unmarked) : []),
            ...(dryRun ? [] : section('Repaired', answer.repaired)));
        } catch (error) {
          result.replaceChildren(el('p', { class: 'task-error', text: error.message }));
        } finally {
          result.hidden = false;
          button.disabled = false;
          button.classList.remove('busy');
        }
      });
    }
  }

  // ---------- page: browse ----------

  function initBrowsePage(page) {
    const table = $('#file-table', page);
    const selectAll = $('#select-all', page);
    const count = $('#selection-count', page);
    const moveButton = $('#move-button', page);
    const copyButton = $('#copy-button', page);
    if (!table) return;
    const boxes = () => $$('input.row-select', table);
    let lastClicked = null;

    const selected = () => boxes().filter((box) => box.checked).map((box) => box.closest('tr'));

    const update = () => {
      const all = boxes();
      const rows = selected();
      for (const box of all) box.closest('tr').classList.toggle('selected', box.checked);
      if (selectAll) {
        selectAll.checked = all.length > 0 && rows.length === all.length;
        selectAll.indeterminate = rows.length > 0 && rows.length < all.length;
      }
      if (count) {
        count.textContent = rows.length === 0 ? 'Nothing selected'
          : rows.length === 1 ? '1 selected: ' + rows[0].getAttribute('data-name')
          : rows.length + ' selected';
        count.classList.toggle('has-selection', rows.length > 0);
      }
      if (moveButton) moveButton.disabled = rows.length === 0;
      if (copyButton) copyButton.disabled = rows.length === 0;
    };

    table.addEventListener('click', (event) => {
      const box = event.target.closest('input.row-select');
      if (box) {
        // Shift-click selects the range from the last box clicked.
        const all = boxes();
        if (event.shiftKey && lastClicked && lastClicked !== box) {
          const a = all.indexOf(lastClicked);
          const b = all.indexOf(box);
          const [from, to] = a < b ? [a, b] : [b, a];
          for (let i = from; i <= to; i += 1) all[i].checked = box.checked;
        }
        lastClicked = box;
        update();
        return;
      }
      // A click on the row's empty space toggles it, as in a desktop file manager.
      const cell = event.target.closest('tbody td');
      if (!cell || event.target.closest('a, button, input, label')) return;
      const row = cell.closest('tr');
      const rowBox = row && $('input.row-select', row);
      if (rowBox) {
        rowBox.checked = !rowBox.checked;
        lastClicked = rowBox;
        update();
      }
    });
    table.addEventListener('change', update);
    if (selectAll) {
      selectAll.addEventListener('change', () => {
        for (const box of boxes()) box.checked = selectAll.checked;
        update();
      });
    }
    // Going back to this page may restore checkbox state from the cache.
    window.addEventListener('pageshow', update);
    update();

    const dialog = createTransferDialog(page);
    for (const button of [moveButton, copyButton]) {
      if (!button) continue;
      button.addEventListener('click', () => {
        const rows = selected();
        if (rows.length === 0) return;
        dialog.open(button.getAttribute('data-kind'), rows.map((row) => ({
          path: row.getAttribute('data-path'),
          name: row.getAttribute('data-name'),
          type: row.getAttribute('data-type'),
        })), button);
      });
    }
  }

  // ---------- the move / copy dialog ----------

  function createTransferDialog(page) {
    const dialog = $('#transfer-dialog', page);
    const title = $('#dialog-title', dialog);
    const sourcesText = $('#dialog-sources', dialog);
    const rootsBox = $('#picker-roots', dialog);
    const crumbs = $('#picker-breadcrumbs', dialog);
    const list = $('#picker-list', dialog);
    const destinationText = $('#dialog-destination', dialog);
    const verify = $('#verify-checksum', dialog);
    const verdict = $('#preflight', dialog);
    const summary = $('#preflight-summary', dialog);
    const refusal = $('#preflight-refusal', dialog);
    const warnings = $('#preflight-warnings', dialog);
    const confirm = $('#dialog-confirm', dialog);
    const cancel = $('#dialog-cancel', dialog);
    const closeButton = $('#dialog-close', dialog);

    const state = {
      kind: 'move',
      sources: [],
      directory: null,
      roots: null,
      opener: null,
      listing: null,
      preflight: null,
      request: null,
      sequence: 0,
      firstLoad: true,
      // Set while the task is being created: nothing may enable the button again meanwhile.
      submitting: false,
    };

    const verb = () => (state.kind === 'copy' ? 'Copy' : 'Move');

    function body() {
      return {
        kind: state.kind,
        sources: state.sources.map((source) => source.path),
        destination: state.directory,
        options: { verify: verify && verify.checked ? 'checksum' : 'metadata' },
      };
    }

    function setVerdict(kind, text) {
      verdict.setAttribute('data-state', kind);
      summary.textContent = text;
      refusal.hidden = true;
      refusal.replaceChildren();
      warnings.hidden = true;
      warnings.replaceChildren();
      confirm.hidden = true;
    }

    function showRefusal(message, code) {
      verdict.setAttribute('data-state', 'refused');
      refusal.replaceChildren(el('div', null,
        el('strong', { text: 'Refused. ' }), message || 'This cannot be done.',
        code ? el('span', { class: 'refusal-code', text: code }) : null));
      refusal.hidden = false;
      refusal.setAttribute('data-code', code || '');
      confirm.hidden = true;
    }

    async function runPreflight() {
      const destination = state.directory;
      const sequence = ++state.sequence;
      if (state.preflight) state.preflight.abort();
      state.preflight = null;
      if (!destination) return;
      const sources = state.sources.map((source) => source.path);
      if (sources.every((path) => dirname(path) === destination)) {
        setVerdict('idle', (sources.length === 1 ? 'It is' : 'They are') + ' already in this folder. Browse to the folder you want to ' + verb().toLowerCase() + ' ' + (sources.length === 1 ? 'it' : 'them') + ' into.');
        return;
      }
      const inside = sources.find((path) => isInside(destination, path));
      if (inside) {
        setVerdict('refused', 'A folder cannot be ' + (state.kind === 'copy' ? 'copied' : 'moved') + ' into itself.');
        showRefusal('“' + basename(inside) + '” is the folder being ' + (state.kind === 'copy' ? 'copied' : 'moved') + ' or contains this destination. Choose another folder.', 'destination.inside_source');
        return;
      }
      setVerdict('loading', 'Checking quotas, space and permissions…');
      const controller = new AbortController();
      state.preflight = controller;
      try {
        const answer = await api('POST', '/api/preflight', body(), controller.signal);
        if (sequence !== state.sequence) return;
        verdict.setAttribute('data-state', answer.allowed ? 'allowed' : 'refused');
        verdict.setAttribute('data-strategy', answer.strategy || '');
        // A refusal's summary repeats its message ("Refused: …"); the message goes in the red box.
        summary.textContent = answer.refusal
          ? 'Ferry will not ' + state.kind + ' ' + (state.sources.length === 1 ? 'this' : 'these') + ' here.'
          : answer.summary || (answer.allowed ? 'This can be done.' : 'This cannot be done.');
        if (answer.refusal) showRefusal(answer.refusal.message, answer.refusal.code);
        if (answer.warnings && answer.warnings.length) {
          warnings.replaceChildren(...answer.warnings.map((warning) => el('li', { text: warning })));
          warnings.hidden = false;
        }
        confirm.hidden = !answer.allowed;
        confirm.disabled = state.submitting;
        confirm.textContent = verb() + ' here';
      } catch (error) {
        if (error.name === 'AbortError' || sequence !== state.sequence) return;
        setVerdict('error', 'The check could not be completed.');
        showRefusal(error.message, error.code);
      } finally {
        if (state.preflight === controller) state.preflight = null;
      }
    }

    function renderRoots() {
      rootsBox.replaceChildren(...(state.roots || []).map((root) => el('button', {
        type: 'button',
        class: 'button small',
        'data-path': root.path,
        title: root.path,
        'aria-pressed': String(!!state.directory && isInside(state.directory, root.path)),
        onclick: () => navigate(root.path),
      }, root.name || basename(root.path))));
      rootsBox.hidden = !state.roots || state.roots.length === 0;
    }

    function renderCrumbs(listing) {
      const root = listing.root || { path: listing.path, name: basename(listing.path) };
      const trail = [{ name: root.name || basename(root.path), path: root.path }];
      const relative = listing.path.slice(root.path.replace(/\/+$/, '').length).split('/').filter(Boolean);
      let path = root.path.replace(/\/+$/, '');
      for (const part of relative) {
        path += '/' + part;
        trail.push({ name: part, path });
      }
      crumbs.replaceChildren(...trail.map((crumb, index) => el('li', null,
        index === trail.length - 1
          ? el('span', { class: 'crumb-current', 'aria-current': 'location', 'data-path': crumb.path, text: crumb.name })
          : el('button', { type: 'button', 'data-path': crumb.path, onclick: () => navigate(crumb.path) }, crumb.name))));
    }

    function folderItem(entry) {
      const selectedSource = state.sources.some((source) => source.path === entry.path);
      return el('li', null, el('button', {
        type: 'button',
        class: 'picker-item',
        'data-path': entry.path,
        disabled: selectedSource,
        title: selectedSource ? 'This folder is being ' + (state.kind === 'copy' ? 'copied' : 'moved') : 'Open ' + entry.path,
        onclick: () => navigate(entry.path),
      },
      svgFolder(),
      el('span', { class: 'entry-name', text: entry.name }),
      selectedSource ? el('span', { class: 'muted small', text: 'selected' }) : el('span', { class: 'chevron', 'aria-hidden': 'true', text: '›' })));
    }

    function svgFolder() {
      const ns = 'http://www.w3.org/2000/svg';
      const svg = document.createElementNS(ns, 'svg');
      svg.setAttribute('viewBox', '0 0 20 20');
      svg.setAttribute('class', 'icon icon-dir');
      svg.setAttribute('aria-hidden', 'true');
      const path = document.createElementNS(ns, 'path');
      path.setAttribute('d', 'M2.5 5.5A1.5 1.5 0 0 1 4 4h3.6l1.7 1.9H16a1.5 1.5 0 0 1 1.5 1.5v7.1A1.5 1.5 0 0 1 16 16H4a1.5 1.5 0 0 1-1.5-1.5z');
      svg.append(path);
      return svg;
    }

    async function loadPage(directory, offset) {
      const query = new URLSearchParams({ path: directory, offset: String(offset), limit: '1000', sort: 'name', order: 'asc' });
      return api('GET', '/api/files?' + query.toString(), undefined, state.request ? state.request.signal : undefined);
    }

    function renderListing(listing, append) {
      const folders = (listing.entries || []).filter((entry) => entry.type === 'directory');
      const items = folders.map(folderItem);
      const more = $('.picker-more', list);
      if (more) more.remove();
      if (!append) {
        list.replaceChildren();
        if (listing.parent && listing.root && listing.path !== listing.root.path) {
          list.append(el('li', null, el('button', {
            type: 'button', class: 'picker-item picker-up', 'data-path': listing.parent,
            onclick: () => navigate(listing.parent),
          }, el('span', { class: 'chevron', 'aria-hidden': 'true', text: '↑' }), el('span', { class: 'entry-name', text: 'Parent folder' }))));
        }
      }
      list.append(...items);
      const seen = (listing.offset || 0) + (listing.entries || []).length;
      if (listing.total > seen) {
        list.append(el('li', { class: 'picker-more' }, el('button', {
          type: 'button', class: 'picker-item',
          onclick: async (event) => {
            event.currentTarget.disabled = true;
            try {
              renderListing(await loadPage(listing.path, seen), true);
            } catch (error) {
              list.append(el('li', { class: 'picker-note error', text: error.message }));
            }
          },
        }, el('span', { class: 'entry-name muted', text: 'Show more (' + formatCount(seen) + ' of ' + formatCount(listing.total) + ' entries looked at)' }))));
      }
      if (!append && $$('.picker-item:not(.picker-up)', list).length === 0) {
        list.append(el('li', { class: 'picker-note', text: 'No folders inside. You can ' + verb().toLowerCase() + ' into this one.' }));
      }
    }

    async function navigate(directory) {
      if (state.request) state.request.abort();
      const controller = new AbortController();
      state.request = controller;
      list.setAttribute('aria-busy', 'true');
      try {
        const listing = await loadPage(directory, 0);
        if (state.request !== controller) return;
        state.listing = listing;
        state.directory = listing.path;
        destinationText.textContent = shown(listing.path);
        renderRoots();
        renderCrumbs(listing);
        renderListing(listing, false);
        list.scrollTop = 0;
        if (state.firstLoad) {
          state.firstLoad = false;
          const first = $('.picker-item:not(:disabled)', list) || closeButton;
          first.focus();
        } else if (!dialog.contains(document.activeElement) || document.activeElement === document.body) {
          const first = $('.picker-item:not(:disabled)', list);
          if (first) first.focus();
        }
        runPreflight();
      } catch (error) {
        if (error.name === 'AbortError') return;
        list.replaceChildren(el('li', { class: 'picker-note error', role: 'alert', text: error.message }));
      } finally {
        if (state.request === controller) {
          state.request = null;
          list.setAttribute('aria-busy', 'false');
        }
      }
    }

    // Focus stays inside the dialog: Tab from the last control goes to the first and back.
    function focusables() {
      return $$('button, [href], input, select, textarea, [tabindex]:not([tabindex="-1"])', dialog)
        .filter((node) => !node.disabled && !node.hidden && node.offsetParent !== null);
    }

    dialog.addEventListener('keydown', (event) => {
      if (event.key === 'Escape') {
        event.preventDefault();
        close();
        return;
      }
      if (event.key !== 'Tab') return;
      const nodes = focusables();
      if (nodes.length === 0) return;
      const first = nodes[0];
      const last = nodes[nodes.length - 1];
      if (event.shiftKey && (document.activeElement === first || !dialog.contains(document.activeElement))) {
        event.preventDefault();
        last.focus();
      } else if (!event.shiftKey && (document.activeElement === last || !dialog.contains(document.activeElement))) {
        event.preventDefault();
        first.focus();
      }
    });
    // The browser's own Escape handling (the cancel event) goes through the same path.
    dialog.addEventListener('cancel', (event) => {
      event.preventDefault();
      close();
    });
    // A click on the backdrop closes it too.
    dialog.addEventListener('mousedown', (event) => {
      if (event.target !== dialog) return;
      const box = dialog.getBoundingClientRect();
      const outside = event.clientX < box.left || event.clientX > box.right || event.clientY < box.top || event.clientY > box.bottom;
      if (outside) close();
    });
    cancel.addEventListener('click', close);
    closeButton.addEventListener('click', close);
    if (verify) verify.addEventListener('change', runPreflight);

    // Back to this page from the browser's cache after a task was created: the dialog is free again.
    window.addEventListener('pageshow', (event) => {
      if (!event.persisted) return;
      state.submitting = false;
      confirm.classList.remove('busy');
    });

    confirm.addEventListener('click', async () => {
      if (confirm.hidden || confirm.disabled || state.submitting) return;
      state.submitting = true;
      confirm.disabled = true;
      confirm.classList.add('busy');
      try {
        const task = await api('POST', '/api/tasks', body());
        window.location.assign('/tasks/' + encodeURIComponent(task.id));
      } catch (error) {
        state.submitting = false;
        confirm.classList.remove('busy');
        confirm.disabled = false;
        if (error.status === 422) {
          setVerdict('refused', 'The server refused to start this ' + state.kind + '.');
          showRefusal(error.message, error.code);
        } else {
          showRefusal(error.message, error.code);
          confirm.hidden = false;
        }
      }
    });

    function close() {
      if (state.request) state.request.abort();
      if (state.preflight) state.preflight.abort();
      state.sequence += 1;
      if (dialog.open) dialog.close();
      dialog.removeAttribute('data-kind');
      if (state.opener && document.contains(state.opener)) state.opener.focus();
    }

    async function open(kind, sources, opener) {
      if (state.submitting) {
        showToast('The ' + state.kind + ' you confirmed is being started; its page opens when it has.', 'info');
        return;
      }
      state.kind = kind === 'copy' ? 'copy' : 'move';
      state.sources = sources;
      state.opener = opener;
      state.firstLoad = true;
      state.directory = null;
      dialog.setAttribute('data-kind', state.kind);
      const folderCount = sources.filter((source) => source.type === 'directory').length;
      const fileCount = sources.length - folderCount;
      title.textContent = sources.length === 1
        ? verb() + ' “' + sources[0].name + '”'
        : verb() + ' ' + sources.length + ' items';
      const what = [];
      if (folderCount) what.push(folderCount + (folderCount === 1 ? ' folder' : ' folders'));
      if (fileCount) what.push(fileCount + (fileCount === 1 ? ' file' : ' files'));
      sourcesText.replaceChildren(
        el('strong', { text: what.join(' and ') }), ' from ', el('code', { text: dirname(sources[0].path) }),
        '. Choose the folder to ' + verb().toLowerCase() + (sources.length === 1 ? ' it' : ' them') + ' into.');
      destinationText.textContent = '—';
      setVerdict('idle', 'Browse to the folder you want to ' + verb().toLowerCase() + ' ' + (sources.length === 1 ? 'it' : 'them') + ' into.');
      confirm.textContent = verb() + ' here';
      list.replaceChildren(el('li', { class: 'picker-note', text: 'Loading…' }));
      crumbs.replaceChildren();
      if (!dialog.open) dialog.showModal();
      if (!state.roots) {
        try {
          const answer = await api('GET', '/api/roots');
          state.roots = answer.roots || [];
        } catch (_) {
          state.roots = [];
        }
      }
      renderRoots();
      navigate(page.getAttribute('data-path') || dirname(sources[0].path));
    }

    return { open, close };
  }

  // ---------- start ----------

  function start() {
    initBars(document);
    const page = $('[data-page]');
    if (!page) return;
    switch (page.getAttribute('data-page')) {
      case 'browse': initBrowsePage(page); break;
      case 'tasks': initTasksPage(page); break;
      case 'task': initTaskPage(page); break;
      case 'admin': initAdminPage(page); break;
      default: break;
    }
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
