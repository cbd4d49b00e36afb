// Drives Swagger UI in headless Chromium as a person would: Authorize with a bearer token, then
// "Try it out" on a protected operation and read the status it shows.
//
//   node authorize.mjs <docs URL> <token or ""> <user id>
//
// Prints the status code Swagger UI displays for GET /v1/users/{id}.
import { chromium } from "playwright-core";

const [url, token, userId] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
try {
  const page = await browser.newPage();
  await page.goto(url);
  if (token) {
    await page.click("button.authorize");
    await page.fill(".modal-ux input", token);
    await page.click(".modal-ux .auth-btn-wrapper button.authorize");
    await page.click(".modal-ux button.btn-done");
  }
  const operation = page.locator("#operations-Users-getUser");
  await operation.locator(".opblock-summary").click();
  await operation.locator("button.try-out__btn").click();
  await operation.locator("tr[data-param-name='id'] input").fill(userId);
  await operation.locator("button.execute").click();
  const status = operation.locator(".live-responses-table .response .response-col_status").first();
  await status.waitFor({ timeout: 10_000 });
  console.log((await status.innerText()).trim());
} finally {
  await browser.close();
}
