// GraphiQL as Parley serves it at GET /graphql: bundled from npm by `npm run build`, so the
// page loads nothing from a CDN and works offline.
//
// Queries and mutations go over HTTP with the Headers tab's headers. Subscriptions go over
// graphql-transport-ws to ws(s)://<this host>/graphql; the Headers tab's Authorization is
// copied into the `connection_init` payload as `authorization`, the shape the server reads.
import { createGraphiQLFetcher, type Fetcher } from "@graphiql/toolkit";
import { GraphiQL } from "graphiql";
import "graphiql/style.css";
import "./page.css";
import { createClient, type Client } from "graphql-ws";
import { createElement } from "react";
import { createRoot } from "react-dom/client";

const httpUrl = new URL(window.location.pathname, window.location.href).toString();
const wsUrl = httpUrl.replace(/^http/, "ws");

const DEFAULT_QUERY = `# Parley's GraphQL API. Log in first (register or login returns a token), then put
# {"Authorization": "Bearer <token>"} in the Headers tab below: queries, mutations and
# subscriptions (over WebSocket) all use it.
#
# Run: Ctrl-Enter, or the play button.

mutation Register {
  register(username: "ada", password: "correct horse battery") {
    token
    user { id username }
  }
}
`;

/** The Authorization header of the Headers tab, whatever its case. */
function authorizationOf(headers: Record<string, unknown> | undefined): string | undefined {
  for (const [name, value] of Object.entries(headers ?? {})) {
    if (name.toLowerCase() === "authorization" && typeof value === "string") return value;
  }
  return undefined;
}

// One WebSocket per token: a changed Authorization opens a new connection (the server
// authenticates a socket once, in connection_init) and closes the old one.
let socket: { token: string | undefined; client: Client; fetcher: Fetcher } | undefined;

function socketFor(token: string | undefined): Fetcher {
  if (socket && socket.token === token) return socket.fetcher;
  void socket?.client.dispose();
  const client = createClient({ url: wsUrl, connectionParams: token ? { authorization: token } : {} });
  socket = { token, client, fetcher: createGraphiQLFetcher({ url: httpUrl, wsClient: client }) };
  return socket.fetcher;
}

const fetcher: Fetcher = (params, options) => socketFor(authorizationOf(options?.headers))(params, options);

// Links like /graphql#query=…&variables=…&headers=… open with those editors filled in. In the
// fragment, not the query string: GET /graphql?query=… runs the query, and a fragment (which
// may hold a token) never reaches the server or its logs.
const search = new URLSearchParams(window.location.hash.slice(1));

const root = document.getElementById("graphiql");
if (root) {
  createRoot(root).render(
    createElement(GraphiQL, {
      fetcher,
      defaultQuery: DEFAULT_QUERY,
      query: search.get("query") ?? undefined,
      variables: search.get("variables") ?? undefined,
      headers: search.get("headers") ?? undefined,
      defaultEditorToolsVisibility: true,
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: true,
    }),
  );
}
