// Helpers shared by the browser tests: Parley over HTTP from Node, and Debian's Chromium
// launched by playwright-core with every request beyond this machine refused.
import { existsSync } from "node:fs";
import { chromium } from "playwright-core";

export const BASE = process.env.PARLEY_URL ?? "http://127.0.0.1:8000";
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

/** One GraphQL request over HTTP; throws on GraphQL errors. */
export async function gql(query, variables = {}, token) {
  const response = await fetch(`${BASE}/graphql`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({ query, variables }),
  });
  const body = await response.json();
  if (body.errors) throw new Error(`${query.slice(0, 40)}…: ${JSON.stringify(body.errors)}`);
  return body.data;
}

/** A new user with a unique name: `{ token, id, username }`. */
export async function register(name, password = "correct horse battery") {
  const username = `${name}${Math.random().toString(36).slice(2, 8)}`;
  const data = await gql(
    "mutation($u: String!, $p: String!, $d: String) { register(username: $u, password: $p, displayName: $d) { token user { id } } }",
    { u: username, p: password, d: name },
  );
  return { token: data.register.token, id: data.register.user.id, username, password };
}

const LOCAL_HOSTS = new Set(["127.0.0.1", "localhost", "[::1]"]);

/**
 * Debian's Chromium, headless. Every request (HTTP or WebSocket) to anything but this machine
 * is aborted and recorded in `offsite`; console errors (CSP violations among them) and page
 * errors are recorded in `problems`. The caller fails the test when either is not empty.
 */
export async function launch() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: apt-get install chromium (the browser tests never download a browser)`);
  }
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
  const offsite = [];
  const problems = [];
  async function newPage() {
    const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
    context.setDefaultTimeout(15_000);
    await context.route("**/*", (route) => {
      const url = new URL(route.request().url());
      if (url.protocol === "data:" || url.protocol === "blob:" || LOCAL_HOSTS.has(url.hostname))
        return route.continue();
      offsite.push(url.href);
      return route.abort("blockedbyclient");
    });
    await context.routeWebSocket(/.*/, (ws) => {
      const url = new URL(ws.url());
      if (LOCAL_HOSTS.has(url.hostname)) {
        ws.connectToServer();
      } else {
        offsite.push(url.href);
        ws.close();
      }
    });
    const page = await context.newPage();
    page.on("console", (message) => {
      if (message.type() === "error") problems.push(`console: ${message.text()}`);
    });
    page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
    return page;
  }
  function check() {
    if (offsite.length) throw new Error(`the page tried to reach beyond this machine: ${offsite.join(", ")}`);
    if (problems.length) throw new Error(`errors in the page:\n${problems.join("\n")}`);
  }
  return { browser, newPage, check, problems, offsite };
}

/** Runs `test` with a launched browser; a failure also shows what went wrong in the pages. */
export async function withBrowser(test) {
  const session = await launch();
  try {
    await test(session);
    session.check();
  } catch (error) {
    const seen = [...session.offsite.map((url) => `blocked: ${url}`), ...session.problems];
    if (!seen.length) throw error;
    throw new Error(`${error.message}\nin the pages:\n${seen.join("\n")}`, { cause: error });
  } finally {
    await session.browser.close();
  }
}
