// The buyer's page in headless Chromium, against a real tickethold server in dev mode:
//
//   node tests/browser/buyer-page.mjs <base-url> <screenshot-path>
//
// Creates its own event (one ticket type of 10 tickets) with an admin token from /dev/token,
// then, as buyer A: holds 2 and sees the countdown tick; holds 1 for 2 s and sees "Expired" at
// most 2 s after its expiresAt; pays and sees the order; releases a hold. Buyer B, whose clock
// is three hours wrong, holds 3 and still sees a 15-minute countdown, while A's page shows B's
// hold in the stock without reloading. A's network then drops while a hold of A's expires and
// B holds 2 more; once A is back, its page shows both. Last, A is told "Sold out: only N
// left" in plain words, and a screenshot of A's page is saved. Exits 0 on success, 1 with the
// failed step otherwise; always closes the browser. Needs `npm ci --prefix tests/browser` and
// Chromium (/usr/bin/chromium, or $CHROMIUM).

import {
  base, devToken, gql, launchChromium, log, current, runScript, screenshotPath, sleep, waitForText,
} from './harness.mjs';

// About 15 s alone; three runs at once on two busy cores took 37 s.
const TIMEOUT_MS = 90_000;
/** How late after its expiresAt a hold may be shown expired. */
const EXPIRED_SHOWN_WITHIN_MS = 2_000;
const CAPACITY = 10;
const PRICE_CENTS = 4500;
/** Buyer B's clock is this far behind the server's. */
const B_CLOCK_SKEW_MS = -3 * 3600_000;

await runScript('buyer-page.mjs', TIMEOUT_MS, main);

async function main() {
  current.step = 'create the event with an admin token';
  const admin = await devToken('admin', 'admin');
  const eventName = `Browser test ${new Date().toISOString().slice(11, 19)}`;
  const { createEvent } = await gql(admin, 'mutation($n: String!) { createEvent(input: {name: $n}) { id } }', { n: eventName });
  const { createTicketType } = await gql(admin,
    `mutation($e: ID!, $c: Int!, $p: Int!) { createTicketType(input: {eventId: $e, name: "General admission",
       priceCents: $p, capacity: $c}) { id } }`,
    { e: createEvent.id, c: CAPACITY, p: PRICE_CENTS });
  const ticketTypeId = createTicketType.id;
  log(`event ${createEvent.id}, ticket type ${ticketTypeId} (${CAPACITY} tickets)`);

  current.step = 'launch Chromium';
  const browser = await launchChromium();

  current.step = 'buyer A opens the page';
  const contextA = await browser.newContext({ viewport: { width: 1100, height: 820 } });
  const network = await controlNetwork(contextA);
  const a = await openPage(contextA, 'A', network);
  const rowA = a.locator(`[data-ticket-type-id="${ticketTypeId}"]`);
  await waitForText(rowA.getByTestId('availability'), `${CAPACITY} of ${CAPACITY} left`);
  const whoA = await a.getByTestId('whoami').textContent();
  if (!/buyer-/.test(whoA)) throw new Error(`the page does not say who the buyer is: "${whoA}"`);
  log(`A: ${whoA}`);

  current.step = 'A holds 2 tickets with the default TTL and sees the countdown tick';
  const first = await hold(a, ticketTypeId, 2, '');
  const countdown = first.getByTestId('hold-countdown');
  const secondsAtFirst = Number(await countdown.getAttribute('data-seconds-left'));
  if (!(secondsAtFirst > 880 && secondsAtFirst <= 900)) {
    throw new Error(`a new 15-minute hold shows ${secondsAtFirst} s left`);
  }
  await a.waitForFunction(
    ([el, from]) => Number(el.dataset.secondsLeft) < from && el.textContent.includes(':'),
    [await countdown.elementHandle(), secondsAtFirst], { timeout: 4000 });
  log(`A: countdown went from ${secondsAtFirst} s to ${await countdown.textContent()}`);
  await waitForText(rowA.getByTestId('availability'), `${CAPACITY - 2} of ${CAPACITY} left`);

  current.step = 'A holds 1 ticket for 2 s and sees it expire on time';
  const short = await hold(a, ticketTypeId, 1, '2');
  const expiresAt = Date.parse(await short.getAttribute('data-expires-at'));
  // Timed in the page, at each animation frame: Playwright's own polling backs off to 500 ms.
  const shownAt = await (await a.waitForFunction(
    (el) => /expired/i.test(el.textContent) && Date.now(),
    await short.getByTestId('hold-status').elementHandle(),
    { polling: 'raf', timeout: expiresAt - Date.now() + 5000 })).jsonValue();
  log(`A: "Expired" shown ${shownAt - expiresAt} ms after expiresAt`);
  if (shownAt > expiresAt + EXPIRED_SHOWN_WITHIN_MS) {
    throw new Error(`"Expired" appeared ${shownAt - expiresAt} ms after expiresAt (limit ${EXPIRED_SHOWN_WITHIN_MS} ms)`);
  }
  if (shownAt < expiresAt - 100) throw new Error(`"Expired" appeared ${expiresAt - shownAt} ms before expiresAt`);
  await waitForText(rowA.getByTestId('availability'), `${CAPACITY - 2} of ${CAPACITY} left`);

  current.step = 'A pays the first hold and sees the order';
  await first.getByTestId('pay').click();
  const order = first.getByTestId('order-summary');
  await order.waitFor({ state: 'visible', timeout: 5000 });
  const orderId = await order.getAttribute('data-order-id');
  const orderText = await order.textContent();
  if (!orderId || !orderText.includes(orderId.slice(0, 8)) || !orderText.includes('90.00')) {
    throw new Error(`the order summary does not show the order id and total: "${orderText}"`);
  }
  await waitForText(first.getByTestId('hold-status'), 'Paid');
  log(`A: ${orderText.trim()}`);

  current.step = 'A holds 1 ticket and releases it';
  const released = await hold(a, ticketTypeId, 1, '');
  await waitForText(rowA.getByTestId('availability'), `${CAPACITY - 3} of ${CAPACITY} left`);
  await released.getByTestId('release').click();
  await waitForText(released.getByTestId('hold-status'), 'Released');
  await waitForText(rowA.getByTestId('availability'), `${CAPACITY - 2} of ${CAPACITY} left`);

  current.step = 'buyer B, with a clock 3 hours wrong, holds 3 tickets; A sees the stock change';
  const contextB = await browser.newContext({ viewport: { width: 1100, height: 820 } });
  await contextB.clock.install({ time: Date.now() + B_CLOCK_SKEW_MS });
  const b = await openPage(contextB, 'B');
  const whoB = await b.getByTestId('whoami').textContent();
  if (whoB === whoA) throw new Error(`A and B are the same buyer: ${whoA}`);
  const offsetB = Number(await b.evaluate(() => document.body.dataset.clockOffsetMs));
  if (Math.abs(offsetB + B_CLOCK_SKEW_MS) > 60_000) {
    throw new Error(`B's clock is ${-B_CLOCK_SKEW_MS} ms behind, the page measured an offset of ${offsetB} ms`);
  }
  const heldByB = await hold(b, ticketTypeId, 3, '');
  const secondsB = Number(await heldByB.getByTestId('hold-countdown').getAttribute('data-seconds-left'));
  if (!(secondsB > 880 && secondsB <= 900)) {
    throw new Error(`B's clock is 3 h off and its 15-minute hold shows ${secondsB} s left: the page does not correct the clock`);
  }
  log(`B: ${whoB}, hold counts down from ${secondsB} s despite its clock`);
  await waitForText(rowA.getByTestId('availability'), `${CAPACITY - 5} of ${CAPACITY} left`);
  log('A: sees B\'s hold in the stock, without reloading');

  current.step = 'A is cut off while its hold expires and B holds 2 more; back online, A sees both';
  const lapsing = await hold(a, ticketTypeId, 1, '2');
  await waitForText(rowA.getByTestId('availability'), `${CAPACITY - 6} of ${CAPACITY} left`);
  const lapsesAt = Date.parse(await lapsing.getAttribute('data-expires-at'));
  await network.drop();
  await waitForText(a.getByTestId('connection'), 'Reconnecting');
  await hold(b, ticketTypeId, 2, '');
  await sleep(lapsesAt + 1000 - Date.now());
  if (/expired/i.test(await lapsing.getByTestId('hold-status').textContent())) {
    throw new Error('the page learnt of the expiry while it was offline: the test is broken');
  }
  await network.restore();
  await waitForText(a.getByTestId('connection'), 'Live', 15_000);
  const backAt = Date.now();
  await waitForText(lapsing.getByTestId('hold-status'), 'Expired', 2000);
  await waitForText(rowA.getByTestId('availability'), `${CAPACITY - 7} of ${CAPACITY} left`, 2000);
  log(`A: back online after ${((backAt - lapsesAt) / 1000).toFixed(1)} s past the expiry, shows it expired and B's new hold`);

  current.step = 'A holds 1 more and asks for more than is left: told in plain words';
  await hold(a, ticketTypeId, 1, '');
  await waitForText(rowA.getByTestId('availability'), `${CAPACITY - 8} of ${CAPACITY} left`);
  await hold(a, ticketTypeId, CAPACITY, '', { expectError: true });
  const notice = a.getByTestId('notice');
  await waitForText(notice, `Sold out: only ${CAPACITY - 8} left`);
  log(`A: "${(await a.getByTestId('notice-text').textContent()).trim()}"`);

  current.step = 'save the screenshot';
  await a.evaluate(() => window.scrollTo(0, 0));
  await a.screenshot({ path: screenshotPath, fullPage: true });
  log(`screenshot: ${screenshotPath}`);
}



async function openPage(context, name, network = { offline: false }) {
  const page = await context.newPage();
  page.on('pageerror', (error) => console.error(`${name}: page error: ${error.message}`));
  page.on('console', (message) => {
    // Failed requests while the test holds the network down are expected.
    if (message.type() === 'error' && !network.offline) console.error(`${name}: console: ${message.text()}`);
  });
  await page.goto(`${base}/`);
  await page.getByTestId('connection').filter({ hasText: 'Live' }).waitFor({ timeout: 10_000 });
  return page;
}

/**
 * Sets the TTL and quantity, presses Hold, and returns the new hold's card (or, with
 * `expectError`, waits for the error notice).
 */
async function hold(page, ticketTypeId, quantity, ttl, { expectError = false } = {}) {
  const row = page.locator(`[data-ticket-type-id="${ticketTypeId}"]`);
  const before = await page.getByTestId('hold').evaluateAll((cards) => cards.map((card) => card.dataset.holdId));
  // A notice left from before must not pass for this click's answer.
  if (await page.getByTestId('notice').isVisible()) await page.getByTestId('notice-close').click();
  await page.getByTestId('ttl').selectOption(ttl);
  await row.getByTestId('quantity').fill(String(quantity));
  await row.getByTestId('hold-button').click();
  if (expectError) {
    await page.locator('[data-testid="notice"][data-kind="error"]').waitFor({ timeout: 5000 });
    return null;
  }
  const fresh = page.locator(`[data-testid="hold"]${before.map((id) => `:not([data-hold-id="${id}"])`).join('')}`);
  await fresh.waitFor({ timeout: 5000 });
  return page.locator(`[data-hold-id="${await fresh.getAttribute('data-hold-id')}"]`);
}

/**
 * Routes the context's GraphQL traffic through the test, which can cut it: `drop()` closes the
 * page's WebSockets and refuses new ones and every POST /graphql until `restore()`.
 */
async function controlNetwork(context) {
  const network = { offline: false, sockets: new Set() };
  await context.routeWebSocket(/\/graphql$/, (ws) => {
    if (network.offline) {
      ws.close({ code: 1012, reason: 'test: network down' });
      return;
    }
    const server = ws.connectToServer();
    const socket = { ws, server };
    network.sockets.add(socket);
    ws.onClose(() => network.sockets.delete(socket));
  });
  await context.route(/\/graphql$/, (route) => (network.offline ? route.abort('internetdisconnected') : route.continue()));
  network.drop = async () => {
    network.offline = true;
    for (const { ws, server } of network.sockets) {
      await ws.close({ code: 1012, reason: 'test: network down' });
      await server.close();
    }
    network.sockets.clear();
  };
  network.restore = async () => {
    network.offline = false;
  };
  return network;
}


