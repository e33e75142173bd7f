// What the browser scripts share: their two arguments (`<base-url> <screenshot-path>`), a log
// with elapsed seconds, the step being run (named in the failure), a watchdog, Chromium from
// Debian's package (or $CHROMIUM), always closed, and the server's dev tokens and GraphQL over
// HTTP for the setup.

import { chromium } from 'playwright-core';

export const [base, screenshotPath] = process.argv.slice(2);

/** The step now running (set by the script, named when it fails) and the browser to close. */
export const current = { step: 'starting', browser: null };

const started = Date.now();
export const log = (message) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${message}`);

/** Runs `main` within `timeoutMs`; exits 0 when it passes, 1 with the failed step otherwise. */
export async function runScript(name, timeoutMs, main) {
  if (!base || !screenshotPath) {
    console.error(`usage: node tests/browser/${name} <base-url> <screenshot-path>`);
    process.exit(2);
  }
  const fail = async (error) => {
    clearTimeout(watchdog);
    console.error(`FAILED at step "${current.step}": ${error?.message ?? error}`);
    // A browser that hangs on close must not hang the test.
    await Promise.race([current.browser?.close(), sleep(5000)]).catch(() => {});
    process.exit(1);
  };
  const watchdog = setTimeout(() => fail(new Error(`timed out after ${timeoutMs / 1000}s`)), timeoutMs);
  try {
    await main();
    clearTimeout(watchdog);
    await current.browser?.close();
    log('ok: every step passed');
    process.exit(0);
  } catch (error) {
    await fail(error);
  }
}

/** Starts headless Chromium (closed by `runScript` whatever happens). */
export async function launchChromium() {
  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
  try {
    current.browser = await chromium.launch({ executablePath, args: ['--no-sandbox'] });
  } catch (error) {
    throw new Error(`cannot start ${executablePath} (apt-get install -y chromium, or set CHROMIUM): ${error.message}`);
  }
  return current.browser;
}

export async function devToken(role, sub) {
  const url = `${base}/dev/token?role=${role}&sub=${encodeURIComponent(sub)}`;
  const response = await fetch(url);
  if (response.status === 404) {
    throw new Error(`GET /dev/token answered 404: start the server in dev mode (--dev or TICKETHOLD_DEV=1)`);
  }
  if (!response.ok) throw new Error(`GET ${url}: HTTP ${response.status}`);
  return (await response.json()).token;
}

export async function gql(token, query, variables) {
  const response = await fetch(`${base}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
    body: JSON.stringify({ query, variables }),
  });
  const body = await response.json();
  if (body.errors?.length) throw new Error(`GraphQL error: ${JSON.stringify(body.errors[0])}`);
  return body.data;
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}

/** Waits until `locator`'s text contains `text`; the error tells what it showed instead. */
export async function waitForText(locator, text, timeout = 5000) {
  try {
    await locator.filter({ hasText: text }).waitFor({ timeout });
  } catch {
    const shown = await locator.textContent({ timeout: 1000 }).catch(() => '(nothing)');
    throw new Error(`expected "${text}", the page shows "${shown?.trim()}"`);
  }
}
