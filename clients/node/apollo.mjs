// Apollo Client as app teams configure it: GraphQLWsLink for subscriptions split from HttpLink;
// HttpLink alone running a subscription over Apollo's multipart HTTP protocol; and automatic
// persisted queries through PersistedQueryLink.
import { createHash, randomUUID } from "node:crypto";

import { ApolloClient, ApolloLink, HttpLink, InMemoryCache, gql } from "@apollo/client";
import { PersistedQueryLink } from "@apollo/client/link/persisted-queries";
import { GraphQLWsLink } from "@apollo/client/link/subscriptions";
import { getMainDefinition } from "@apollo/client/utilities";
import { createClient } from "graphql-ws";
import WebSocket from "ws";
import {
  EVENTS, HTTP_URL, Inbox, SEND, WS_URL, check, isMessage, isReceipt, main, register, sendInput, startChat,
} from "./common.mjs";

const EVENTS_DOC = gql(EVENTS);
const SEND_DOC = gql(SEND);
const ACK_DOC = gql("mutation Acknowledge($c: String!) { acknowledge(cursor: $c) }");
const READ_DOC = gql("mutation MarkRead($c: ID!, $m: [ID!]!) { markRead(conversationId: $c, messageIds: $m) }");

function httpLink(person, requests = []) {
  return new HttpLink({
    uri: HTTP_URL,
    headers: { authorization: `Bearer ${person.token}` },
    fetch: (url, init) => {
      requests.push(JSON.parse(init.body));
      return fetch(url, init);
    },
  });
}

/** Subscriptions over graphql-ws, everything else over HTTP: the split every Apollo guide shows. */
function splitClient(person) {
  const socket = createClient({
    url: WS_URL,
    webSocketImpl: WebSocket,
    connectionParams: { authorization: `Bearer ${person.token}` },
    retryAttempts: 0,
  });
  const link = ApolloLink.split(
    ({ query }) => {
      const definition = getMainDefinition(query);
      return definition.kind === "OperationDefinition" && definition.operation === "subscription";
    },
    new GraphQLWsLink(socket),
    httpLink(person),
  );
  return { client: new ApolloClient({ link, cache: new InMemoryCache() }), socket };
}

function listen(client, variables = {}) {
  const inbox = new Inbox();
  const subscription = client.subscribe({ query: EVENTS_DOC, variables, fetchPolicy: "no-cache" }).subscribe({
    next: (result) => inbox.push(result.error ? { __typename: "Error", error: String(result.error) } : result.data.events),
    error: (error) => inbox.push({ __typename: "Error", error: String(error) }),
  });
  return { inbox, subscription };
}

const mutate = async (client, mutation, variables) =>
  (await client.mutate({ mutation, variables, fetchPolicy: "no-cache" })).data;

async function chatOverTheSplit(alice, bob, chat) {
  const a = splitClient(alice);
  const b = splitClient(bob);
  const aliceEvents = listen(a.client);
  const bobEvents = listen(b.client);
  const hello = (await mutate(a.client, SEND_DOC, sendInput(chat, "hello from apollo"))).sendMessage;
  const received = await bobEvents.inbox.next(isMessage("hello from apollo"));
  await mutate(b.client, ACK_DOC, { c: received.cursor });
  await aliceEvents.inbox.next(isReceipt("DELIVERED", hello.id));
  await mutate(b.client, READ_DOC, { c: chat, m: [hello.id] });
  await aliceEvents.inbox.next(isReceipt("READ", hello.id));

  // Reconnect and replay: Bob's app restarts and resumes after its last cursor.
  bobEvents.subscription.unsubscribe();
  await b.socket.dispose();
  await mutate(a.client, SEND_DOC, sendInput(chat, "missed"));
  const b2 = splitClient(bob);
  const resumed = listen(b2.client, { after: received.cursor });
  const replayed = await resumed.inbox.next((event) => event.__typename === "MessageEvent");
  check(replayed.message.body === "missed", `replayed ${JSON.stringify(replayed)}`);
  resumed.subscription.unsubscribe();
  aliceEvents.subscription.unsubscribe();
  await Promise.all([b2.socket.dispose(), a.socket.dispose()]);
  return { delivered: true, read: true, replayed: replayed.message.body };
}

async function multipartOverHttpLink(alice, bob, chat) {
  const client = new ApolloClient({ link: httpLink(bob), cache: new InMemoryCache() });
  const events = listen(client);
  // The stream is open once the server answers its headers; the message is pending until then anyway.
  const { sendMessage } = await (async () => {
    const sender = new ApolloClient({ link: httpLink(alice), cache: new InMemoryCache() });
    return mutate(sender, SEND_DOC, sendInput(chat, "over multipart"));
  })();
  const received = await events.inbox.next(isMessage("over multipart"));
  events.subscription.unsubscribe();
  return { multipart: received.message.id === sendMessage.id };
}

async function persistedQueries(alice) {
  const sha256 = (text) => createHash("sha256").update(text).digest("hex");
  // A document this run's server has never seen: its hash is unknown at first.
  const field = `u${randomUUID().replaceAll("-", "")}`;
  const query = gql(`query PersistedMe { me { id } ${field}: me { username } }`);
  const requests = [];
  const first = new ApolloClient({
    link: new PersistedQueryLink({ sha256 }).concat(httpLink(alice, requests)),
    cache: new InMemoryCache(),
  });
  const result = await first.query({ query, fetchPolicy: "no-cache" });
  check(result.data.me.id === alice.userId, "APQ query answered someone else");
  check(requests.length === 2, `expected hash, then hash with query; got ${JSON.stringify(requests)}`);
  check(requests[0].query === undefined && requests[0].extensions.persistedQuery, "first request carried the query");
  check(typeof requests[1].query === "string", "the retry did not carry the query");
  // Another client (an app restart): the hash alone is enough now.
  const later = [];
  const second = new ApolloClient({
    link: new PersistedQueryLink({ sha256 }).concat(httpLink(alice, later)),
    cache: new InMemoryCache(),
  });
  const again = await second.query({ query, fetchPolicy: "no-cache" });
  check(again.data[field].username === alice.username, "APQ by hash answered something else");
  check(later.length === 1 && later[0].query === undefined, `expected the hash alone; got ${JSON.stringify(later)}`);
  return { apq: true };
}

main(async () => {
  const alice = await register("alice");
  const bob = await register("bob");
  const chat = await startChat(alice, bob);
  return {
    ...(await chatOverTheSplit(alice, bob, chat)),
    ...(await multipartOverHttpLink(alice, bob, chat)),
    ...(await persistedQueries(alice)),
  };
});
