// tickethold's buyer's page: lists events with live stock, holds tickets, counts each hold down
// on the server's clock, pays or releases, and says in plain words what went wrong.
//
// Plain ES module, no build step. Queries and mutations go over HTTP (POST /graphql, with
// `Authorization: Bearer <token>`); the live parts (stock, countdowns, expiries) are GraphQL
// subscriptions over one WebSocket through the vendored graphql-ws client. On every (re)connect
// the page reads the server's clock, the catalog and each of its holds again, so what it shows
// after a network blip is what the server has now.

const { createClient } = globalThis.graphqlWs;

/** Change to the shop's currency; prices are integer cents. */
const CURRENCY = 'EUR';
const TOKEN_KEY = 'tickethold.token';
/** Per buyer (`sub`): the ids of their holds, oldest first, so a reload finds them again. */
const HOLDS_KEY_PREFIX = 'tickethold.holds.';
const HOLDS_KEPT_MAX = 20;
/** How long an active hold may look past its end before the page asks the server again. */
const EXPIRY_RECHECK_MS = 3000;
const PONG_TIMEOUT_MS = 5000;
const KEEP_ALIVE_MS = 15000;

const HOLD_FIELDS = `id eventId status expiresAt secondsLeft items { ticketTypeId quantity }
  order { id holdId totalCents createdAt items { ticketTypeId quantity unitPriceCents } }`;
const ORDER_FIELDS = 'id holdId totalCents items { ticketTypeId quantity unitPriceCents } createdAt';
const AVAILABILITY_FIELDS = 'ticketTypeId eventId capacity sold held available';

const Q = {
  events: `query Events { events { id name ticketTypes { id eventId name priceCents capacity
    maxPerCustomer availability { ${AVAILABILITY_FIELDS} } } } }`,
  serverTime: 'query ServerTime { serverTime }',
  holdTickets: `mutation HoldTickets($input: HoldTicketsInput!) {
    holdTickets(input: $input) { ${HOLD_FIELDS} } }`,
  checkout: `mutation Checkout($input: CheckoutInput!) { checkout(input: $input) { ${ORDER_FIELDS} } }`,
  releaseHold: 'mutation ReleaseHold($holdId: ID!) { releaseHold(holdId: $holdId) { id status } }',
  availabilityChanged: `subscription AvailabilityChanged($eventId: ID!) {
    availabilityChanged(eventId: $eventId) { ${AVAILABILITY_FIELDS} } }`,
  holdCountdown: `subscription HoldCountdown($holdId: ID!) {
    holdCountdown(holdId: $holdId) { holdId status secondsLeft expiresAt } }`,
  holdExpired: `subscription HoldExpired($eventId: ID!) {
    holdExpired(eventId: $eventId) { holdId eventId expiresAt expiredAt items { ticketTypeId quantity } } }`,
};

const STATUS_WORDS = {
  ACTIVE: 'Held for you',
  EXPIRED: 'Expired: the tickets are back on sale',
  RELEASED: 'Released',
  CONFIRMED: 'Paid',
};

const state = {
  token: null,
  sub: null,
  /** serverTime - Date.now(), measured at the middle of the round trip. */
  clockOffsetMs: 0,
  events: new Map(), // id -> { id, name, ticketTypes: [id] }
  ticketTypes: new Map(), // id -> { id, eventId, name, priceCents, capacity, maxPerCustomer, availability }
  holds: new Map(), // id -> { id, eventId, status, expiresAt (ms), items, order, checkedAt, unread }
  cards: new Map(), // hold id -> its card element
  client: null,
  /** Live subscriptions by key ("stock:<event>", "expired:<event>", "countdown:<hold>"). */
  subscriptions: new Map(),
};

const $ = (testid, root = document) => root.querySelector(`[data-testid="${testid}"]`);

// ---------------------------------------------------------------------------------------------
// Start

main().catch((error) => notify(describe(error), 'error'));

async function main() {
  bindStaticControls();
  state.token = await obtainToken();
  showIdentity();
  loadHoldIds();
  await Promise.allSettled([syncClock(), loadEvents().catch((e) => notify(describe(e), 'error'))]);
  await refreshHolds();
  renderHolds();
  startLive();
  setInterval(tick, 250);
}

function bindStaticControls() {
  $('notice-close').addEventListener('click', () => ($('notice').hidden = true));
  $('change-token').addEventListener('click', () => {
    $('token-form').hidden = !$('token-form').hidden;
    if (!$('token-form').hidden) $('token-input').focus();
  });
  $('token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const token = $('token-input').value.trim();
    if (!token) return;
    $('token-input').value = '';
    $('token-form').hidden = true;
    $('notice').hidden = true;
    switchBuyer(token);
  });
}

// ---------------------------------------------------------------------------------------------
// Who the buyer is

/** The token from `?token=`, else from localStorage, else (development servers only) a new one. */
async function obtainToken() {
  const url = new URL(location.href);
  const fromUrl = url.searchParams.get('token');
  if (fromUrl) {
    localStorage.setItem(TOKEN_KEY, fromUrl);
    // Keep the token out of the history, bookmarks and screenshots.
    url.searchParams.delete('token');
    history.replaceState(null, '', url);
    return fromUrl;
  }
  const stored = localStorage.getItem(TOKEN_KEY);
  if (stored && !isExpired(stored)) return stored;
  if (stored) localStorage.removeItem(TOKEN_KEY);
  const token = await devToken();
  if (token) localStorage.setItem(TOKEN_KEY, token);
  return token;
}

/** A new buyer's token from a development server (`--dev`); null from any other. */
async function devToken() {
  try {
    const sub = `buyer-${randomId().slice(0, 8)}`;
    const response = await fetch(`/dev/token?role=buyer&sub=${encodeURIComponent(sub)}`);
    if (response.ok) return (await response.json()).token ?? null;
  } catch {
    // Unreachable: as good as not a development server.
  }
  return null; // 404: not a development server; the buyer pastes a token.
}

/**
 * The server refused the token (expired, revoked, or signed with another secret, as after a
 * restart of a development server): forget it and carry on as a new dev buyer, or as a guest.
 */
async function tokenRejected() {
  if (!state.token || state.replacingToken) return;
  state.replacingToken = true;
  localStorage.removeItem(TOKEN_KEY);
  // At most one fresh dev token a minute, so that a server that refuses its own tokens does not
  // make the page spin.
  const fresh = Date.now() - (state.devTokenAt ?? 0) > 60_000 ? await devToken() : null;
  if (fresh) {
    state.devTokenAt = Date.now();
    localStorage.setItem(TOKEN_KEY, fresh);
  }
  switchBuyer(fresh);
  notify(fresh
    ? `Your sign-in was refused, so you are now ${state.sub}: your earlier holds are not shown.`
    : describe(new ApiError('UNAUTHENTICATED', 'token refused')), 'error');
  state.replacingToken = false;
}

/** Becomes the buyer of `token` (null: a guest): their holds, their subscriptions. */
function switchBuyer(token) {
  state.token = token;
  if (token) localStorage.setItem(TOKEN_KEY, token);
  for (const id of [...state.holds.keys()]) forgetHold(id);
  showIdentity();
  loadHoldIds();
  stopLive();
  startLive(); // Its first `connected` reads the clock, the catalog and the holds.
}

/** The claims of a JWT, unverified (the server verifies; the page only shows them). */
function claims(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const json = decodeURIComponent(
      [...atob(part)].map((c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0')}`).join(''));
    return JSON.parse(json);
  } catch {
    return {};
  }
}

function isExpired(token) {
  const { exp } = claims(token);
  return typeof exp === 'number' && exp * 1000 <= Date.now();
}

function showIdentity() {
  const { sub, role } = state.token ? claims(state.token) : {};
  state.sub = sub ?? null;
  const who = $('whoami');
  who.dataset.sub = sub ?? '';
  if (state.token) {
    who.textContent = `Signed in as ${sub ?? 'an unnamed buyer'}${role && role !== 'buyer' ? ` (${role})` : ''}`;
    $('change-token').textContent = 'Use another token';
  } else {
    who.textContent = 'Browsing as a guest';
    $('change-token').textContent = 'Sign in with a token';
    $('token-form').hidden = false;
  }
  renderHolds();
}

// ---------------------------------------------------------------------------------------------
// GraphQL over HTTP

class ApiError extends Error {
  constructor(code, message, extensions = {}) {
    super(message);
    this.code = code;
    this.extensions = extensions;
  }
}

/** The whole response `{ data, errors }`; throws only when there is no GraphQL answer at all. */
async function request(query, variables = {}) {
  const headers = { 'content-type': 'application/json', accept: 'application/json' };
  if (state.token) headers.authorization = `Bearer ${state.token}`;
  let response;
  try {
    response = await fetch('/graphql', { method: 'POST', headers, body: JSON.stringify({ query, variables }) });
  } catch {
    throw new ApiError('NETWORK', 'cannot reach the server');
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON: judged by the status below.
  }
  if (body && (body.data !== undefined || body.errors)) return body;
  if (response.status === 401) throw new ApiError('UNAUTHENTICATED', 'HTTP 401');
  if (response.status === 403) throw new ApiError('FORBIDDEN', 'HTTP 403');
  if (response.status === 429) {
    const retryAfterSeconds = Number(response.headers.get('retry-after')) || undefined;
    throw new ApiError('RATE_LIMITED', 'HTTP 429', { retryAfterSeconds });
  }
  throw new ApiError('UNAVAILABLE', `HTTP ${response.status}`);
}

/** The `data` of a response without errors; the first error otherwise, as an `ApiError`. */
async function gql(query, variables) {
  let body;
  try {
    body = await request(query, variables);
  } catch (error) {
    if (error.code === 'UNAUTHENTICATED') tokenRejected();
    throw error;
  }
  if (body.errors?.length) {
    const error = toApiError(body.errors[0]);
    if (error.code === 'UNAUTHENTICATED') tokenRejected();
    throw error;
  }
  return body.data;
}

function toApiError(error) {
  const extensions = error?.extensions ?? {};
  return new ApiError(extensions.code ?? 'INTERNAL', error?.message ?? 'unknown error', extensions);
}

/** An error in plain words, from its `extensions.code`. */
function describe(error) {
  const ext = error?.extensions ?? {};
  const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;
  switch (error?.code) {
    case 'SOLD_OUT': {
      const name = state.ticketTypes.get(ext.ticketTypeId)?.name;
      const of = name ? ` of ${name}` : '';
      return ext.available > 0
        ? `Sold out: only ${ext.available} left${of}.`
        : `Sold out: no tickets left${of}.`;
    }
    case 'LIMIT_EXCEEDED':
      return `That is over the limit of ${plural(ext.maxPerCustomer, 'ticket')} per buyer`
        + (ext.already > 0 ? ` (you already have ${ext.already}).` : '.');
    case 'HOLD_EXPIRED':
      return 'This hold has expired: its tickets are back on sale. Hold them again to buy them.';
    case 'HOLD_NOT_ACTIVE':
      return 'This hold is no longer active: it was already paid, released or expired.';
    case 'RATE_LIMITED':
      return ext.retryAfterSeconds
        ? `Too many requests: please wait ${plural(Math.ceil(ext.retryAfterSeconds), 'second')} and try again.`
        : 'Too many requests: please wait a moment and try again.';
    case 'UNAUTHENTICATED':
      $('token-form').hidden = false;
      return 'Please sign in: your access token is missing, invalid or expired.';
    case 'FORBIDDEN':
      return 'You are not allowed to do that.';
    case 'NOT_FOUND':
      return 'Not found: it may have been removed.';
    case 'INVALID_INPUT':
      return `That request is not valid: ${error.message}.`;
    case 'UNAVAILABLE':
      return 'The ticket service is busy or unreachable right now: please try again in a moment.';
    case 'NETWORK':
      return 'Cannot reach the ticket service: check your connection and try again.';
    default:
      return 'Something went wrong on our side: please try again.';
  }
}

// ---------------------------------------------------------------------------------------------
// The server's clock

function serverNow() {
  return Date.now() + state.clockOffsetMs;
}

/** offset = serverTime - local time at the middle of the round trip; best of two samples. */
async function syncClock() {
  let best = null;
  for (let i = 0; i < 2; i++) {
    const sentAt = Date.now();
    const { serverTime } = await gql(Q.serverTime);
    const receivedAt = Date.now();
    const roundTrip = receivedAt - sentAt;
    if (!best || roundTrip < best.roundTrip) {
      best = { roundTrip, offset: Date.parse(serverTime) - (sentAt + roundTrip / 2) };
    }
  }
  state.clockOffsetMs = best.offset;
  document.body.dataset.clockOffsetMs = String(Math.round(best.offset));
}

// ---------------------------------------------------------------------------------------------
// The catalog

async function loadEvents() {
  const { events } = await gql(Q.events);
  for (const event of events) {
    state.events.set(event.id, { id: event.id, name: event.name, ticketTypes: event.ticketTypes.map((t) => t.id) });
    for (const ticketType of event.ticketTypes) state.ticketTypes.set(ticketType.id, ticketType);
  }
  renderEvents();
  if (state.client) subscribeEvents();
}

function renderEvents() {
  const list = $('events');
  list.removeAttribute('aria-busy');
  if (state.events.size === 0) {
    list.replaceChildren(el('p', { class: 'muted' }, 'No events on sale yet.'));
    return;
  }
  list.querySelector(':scope > p')?.remove();
  for (const event of state.events.values()) {
    let card = list.querySelector(`[data-event-id="${CSS.escape(event.id)}"]`);
    if (!card) {
      card = el('article', { class: 'event', 'data-testid': 'event', 'data-event-id': event.id },
        el('h3', {}, event.name),
        el('ul', { class: 'ticket-types' }));
      list.append(card);
    }
    const rows = card.querySelector('ul');
    for (const id of event.ticketTypes) {
      if (!rows.querySelector(`[data-ticket-type-id="${CSS.escape(id)}"]`)) rows.append(ticketTypeRow(state.ticketTypes.get(id)));
      renderAvailability(id);
    }
  }
}

function ticketTypeRow(ticketType) {
  const quantity = el('input', {
    type: 'number', min: '1', max: String(ticketType.maxPerCustomer ?? 100), value: '1',
    inputmode: 'numeric', 'data-testid': 'quantity', 'aria-label': `How many ${ticketType.name} tickets`,
  });
  const button = el('button', { type: 'button', 'data-testid': 'hold-button' }, 'Hold');
  button.addEventListener('click', () => holdTickets(ticketType, quantity, button));
  const limit = ticketType.maxPerCustomer ? ` · at most ${ticketType.maxPerCustomer} per buyer` : '';
  return el('li', { class: 'ticket-type', 'data-testid': 'ticket-type', 'data-ticket-type-id': ticketType.id },
    el('div', {},
      el('div', { class: 'tt-name' }, ticketType.name),
      el('div', { class: 'tt-meta' }, `${money(ticketType.priceCents)}${limit}`)),
    el('div', { class: 'tt-actions' }, quantity, button),
    el('div', {},
      el('div', { class: 'bar', role: 'meter', 'aria-valuemin': '0', 'data-testid': 'availability-bar' },
        el('span', { class: 'sold' }), el('span', { class: 'held' })),
      el('div', { class: 'availability', 'data-testid': 'availability' }),
      el('div', { class: 'tt-meta', 'data-testid': 'availability-detail' })));
}

function applyAvailability(availability) {
  const ticketType = state.ticketTypes.get(availability.ticketTypeId);
  if (!ticketType) {
    // A ticket type created since the catalog was read.
    state.catalogReload ??= loadEvents().catch(() => {}).finally(() => (state.catalogReload = null));
    return;
  }
  ticketType.availability = availability;
  ticketType.capacity = availability.capacity;
  renderAvailability(ticketType.id);
}

function renderAvailability(ticketTypeId) {
  const ticketType = state.ticketTypes.get(ticketTypeId);
  const row = document.querySelector(`[data-ticket-type-id="${CSS.escape(ticketTypeId)}"]`);
  if (!ticketType || !row) return;
  const { capacity, sold, held, available } = ticketType.availability;
  const percent = (n) => `${capacity > 0 ? (100 * n) / capacity : 0}%`;
  row.querySelector('.bar .sold').style.width = percent(sold);
  row.querySelector('.bar .held').style.width = percent(held);
  const bar = $('availability-bar', row);
  bar.setAttribute('aria-valuemax', String(capacity));
  bar.setAttribute('aria-valuenow', String(available));
  const text = $('availability', row);
  text.textContent = `${available} of ${capacity} left`;
  text.dataset.available = String(available);
  text.dataset.soldOut = String(available === 0);
  $('availability-detail', row).replaceChildren(
    el('span', { class: 'key sold' }), `${sold} sold `, el('span', { class: 'key held' }), `${held} on hold`);
}

// ---------------------------------------------------------------------------------------------
// Holds

async function holdTickets(ticketType, quantityInput, button) {
  const quantity = Number(quantityInput.value);
  if (!Number.isInteger(quantity) || quantity < 1) {
    notify('Choose how many tickets you want (1 or more).', 'error');
    return;
  }
  if (!state.token) {
    notify(describe(new ApiError('UNAUTHENTICATED', 'no token')), 'error');
    return;
  }
  const input = {
    eventId: ticketType.eventId,
    items: [{ ticketTypeId: ticketType.id, quantity }],
    // A fresh key per click; a retry of this same request (after a timeout, say) would reuse it.
    idempotencyKey: randomId(),
  };
  const ttl = $('ttl').value;
  if (ttl) input.ttlSeconds = Number(ttl);
  button.disabled = true;
  try {
    const { holdTickets: hold } = await gql(Q.holdTickets, { input });
    addHold(hold);
    notify(`Held ${describeItems(hold.items)}: pay before the countdown ends.`);
  } catch (error) {
    notify(describe(error), 'error');
  } finally {
    button.disabled = false;
  }
}

function addHold(hold) {
  upsertHold(hold);
  saveHoldIds();
  renderHolds();
  watchHold(hold.id);
}

/** Merges what the server says of a hold; an ended hold never goes back to ACTIVE. */
function upsertHold(fields) {
  const id = fields.id ?? fields.holdId;
  const known = state.holds.get(id);
  const hold = known ?? { id, status: 'ACTIVE', items: [], order: null };
  // A hold read back from localStorage is not news: say nothing if it ended long ago.
  const wasActive = known && !known.unread && known.status === 'ACTIVE';
  if (fields.eventId) hold.eventId = fields.eventId;
  if (fields.items) hold.items = fields.items;
  if (fields.order) hold.order = fields.order;
  if (fields.expiresAt) hold.expiresAt = Date.parse(fields.expiresAt);
  if (fields.status && (hold.status === 'ACTIVE' || !known)) hold.status = fields.status;
  if (fields.expiresAt && fields.items) hold.unread = false;
  state.holds.set(id, hold);
  if (wasActive && hold.status === 'EXPIRED') {
    notify(`Your hold of ${describeItems(hold.items)} expired: the tickets are back on sale.`, 'error');
  }
  renderHold(hold);
  watchExpiries();
  return hold;
}

async function checkout(holdId, button) {
  button.disabled = true;
  try {
    const { checkout: order } = await gql(Q.checkout, {
      input: {
        holdId,
        // A real shop puts its payment provider's reference here, once the payment succeeded.
        paymentReference: `demo-${randomId()}`,
        idempotencyKey: randomId(),
      },
    });
    upsertHold({ id: holdId, status: 'CONFIRMED', order });
    notify(`Paid: order ${shortId(order.id)}, ${money(order.totalCents)}.`);
  } catch (error) {
    notify(describe(error), 'error');
    await refreshHolds([holdId]);
  } finally {
    button.disabled = false;
  }
}

async function releaseHold(holdId, button) {
  button.disabled = true;
  try {
    const { releaseHold: hold } = await gql(Q.releaseHold, { holdId });
    upsertHold(hold);
    notify('Released: the tickets are back on sale.');
  } catch (error) {
    notify(describe(error), 'error');
    await refreshHolds([holdId]);
  } finally {
    button.disabled = false;
  }
}

/** Reads the given holds (all known ones by default) from the server, in one request. */
async function refreshHolds(ids = [...state.holds.keys()]) {
  if (ids.length === 0 || !state.token) return;
  const variables = Object.fromEntries(ids.map((id, i) => [`h${i}`, id]));
  const query = `query Holds(${ids.map((_, i) => `$h${i}: ID!`).join(', ')}) {
    ${ids.map((_, i) => `h${i}: hold(id: $h${i}) { ${HOLD_FIELDS} }`).join('\n')} }`;
  let body;
  try {
    body = await request(query, variables);
  } catch {
    return; // Unreachable: the next (re)connect reads them again.
  }
  const gone = new Set(['NOT_FOUND', 'FORBIDDEN', 'INVALID_INPUT']);
  const failed = new Map((body.errors ?? []).map((e) => [e.path?.[0], e.extensions?.code]));
  ids.forEach((id, i) => {
    const hold = body.data?.[`h${i}`];
    const now = serverNow();
    if (hold) {
      upsertHold(hold).checkedAt = now;
      watchHold(id);
    } else if (body.data && (!failed.has(`h${i}`) || gone.has(failed.get(`h${i}`)))) {
      forgetHold(id); // Not this buyer's, or no longer known.
    } else if (state.holds.has(id)) {
      state.holds.get(id).checkedAt = now;
    }
  });
  saveHoldIds();
  renderHolds();
}

function forgetHold(id) {
  state.holds.delete(id);
  stopSubscription(`countdown:${id}`);
  state.cards.get(id)?.remove();
  state.cards.delete(id);
}

function holdsKey() {
  return HOLDS_KEY_PREFIX + (state.sub ?? 'anonymous');
}

function loadHoldIds() {
  if (!state.token) return;
  try {
    const ids = JSON.parse(localStorage.getItem(holdsKey()) ?? '[]');
    for (const id of ids) state.holds.set(id, { id, status: 'ACTIVE', items: [], order: null, unread: true });
  } catch {
    localStorage.removeItem(holdsKey());
  }
}

function saveHoldIds() {
  const ids = [...state.holds.keys()].reverse().slice(0, HOLDS_KEPT_MAX);
  localStorage.setItem(holdsKey(), JSON.stringify(ids.reverse()));
}

function renderHolds() {
  const list = $('holds');
  const holds = [...state.holds.values()].filter((hold) => hold.expiresAt);
  $('no-holds').hidden = holds.length > 0;
  // Newest first.
  for (const hold of holds.reverse()) list.append(renderHold(hold));
}

/** The card of a hold, created on first use and brought up to date. */
function renderHold(hold) {
  let card = state.cards.get(hold.id);
  if (!hold.expiresAt) return card;
  if (!card) {
    const pay = el('button', { type: 'button', 'data-testid': 'pay' }, 'Pay');
    pay.addEventListener('click', () => checkout(hold.id, pay));
    const release = el('button', { type: 'button', class: 'secondary', 'data-testid': 'release' }, 'Release');
    release.addEventListener('click', () => releaseHold(hold.id, release));
    const dismiss = el('button', { type: 'button', class: 'link', 'data-testid': 'dismiss', title: 'Remove from this list' }, 'Remove');
    dismiss.addEventListener('click', () => { forgetHold(hold.id); saveHoldIds(); renderHolds(); });
    card = el('article', { class: 'hold', 'data-testid': 'hold', 'data-hold-id': hold.id },
      el('div', { class: 'hold-head' },
        el('span', { class: 'hold-what', 'data-testid': 'hold-items' }),
        el('span', { class: 'hold-total', 'data-testid': 'hold-total' })),
      el('div', { class: 'hold-event', 'data-testid': 'hold-event' }),
      el('div', { class: 'countdown', 'data-testid': 'hold-countdown', 'aria-live': 'off' }),
      el('div', { class: 'hold-status', 'data-testid': 'hold-status', role: 'status' }),
      el('div', { class: 'hold-actions' }, pay, release, dismiss),
      el('div', { class: 'order', 'data-testid': 'order-summary', hidden: '' }));
    state.cards.set(hold.id, card);
    $('holds').prepend(card);
    $('no-holds').hidden = true;
  }
  const active = hold.status === 'ACTIVE';
  card.dataset.status = hold.status;
  card.dataset.expiresAt = new Date(hold.expiresAt).toISOString();
  $('hold-items', card).textContent = describeItems(hold.items);
  $('hold-event', card).textContent = state.events.get(hold.eventId)?.name ?? '';
  const total = hold.order?.totalCents ?? totalCents(hold.items);
  $('hold-total', card).textContent = total == null ? '' : money(total);
  $('hold-status', card).textContent = STATUS_WORDS[hold.status] ?? hold.status;
  $('pay', card).hidden = !active;
  $('release', card).hidden = !active;
  $('dismiss', card).hidden = active;
  const summary = $('order-summary', card);
  if (hold.order) {
    summary.hidden = false;
    summary.dataset.orderId = hold.order.id;
    summary.replaceChildren(
      'Order ', el('code', { 'data-testid': 'order-id', title: hold.order.id }, shortId(hold.order.id)),
      ` · ${money(hold.order.totalCents)} paid`,
      ...(hold.order.createdAt ? [` · ${new Date(hold.order.createdAt).toLocaleString()}`] : []));
  }
  renderCountdown(hold, card);
  return card;
}

/** The countdown of a hold, on the server's clock (interpolated between the server's ticks). */
function renderCountdown(hold, card) {
  const countdown = $('hold-countdown', card);
  countdown.hidden = hold.status === 'CONFIRMED';
  if (hold.status !== 'ACTIVE') {
    countdown.textContent = '0:00';
    countdown.dataset.secondsLeft = '0';
    countdown.dataset.urgent = 'false';
    return;
  }
  const msLeft = hold.expiresAt - serverNow();
  const secondsLeft = Math.max(0, Math.floor(msLeft / 1000));
  const minutes = Math.floor(secondsLeft / 60);
  const text = `${minutes}:${String(secondsLeft % 60).padStart(2, '0')}`;
  if (countdown.textContent !== text) countdown.textContent = text;
  countdown.dataset.secondsLeft = String(secondsLeft);
  countdown.dataset.urgent = String(secondsLeft < 60);
  // Past its end the hold is over, but only the server says how: wait for its word.
  if (msLeft <= 0) $('hold-status', card).textContent = 'Ending…';
}

function tick() {
  const now = serverNow();
  for (const hold of state.holds.values()) {
    const card = state.cards.get(hold.id);
    if (card) renderCountdown(hold, card);
    // A hold still ACTIVE well past its end: its last event was missed, ask the server.
    if (hold.status === 'ACTIVE' && hold.expiresAt && now - hold.expiresAt > EXPIRY_RECHECK_MS
        && now - (hold.checkedAt ?? 0) > EXPIRY_RECHECK_MS) {
      hold.checkedAt = now;
      refreshHolds([hold.id]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Live: one WebSocket, graphql-transport-ws

function startLive() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  let pongTimer = null;
  let connections = 0;
  // Events of a client that stopLive() replaced are ignored (graphql-ws emits some at once,
  // inside createClient, hence a generation number rather than the client itself).
  const generation = (state.liveGeneration = (state.liveGeneration ?? 0) + 1);
  const current = () => generation === state.liveGeneration;
  state.client = createClient({
    url: `${scheme}://${location.host}/graphql`,
    connectionParams: () => (state.token ? { Authorization: `Bearer ${state.token}` } : {}),
    lazy: false,
    retryAttempts: Infinity,
    shouldRetry: () => true,
    // 0.5 s, 1 s, 2 s, ... at most 8 s, with jitter so that a restarted server is not stampeded.
    retryWait: (retries) => new Promise((resolve) =>
      setTimeout(resolve, Math.min(500 * 2 ** retries, 8000) * (0.75 + Math.random() / 2))),
    keepAlive: KEEP_ALIVE_MS,
    onNonLazyError: (error) => current() && !state.replacingToken
      && notify(`Live updates stopped (${error?.reason || error?.code || error}): reload the page.`, 'error'),
    on: {
      connecting: () => current() && showConnection(connections ? 'reconnecting' : 'connecting'),
      connected: () => {
        if (!current()) return;
        connections += 1;
        showConnection('live');
        // Whatever happened while the socket was down (a hold expired, stock moved, the
        // clock drifted) is read again; graphql-ws resubscribes the live streams by itself.
        resync();
      },
      closed: (event) => {
        clearTimeout(pongTimer);
        if (!current()) return;
        showConnection('reconnecting');
        // A refused `connection_init`: async-graphql closes with 1002 and the reason ("not
        // authenticated: ..."), other servers with 4401 or 4403.
        if (event?.code === 4401 || event?.code === 4403
            || /not authenticated|unauthori[sz]ed/i.test(event?.reason ?? '')) {
          tokenRejected();
        }
      },
      // A ping without its pong within PONG_TIMEOUT_MS: the socket is dead, reconnect.
      ping: (received) => {
        if (!received) {
          pongTimer = setTimeout(() => state.socket?.readyState === WebSocket.OPEN && state.socket.close(4408, 'Pong timeout'), PONG_TIMEOUT_MS);
        }
      },
      pong: (received) => {
        if (received) clearTimeout(pongTimer);
      },
      opened: (socket) => current() && (state.socket = socket),
    },
  });
  subscribeEvents();
  for (const hold of state.holds.values()) watchHold(hold.id);
}

function stopLive() {
  for (const key of [...state.subscriptions.keys()]) stopSubscription(key);
  state.client?.dispose();
  state.client = null;
  state.socket = null;
}

async function resync() {
  await Promise.allSettled([syncClock(), loadEvents()]);
  await refreshHolds();
}

function showConnection(status) {
  const badge = $('connection');
  badge.dataset.state = status;
  badge.textContent = { connecting: 'Connecting…', live: 'Live', reconnecting: 'Reconnecting…' }[status];
}

/** The stock of every event, for everyone. */
function subscribeEvents() {
  for (const eventId of state.events.keys()) {
    subscribe(`stock:${eventId}`, Q.availabilityChanged, { eventId },
      (data) => applyAvailability(data.availabilityChanged));
  }
  watchExpiries();
}

/**
 * Expiries of the events where the buyer has an active hold, and only those: a server allows a
 * connection a few dozen subscriptions (`--subscriptions-per-connection-max`, 32 by default).
 */
function watchExpiries() {
  if (!state.client || !state.token) return;
  const wanted = new Set();
  for (const hold of state.holds.values()) {
    if (hold.status === 'ACTIVE' && hold.eventId) wanted.add(hold.eventId);
  }
  for (const eventId of wanted) {
    subscribe(`expired:${eventId}`, Q.holdExpired, { eventId }, (data) => {
      const expired = data.holdExpired;
      // Only this buyer's holds matter (the server sends no others, but be sure).
      if (state.holds.has(expired.holdId)) upsertHold({ id: expired.holdId, status: 'EXPIRED', expiresAt: expired.expiresAt });
    });
  }
  for (const key of state.subscriptions.keys()) {
    if (key.startsWith('expired:') && !wanted.has(key.slice('expired:'.length))) stopSubscription(key);
  }
}

/** Follows an active hold's countdown until the server completes it with the final status. */
function watchHold(holdId) {
  const hold = state.holds.get(holdId);
  if (!hold || hold.status !== 'ACTIVE') return;
  subscribe(`countdown:${holdId}`, Q.holdCountdown, { holdId }, (data) => {
    const tick = data.holdCountdown;
    upsertHold({ id: tick.holdId, status: tick.status, expiresAt: tick.expiresAt });
  });
}

/** One subscription per key; graphql-ws resubscribes it by itself after a reconnect. */
function subscribe(key, query, variables, onData) {
  if (!state.client || state.subscriptions.has(key)) return;
  const dispose = state.client.subscribe({ query, variables }, {
    next: (result) => {
      if (result.data) onData(result.data);
      else if (result.errors?.length) console.warn(key, result.errors);
    },
    error: (error) => {
      state.subscriptions.delete(key);
      // GraphQL errors come as an array; a socket that cannot come back as a CloseEvent.
      const first = Array.isArray(error) ? toApiError(error[0]) : null;
      if (first && ['UNAUTHENTICATED', 'RATE_LIMITED', 'UNAVAILABLE'].includes(first.code)) {
        notify(describe(first), 'error');
      } else {
        console.warn(`subscription ${key} ended`, error);
      }
      // A countdown that failed leaves the hold to tick(), which asks the server at its end.
    },
    complete: () => state.subscriptions.delete(key),
  });
  state.subscriptions.set(key, dispose);
}

function stopSubscription(key) {
  state.subscriptions.get(key)?.();
  state.subscriptions.delete(key);
}

// ---------------------------------------------------------------------------------------------
// Small helpers

function notify(text, kind = 'info') {
  const notice = $('notice');
  $('notice-text').textContent = text;
  notice.dataset.kind = kind;
  notice.hidden = false;
}

function money(cents) {
  return new Intl.NumberFormat(undefined, { style: 'currency', currency: CURRENCY }).format(cents / 100);
}

function describeItems(items) {
  if (!items?.length) return 'tickets';
  return items.map(({ ticketTypeId, quantity }) =>
    `${quantity} × ${state.ticketTypes.get(ticketTypeId)?.name ?? 'ticket'}`).join(', ');
}

function totalCents(items) {
  let total = 0;
  for (const { ticketTypeId, quantity } of items ?? []) {
    const price = state.ticketTypes.get(ticketTypeId)?.priceCents;
    if (price == null) return null;
    total += price * quantity;
  }
  return items?.length ? total : null;
}

function shortId(id) {
  return id.slice(0, 8);
}

/** A UUID; `crypto.randomUUID` exists only on https and localhost, so fall back. */
function randomId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** A DOM element with attributes and children (strings or nodes). */
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}
