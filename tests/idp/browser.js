// Drives devicegate's verification page in a real headless Chromium (Debian's `chromium`,
// through playwright-core), as a person on a phone would.
//
//   node browser.js '<json>'
// with the JSON fields:
//   url          the page to open (verification_uri or verification_uri_complete)
//   user_code    typed into the form when it is not prefilled (optional)
//   action       "approve" | "deny" | "lookup" (stop at the consent page) | "enter" (stop after
//                submitting the code)
//   username     the user name to log in with at the IdP (approve only)
//   idp_action   "login" (default) | "abort" (cancel at the IdP's login page)
//   screenshots  a directory to save a PNG of every page in (optional)
//
// Prints one JSON line: {url, status, title, text, pages: [...]}, where text is the final page's
// visible text. Exits non-zero only when the browser itself failed.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';

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
let shot = 0;
try {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  let lastStatus = 0;
  page.on('response', (r) => { if (r.request().isNavigationRequest()) lastStatus = r.status(); });
  const snap = async (name) => {
    pages.push({ name, url: page.url(), title: await page.title() });
    if (args.screenshots) {
      fs.mkdirSync(args.screenshots, { recursive: true });
      shot += 1;
      await page.screenshot({ path: path.join(args.screenshots, `${String(shot).padStart(2, '0')}-${name}.png`), fullPage: true });
    }
  };

  await page.goto(args.url);
  await snap('enter');
  const input = page.locator('input[name=user_code]');
  if (args.user_code !== undefined) {
    await input.fill(args.user_code);
  }
  await page.getByRole('button', { name: 'Continue' }).click();
  await page.waitForLoadState();
  await snap('after-enter');
  if (args.action === 'approve' || args.action === 'deny') {
    const name = args.action === 'approve' ? /Approve/ : /Deny/;
    await page.getByRole('button', { name }).click();
    await page.waitForLoadState();
    if (args.action === 'approve') {
      // oidc-provider's development login page, then (for offline_access) its consent page.
      await page.locator('input[name=login]').waitFor();
      await snap('idp-login');
      if (args.idp_action === 'abort') {
        await page.getByRole('link', { name: /Cancel/i }).click();
      } else {
        await page.fill('input[name=login]', args.username || 'alice');
        await page.fill('input[name=password]', 'any-password');
        await page.locator('button[type=submit]').click();
        await page.waitForLoadState();
        for (let i = 0; i < 3 && !page.url().includes('/device'); i += 1) {
          const consent = page.locator('button[type=submit]');
          if (await consent.count() === 0) break;
          await snap('idp-consent');
          await consent.first().click();
          await page.waitForLoadState();
        }
      }
    }
    await snap('result');
  }
  const text = await page.locator('body').innerText();
  console.log(JSON.stringify({ url: page.url(), status: lastStatus, title: await page.title(), text, pages }));
} finally {
  await browser.close();
}
