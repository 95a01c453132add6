// Shared by the client scripts: the server's URLs, plain-fetch GraphQL calls, and small checks.
// Each script takes the server's base URL as its first argument (http://127.0.0.1:PORT) and
// exits non-zero with a message on stderr when what it checks does not hold.
import { randomUUID } from "node:crypto";

export const BASE = process.argv[2];
if (!BASE) {
  console.error("usage: node <script>.mjs http://127.0.0.1:PORT");
  process.exit(2);
}
export const HTTP_URL = `${BASE}/graphql`;
export const WS_URL = HTTP_URL.replace(/^http/, "ws");
export const PASSWORD = "correct horse battery";

export const EVENT_FIELDS = `
  __typename
  ... on MessageEvent { cursor message { id body conversationId sender { id } } }
  ... on ReceiptEvent { cursor receipt { messageId status user { id } } }
  ... on ConversationEvent { cursor change }
  ... on TypingEvent { conversationId typing }
`;
export const EVENTS = `subscription Events($after: String) { events(after: $after) { ${EVENT_FIELDS} } }`;

/** One GraphQL request over HTTP with fetch; throws on errors. */
export async function gql(query, variables = {}, token = null) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(HTTP_URL, { method: "POST", headers, body: JSON.stringify({ query, variables }) });
  const body = await response.json();
  if (body.errors) throw new Error(`GraphQL errors: ${JSON.stringify(body.errors)}`);
  return body.data;
}

/** A new user on a new device: { token, userId, username }. */
export async function register(name) {
  const username = `${name}_${randomUUID().slice(0, 8)}`;
  const data = await gql(
    "mutation R($u: String!, $p: String!) { register(username: $u, password: $p, deviceName: \"node\") { token user { id } } }",
    { u: username, p: PASSWORD },
  );
  return { token: data.register.token, userId: data.register.user.id, username };
}

export async function startChat(from, to) {
  const data = await gql(
    "mutation D($u: ID!) { startDirectConversation(userId: $u) { id } }",
    { u: to.userId },
    from.token,
  );
  return data.startDirectConversation.id;
}

export const SEND = "mutation S($input: SendMessageInput!) { sendMessage(input: $input) { id body } }";
export const sendInput = (conversationId, body) => ({ input: { conversationId, clientId: randomUUID(), body } });

export async function send(from, conversationId, body) {
  return (await gql(SEND, sendInput(conversationId, body), from.token)).sendMessage;
}

export async function acknowledge(person, cursor) {
  await gql("mutation A($c: String!) { acknowledge(cursor: $c) }", { c: cursor }, person.token);
}

export async function markRead(person, conversationId, messageId) {
  await gql(
    "mutation M($c: ID!, $m: [ID!]!) { markRead(conversationId: $c, messageIds: $m) }",
    { c: conversationId, m: [messageId] },
    person.token,
  );
}

/** Events pushed by a subscription, read in order with `next(predicate)`. */
export class Inbox {
  constructor() {
    this.items = [];
    this.waiters = [];
  }
  push(item) {
    this.items.push(item);
    for (const wake of this.waiters.splice(0)) wake();
  }
  async next(predicate = () => true, timeoutMs = 10000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const index = this.items.findIndex(predicate);
      if (index >= 0) return this.items.splice(0, index + 1).at(-1);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for an event; got ${JSON.stringify(this.items)}`);
      await new Promise((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, left);
      });
    }
  }
}

export const isMessage = (body) => (event) => event.__typename === "MessageEvent" && event.message.body === body;
export const isReceipt = (status, messageId) => (event) =>
  event.__typename === "ReceiptEvent" && event.receipt.status === status && event.receipt.messageId === messageId;

export function check(condition, message) {
  if (!condition) throw new Error(message);
}

/** Runs the scenario; prints its summary (one JSON line) and exits 0, or prints the failure and exits 1. */
export function main(scenario) {
  const timer = setTimeout(() => {
    console.error("scenario timed out after 45 s");
    process.exit(1);
  }, 45000);
  scenario().then(
    (summary) => {
      clearTimeout(timer);
      console.log(JSON.stringify(summary ?? { ok: true }));
      process.exit(0);
    },
    (error) => {
      console.error(error?.stack ?? String(error));
      process.exit(1);
    },
  );
}
