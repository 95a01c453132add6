// graphql-sse in its "distinct connections" mode: one POST per operation, Accept: text/event-stream.
import { createClient } from "graphql-sse";
import { EVENTS, HTTP_URL, Inbox, isMessage, main, register, send, startChat } from "./common.mjs";

main(async () => {
  const alice = await register("alice");
  const bob = await register("bob");
  const chat = await startChat(alice, bob);
  const client = createClient({ url: HTTP_URL, headers: { authorization: `Bearer ${bob.token}` }, retryAttempts: 0 });
  const inbox = new Inbox();
  const dispose = client.subscribe(
    { query: EVENTS },
    {
      next: (result) => inbox.push(result.errors ? { __typename: "Error", errors: result.errors } : result.data.events),
      error: (error) => inbox.push({ __typename: "Error", errors: [String(error)] }),
      complete: () => {},
    },
  );
  const sent = await send(alice, chat, "hello sse");
  const received = await inbox.next(isMessage("hello sse"));
  dispose();
  client.dispose();
  return { received: received.message.id === sent.id };
});
