// GraphiQL at GET /graphql in Debian's Chromium with nothing beyond this machine reachable:
// it loads, runs a query over HTTP and a subscription over WebSocket, both authenticated by
// the Authorization header of its Headers tab.
import { gql, register, withBrowser, BASE } from "./lib.mjs";

const TIMEOUT = 15_000;

function graphiqlUrl(query, token) {
  const params = new URLSearchParams({ query, headers: JSON.stringify({ Authorization: `Bearer ${token}` }) });
  return `${BASE}/graphql#${params}`;
}

async function run(page) {
  await page.locator(".graphiql-execute-button").click();
}

function result(page) {
  return page.locator(".result-window");
}

const [alice, bob] = await Promise.all([register("alice"), register("bob")]);
await withBrowser(async ({ newPage }) => {
  const page = await newPage();

  // A query over HTTP, as bob.
  await page.goto(graphiqlUrl("{ me { username } }", bob.token));
  await page.locator(".graphiql-container").waitFor({ timeout: TIMEOUT });
  await run(page);
  await result(page).getByText(bob.username).waitFor({ timeout: TIMEOUT });

  // A subscription over WebSocket, as bob: a message alice sends over HTTP appears live.
  const subscription = "subscription { events { __typename ... on MessageEvent { message { body } } } }";
  const live = await newPage();
  await live.goto(graphiqlUrl(subscription, bob.token));
  await live.locator(".graphiql-container").waitFor({ timeout: TIMEOUT });
  const socket = live.waitForEvent("websocket", { timeout: TIMEOUT });
  await run(live);
  await (
    await socket
  ).waitForEvent("framereceived", {
    predicate: (frame) => String(frame.payload).includes("connection_ack"),
    timeout: TIMEOUT,
  });
  const { startDirectConversation: chat } = await gql(
    "mutation($u: ID!) { startDirectConversation(userId: $u) { id } }",
    { u: bob.id },
    alice.token,
  );
  await gql(
    'mutation($c: ID!) { sendMessage(input: { conversationId: $c, clientId: "g1", body: "hello from the other side" }) { id } }',
    { c: chat.id },
    alice.token,
  );
  await result(live).getByText("hello from the other side").waitFor({ timeout: TIMEOUT });
});
console.log("graphiql: a query and a subscription ran, nothing loaded from beyond this machine");
