// The legacy subscriptions-transport-ws protocol (graphql-ws subprotocol): old Apollo clients,
// and Apollo Kotlin's default, receive live events.
import { SubscriptionClient } from "subscriptions-transport-ws";
import WebSocket from "ws";
import { EVENTS, Inbox, WS_URL, isMessage, main, register, send, startChat } from "./common.mjs";

main(async () => {
  const alice = await register("alice");
  const bob = await register("bob");
  const chat = await startChat(alice, bob);
  const client = new SubscriptionClient(
    WS_URL,
    { reconnect: false, connectionParams: { authorization: `Bearer ${bob.token}` } },
    WebSocket,
  );
  const inbox = new Inbox();
  const subscription = client.request({ query: EVENTS }).subscribe({
    next: (result) => inbox.push(result.errors ? { __typename: "Error", errors: result.errors } : result.data.events),
    error: (error) => inbox.push({ __typename: "Error", errors: [String(error)] }),
  });
  const sent = await send(alice, chat, "hello legacy");
  const received = await inbox.next(isMessage("hello legacy"));
  subscription.unsubscribe();
  client.close();
  return { received: received.message.id === sent.id };
});
