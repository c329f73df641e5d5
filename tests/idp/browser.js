// Drives devicegate's verification page in a real headless Chromium (Debian's `chromium`,
// through playwright-core), as a person on a phone would.
//
//   node browser.js '<json>'
// with the JSON fields:
//   url          the page to open (verification_uri or verification_uri_complete)
//   user_code    typed into the form when it is not prefilled (optional)
//   retry_code   if submitting the code shows the code form again (an error), type this one
//                and submit again (optional)
//   sign_in_first  true: the first code entry meets the sign-in page (everyone's wrong-code
//                budget spent): sign in at the IdP, then enter user_code again
//   action       "approve" | "deny" | "lookup" (stop at the consent page) | "enter" (stop after
//                submitting the code) | "open" (stop at the first page)
//   username     the user name to log in with at the IdP (approve only)
//   idp_action   "login" (default) | "abort" (cancel at the IdP's login page) | "none" (the IdP
//                is not expected: stop at whatever page Approve leads to)
//   locale       the browser's language, e.g. "de-DE" (sets Accept-Language)
//   owned_prefix the path prefix of devicegate's pages (default /device): only those are checked
//                with axe
//   axe          true: check every devicegate page with axe-core (WCAG 2.1 A/AA rules: labels,
//                contrast, landmarks, language...) and report the violations
//   screenshots  a directory to save a PNG of every page in (optional)
//
// Prints one JSON line: {url, status, title, text, lang, dir, prefilled, pages: [...], axe: [...]},
// where text is the final page's visible text, dir its writing direction, prefilled the code
// the first page's form held, and each axe entry is {page, id, impact, help, nodes}.
// Exits non-zero only when the browser itself failed.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

const args = JSON.parse(process.argv[2] || '{}');
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
if (!fs.existsSync(executablePath)) {
  console.error(`Chromium not found at ${executablePath}: install Debian's chromium package (apt-get install chromium)`);
  process.exit(3);
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const pages = [];
const axeViolations = [];
const axeSource = args.axe ? fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8') : null;
const gatewayOrigin = new URL(args.url).origin;
let shot = 0;
let current = null;
const problems = [];
try {
  const context = await browser.newContext({
    viewport: { width: 390, height: 844 },
    ...(args.locale ? { locale: args.locale } : {}),
  });
  const page = await context.newPage();
  current = page;
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
  page.on('requestfailed', (r) => problems.push(`failed: ${r.url()} ${r.failure()?.errorText}`));
  page.on('response', (r) => { if (r.status() >= 400) problems.push(`${r.status()}: ${r.url()}`); });
  page.setDefaultTimeout(15000);
  let lastStatus = 0;
  page.on('response', (r) => { if (r.request().isNavigationRequest()) lastStatus = r.status(); });
  const snap = async (name) => {
    pages.push({ name, url: page.url(), title: await page.title(), status: lastStatus });
    // Only devicegate's own pages (the IdP's login pages share the origin but are not ours).
    const ours = page.url().startsWith(gatewayOrigin)
      && new URL(page.url()).pathname.startsWith(args.owned_prefix || '/device');
    if (axeSource && ours) {
      // Evaluated through the DevTools protocol, so the pages' CSP (no scripts) stays on.
      await page.evaluate(axeSource);
      const result = await page.evaluate(() => window.axe.run(document, {
        runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] },
      }));
      for (const v of result.violations) {
        axeViolations.push({ page: name, id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(' ')) });
      }
    }
    if (args.screenshots) {
      fs.mkdirSync(args.screenshots, { recursive: true });
      shot += 1;
      await page.screenshot({ path: path.join(args.screenshots, `${String(shot).padStart(2, '0')}-${name}.png`), fullPage: true });
    }
  };

  await page.goto(args.url);
  await snap('enter');
  const field = page.locator('input[name=user_code]');
  const prefilled = await field.count() > 0 ? await field.inputValue() : null;
  // The pages' own buttons, in whatever language: the code form has one submit button, the
  // consent form "approve" and "deny".
  const submitCode = async (code) => {
    if (code !== undefined) {
      await page.locator('input[name=user_code]').fill(code);
    }
    await page.locator('form button[type=submit]').first().click();
    await page.waitForLoadState();
  };
  // oidc-provider's development login page, then (for offline_access) its consent page, until
  // the browser is back on devicegate's pages (an IdP session may skip the login).
  // Glewlwyd's login web app (a script page at /login.html): user name and password, then its
  // consent screen (tick every scope, "Grant access"), then "Continue" back to the client.
  const glewlwydLogin = async () => {
    await page.locator('#password').or(page.getByRole('button', { name: 'Continue' })).first().waitFor();
    if (await page.locator('#password').count() > 0) {
      await snap('idp-login');
      await page.fill('#username', args.username || 'alice');
      await page.fill('#password', 'password');
      await page.locator('#password').press('Enter');
    }
    const grant = page.getByRole('button', { name: 'Grant access' });
    const next = page.getByRole('button', { name: 'Continue' });
    await grant.or(next).first().waitFor();
    if (await grant.count() > 0 && await grant.isVisible()) {
      await snap('idp-consent');
      for (const box of await page.locator('input[type=checkbox]').all()) {
        if (!(await box.isChecked())) await box.check();
      }
      await grant.click();
    }
    await next.click();
    await page.waitForURL((u) => u.pathname.startsWith('/device'));
    await page.waitForLoadState();
  };
  const idpLogin = async () => {
    for (let i = 0; i < 6 && !new URL(page.url()).pathname.startsWith('/device'); i += 1) {
      if (new URL(page.url()).pathname.endsWith('/login.html')) {
        await glewlwydLogin();
        break;
      }
      if (await page.locator('input[name=login]').count() > 0) {
        await snap('idp-login');
        if (args.idp_action === 'abort') {
          await page.getByRole('link', { name: /Cancel/i }).click();
          await page.waitForLoadState();
          return;
        }
        await page.fill('input[name=login]', args.username || 'alice');
        await page.fill('input[name=password]', 'any-password');
        await page.locator('button[type=submit]').click();
      } else {
        const consent = page.locator('button[type=submit]');
        if (await consent.count() === 0) break;
        await snap('idp-consent');
        await consent.first().click();
      }
      await page.waitForLoadState();
    }
  };
  if (args.action !== 'open') {
    await submitCode(args.user_code);
    await snap('after-enter');
    if (args.sign_in_first) {
      // Everyone's wrong-code budget is spent: sign in at the IdP, then enter the code again.
      await page.locator('input[name=action][value=signin]').locator('xpath=..').locator('button').click();
      await page.waitForLoadState();
      await idpLogin();
      await snap('signed-in');
      await submitCode(args.user_code);
      await snap('after-sign-in');
    }
    if (args.retry_code !== undefined && await page.locator('input[name=user_code]').count() > 0) {
      await submitCode(args.retry_code);
      await snap('after-retry');
    }
  }
  if (args.action === 'approve' || args.action === 'deny') {
    await page.locator(`button[name=action][value=${args.action}]`).click();
    await page.waitForLoadState();
    if (args.action === 'approve' && args.idp_action !== 'none') {
      await page.locator('input[name=login]').or(page.locator('[data-outcome]'))
        .or(page.locator('#username')).first().waitFor();
      await idpLogin();
    }
    await snap('result');
  }
  const text = await page.locator('body').innerText();
  const lang = await page.locator('html').getAttribute('lang');
  const dir = await page.locator('html').getAttribute('dir');
  console.log(JSON.stringify({
    url: page.url(), status: lastStatus, title: await page.title(), text, lang, dir, prefilled, pages, axe: axeViolations,
  }));
} catch (e) {
  // Where the browser was when it failed: its address, and a screenshot beside the others.
  if (current) {
    console.error(`the browser was at ${current.url()}`);
    for (const p of problems.slice(-20)) console.error(`  ${p}`);
    if (args.screenshots) {
      await current.screenshot({ path: path.join(args.screenshots, 'failure.png'), fullPage: true }).catch(() => {});
    }
  }
  throw e;
} finally {
  await browser.close();
}
