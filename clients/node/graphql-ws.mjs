// graphql-ws (graphql-transport-ws): two users chat live, with receipts, then a reconnect that
// replays what was missed with events(after:).
import { createClient } from "graphql-ws";
import WebSocket from "ws";
import {
  EVENTS, Inbox, WS_URL, acknowledge, check, isMessage, isReceipt, main, markRead, register, send, startChat,
} from "./common.mjs";

function connect(person, { headersShape = false } = {}) {
  const authorization = `Bearer ${person.token}`;
  return createClient({
    url: WS_URL,
    webSocketImpl: WebSocket,
    // Some clients nest their headers: the server accepts both shapes.
    connectionParams: headersShape ? { headers: { Authorization: authorization } } : { authorization },
    retryAttempts: 0,
  });
}

function listen(client, variables = {}) {
  const inbox = new Inbox();
  const dispose = client.subscribe(
    { query: EVENTS, variables },
    {
      next: (result) => inbox.push(result.errors ? { __typename: "Error", errors: result.errors } : result.data.events),
      error: (error) => inbox.push({ __typename: "Error", errors: [String(error?.reason ?? error)] }),
      complete: () => {},
    },
  );
  return { inbox, dispose };
}

main(async () => {
  const alice = await register("alice");
  const bob = await register("bob");
  const chat = await startChat(alice, bob);
  const aliceClient = connect(alice);
  const bobClient = connect(bob, { headersShape: true });
  const aliceEvents = listen(aliceClient);
  const bobEvents = listen(bobClient);

  const hello = await send(alice, chat, "hello bob");
  const received = await bobEvents.inbox.next(isMessage("hello bob"));
  check(received.message.id === hello.id, "bob received another message");
  await acknowledge(bob, received.cursor);
  await aliceEvents.inbox.next(isReceipt("DELIVERED", hello.id));
  await markRead(bob, chat, hello.id);
  await aliceEvents.inbox.next(isReceipt("READ", hello.id));

  // Bob goes away; Alice writes twice; Bob comes back and resumes after his last cursor.
  bobEvents.dispose();
  await bobClient.dispose();
  await send(alice, chat, "while away 1");
  await send(alice, chat, "while away 2");
  const again = connect(bob);
  const resumed = listen(again, { after: received.cursor });
  const first = await resumed.inbox.next((event) => event.__typename === "MessageEvent");
  const second = await resumed.inbox.next((event) => event.__typename === "MessageEvent");
  const replayed = [first.message.body, second.message.body];
  check(JSON.stringify(replayed) === JSON.stringify(["while away 1", "while away 2"]), `replayed ${replayed}`);

  resumed.dispose();
  aliceEvents.dispose();
  await Promise.all([again.dispose(), aliceClient.dispose()]);
  return { delivered: true, read: true, replayed };
});
