// Parley over HTTP and WebSocket for the web chat, typed by the documents generated from
// frontend_schema/operations (frontend_schema/generated): the variables and results below
// are checked against the schema at build time (`npm run typecheck`).
import type { TypedDocumentNode } from "@graphql-typed-document-node/core";
import { print } from "graphql/language/printer";
import { createClient, type Client } from "graphql-ws";

import { CreateUploadDocument } from "../../frontend_schema/generated/graphql";

export * from "../../frontend_schema/generated/graphql";

/** A GraphQL error as the server reports it: the message, and `extensions.code`. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly code: string | undefined,
  ) {
    super(message);
  }
}

const printed = new WeakMap<object, string>();

function source(document: TypedDocumentNode<unknown, never>): string {
  let text = printed.get(document);
  if (text === undefined) printed.set(document, (text = print(document)));
  return text;
}

type Errors = { message: string; extensions?: { code?: string } }[] | undefined;

function failure(errors: Errors): ApiError | undefined {
  const first = errors?.[0];
  return first ? new ApiError(first.message, first.extensions?.code) : undefined;
}

/** One query or mutation over HTTP (POST /graphql), as `token`'s device when given. */
export async function request<R, V>(document: TypedDocumentNode<R, V>, variables: V, token?: string): Promise<R> {
  const response = await fetch("/graphql", {
    method: "POST",
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({ query: source(document as TypedDocumentNode<unknown, never>), variables }),
  });
  const body = (await response.json()) as { data?: R | null; errors?: Errors };
  const error = failure(body.errors);
  if (error || !body.data) throw error ?? new ApiError(`HTTP ${response.status}`, undefined);
  return body.data;
}

/** A graphql-transport-ws connection to ws(s)://<this host>/graphql, authenticated by `token`. */
export function connect(token: string, onClosed: (code: number) => void): Client {
  const url = new URL("/graphql", window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return createClient({
    url: url.toString(),
    connectionParams: { authorization: `Bearer ${token}` },
    // 4403: this token was revoked or expired; retrying cannot help (frontend_schema/README.md).
    shouldRetry: (event) => !(event instanceof CloseEvent && event.code === 4403),
    retryAttempts: Infinity,
    on: { closed: (event) => onClosed(event instanceof CloseEvent ? event.code : 1006) },
  });
}

/** Runs subscription `document` on `client`, calling `onData` for each result until disposed. */
export function subscribe<R, V>(
  client: Client,
  document: TypedDocumentNode<R, V>,
  variables: V,
  onData: (data: R) => void,
): () => void {
  return client.subscribe<R>(
    { query: source(document as TypedDocumentNode<unknown, never>), variables: variables as Record<string, unknown> },
    {
      next: (result) => {
        if (result.data) onData(result.data);
        else console.warn("subscription error", result.errors);
      },
      error: (error) => console.warn("subscription ended", error),
      complete: () => undefined,
    },
  );
}

/** Uploads `file` as createUpload's ticket says (a multipart POST) and returns its attachment id. */
export async function upload(file: File, token: string): Promise<string> {
  const { createUpload: ticket } = await request(
    CreateUploadDocument,
    { input: { filename: file.name, contentType: file.type || "application/octet-stream", size: file.size } },
    token,
  );
  const form = new FormData();
  for (const field of ticket.fields) form.append(field.name, field.value);
  form.append("file", file); // last: S3 ignores every field after the file
  const response = await fetch(ticket.url, { method: "POST", body: form });
  if (!response.ok) throw new ApiError(`The upload was refused (HTTP ${response.status}).`, undefined);
  return ticket.attachmentId;
}
