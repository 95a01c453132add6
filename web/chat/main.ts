// Parley's example web chat, served at `/`: a working example for frontend teams, not a
// product. Plain TypeScript and the DOM; every operation is one of frontend_schema/operations,
// typed by its generated types. The server keeps no history: this page shows what arrives
// while it is open (and what was pending for this device when it connected).
import {
  AcknowledgeDocument,
  ConversationDetailDocument,
  ConversationListDocument,
  CreateGroupDocument,
  EventsDocument,
  LoginDocument,
  LogoutDocument,
  MarkReadDocument,
  MeDocument,
  PresenceDocument,
  RegisterDocument,
  SearchUsersDocument,
  SendMessageDocument,
  SetTypingDocument,
  StartDirectConversationDocument,
  connect,
  request,
  subscribe,
  upload,
  type ConversationFieldsFragment,
  type EventsSubscription,
  type MessageFieldsFragment,
  type UserFieldsFragment,
} from "./api";
import type { Client } from "graphql-ws";
import "./style.css";

type Conversation = ConversationFieldsFragment;
type Status = "sending" | "sent" | "DELIVERED" | "READ";
type Shown = { message: MessageFieldsFragment; status: Status };
type Session = { token: string; me: UserFieldsFragment };

const STATUS_RANK: Record<Status, number> = { sending: 0, sent: 1, DELIVERED: 2, READ: 3 };
const TICKS: Record<Status, string> = { sending: "◷", sent: "✓", DELIVERED: "✓✓", READ: "✓✓" };
const TYPING_SHOWN_MS = 6000;
const TYPING_IDLE_MS = 3000;
const TYPING_REPEAT_MS = 2500;
const STORAGE_KEY = "parley-chat-session";

// ---- a small DOM helper --------------------------------------------------------------------

type Attrs = Record<string, string | boolean | ((event: Event) => void)>;

function h(tag: string, attrs: Attrs = {}, ...children: (Node | string | null | undefined)[]): HTMLElement {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (typeof value === "function") element.addEventListener(name.slice(2), value);
    else if (value === true) element.setAttribute(name, "");
    else if (value !== false) element.setAttribute(name, value);
  }
  for (const child of children) if (child != null) element.append(child);
  return element;
}

function time(iso: string): string {
  return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function formValues(form: HTMLFormElement): Record<string, string> {
  return Object.fromEntries([...new FormData(form)].map(([k, v]) => [k, typeof v === "string" ? v.trim() : ""]));
}

// ---- state ---------------------------------------------------------------------------------

let session: Session | undefined;
const conversations = new Map<string, Conversation>();
const messages = new Map<string, Shown[]>();
const presence = new Map<string, { online: boolean; lastSeen: string | null }>();
const typing = new Map<string, Map<string, { name: string; timer: number }>>();
const markedRead = new Set<string>();
let current: string | undefined;
let socket: Client | undefined;
let stopPresence: (() => void) | undefined;
let watched = "";
let ackTimer: number | undefined;
let latestCursor: string | undefined;

const app = document.getElementById("app") as HTMLElement;

function token(): string {
  if (!session) throw new Error("not logged in");
  return session.token;
}

function say(text: string): void {
  const status = document.getElementById("status");
  if (status) status.textContent = text;
}

// ---- logging in ----------------------------------------------------------------------------

function showLogin(): void {
  const form = h(
    "form",
    { id: "login", class: "card" },
    h("h1", {}, "Parley"),
    h("p", { class: "hint" }, "An example chat on Parley's GraphQL API."),
    h("input", { name: "username", placeholder: "username", autocomplete: "username", required: true }),
    h("input", {
      name: "password",
      type: "password",
      placeholder: "password",
      autocomplete: "current-password",
      required: true,
    }),
    h("input", { name: "displayName", placeholder: "display name (to register)" }),
    h(
      "div",
      { class: "row" },
      h("button", { type: "submit", name: "action", value: "login" }, "Log in"),
      h("button", { type: "submit", name: "action", value: "register", class: "secondary" }, "Register"),
    ),
    h("p", { id: "status", class: "error" }),
  ) as HTMLFormElement;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const action = ((event as SubmitEvent).submitter as HTMLButtonElement | null)?.value ?? "login";
    void logIn(action === "register", formValues(form));
  });
  app.replaceChildren(form);
}

async function logIn(register: boolean, values: Record<string, string>): Promise<void> {
  const { username = "", password = "", displayName } = values;
  try {
    const account = register
      ? (
          await request(RegisterDocument, {
            username,
            password,
            displayName: displayName || null,
            deviceName: "web chat",
          })
        ).register
      : (await request(LoginDocument, { username, password, deviceName: "web chat" })).login;
    session = { token: account.token, me: account.user };
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify(session));
    await start();
  } catch (error) {
    say((error as Error).message);
  }
}

async function logOut(): Promise<void> {
  try {
    await request(LogoutDocument, {}, token());
  } finally {
    sessionStorage.removeItem(STORAGE_KEY);
    window.location.reload();
  }
}

// ---- the chat screen -----------------------------------------------------------------------

async function start(): Promise<void> {
  const me = session?.me;
  if (!me) return;
  app.replaceChildren(
    h(
      "div",
      { class: "chat" },
      h(
        "aside",
        {},
        h(
          "header",
          {},
          h("strong", { id: "me" }, me.displayName),
          h("button", { class: "link", onclick: () => void logOut() }, "Log out"),
        ),
        newChatForm(),
        newGroupForm(),
        h("ul", { id: "conversations" }),
        h("p", { id: "status", class: "error" }),
      ),
      h(
        "section",
        { id: "conversation" },
        h("header", {}, h("div", { id: "title" }, "Pick or start a conversation"), h("div", { id: "presence" })),
        h("ol", { id: "messages" }),
        h("div", { id: "typing" }),
        composer(),
      ),
    ),
  );
  const client = connect(token(), (code) => {
    if (code === 4403) void logOut(); // logged out elsewhere or expired: log in again
  });
  const { conversations: list } = await request(ConversationListDocument, {}, token());
  for (const conversation of list) conversations.set(conversation.id, conversation);
  // Pending events first (after what this device acknowledged), then live ones.
  subscribe(client, EventsDocument, {}, (data) => void onEvent(data.events));
  watchPresence(client);
  renderList();
  window.addEventListener("focus", markVisibleRead);
}

function newChatForm(): HTMLElement {
  const form = h(
    "form",
    { id: "new-chat", class: "row" },
    h("input", { name: "username", placeholder: "chat with (username)", required: true }),
    h("button", { type: "submit" }, "Chat"),
  ) as HTMLFormElement;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    void (async () => {
      try {
        const user = await findUser(formValues(form).username ?? "");
        const { startDirectConversation } = await request(
          StartDirectConversationDocument,
          { userId: user.id },
          token(),
        );
        form.reset();
        upsert(startDirectConversation);
        open(startDirectConversation.id);
      } catch (error) {
        say((error as Error).message);
      }
    })();
  });
  return form;
}

function newGroupForm(): HTMLElement {
  const form = h(
    "form",
    { id: "new-group", class: "row" },
    h("input", { name: "title", placeholder: "group name", required: true }),
    h("input", { name: "members", placeholder: "usernames, comma separated", required: true }),
    h("button", { type: "submit" }, "Create"),
  ) as HTMLFormElement;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    void (async () => {
      const { title = "", members = "" } = formValues(form);
      try {
        const names = members
          .split(",")
          .map((name) => name.trim())
          .filter(Boolean);
        const users = await Promise.all(names.map(findUser));
        const { createGroup } = await request(
          CreateGroupDocument,
          { title, memberIds: users.map((u) => u.id) },
          token(),
        );
        form.reset();
        upsert(createGroup);
        open(createGroup.id);
      } catch (error) {
        say((error as Error).message);
      }
    })();
  });
  return form;
}

async function findUser(username: string): Promise<UserFieldsFragment> {
  const { searchUsers } = await request(SearchUsersDocument, { prefix: username, first: 20 }, token());
  // Usernames are case-insensitive (the server stores them in lower case).
  const user = searchUsers.find((candidate) => candidate.username === username.toLowerCase());
  if (!user) throw new Error(`No user is called ${username}.`);
  return user;
}

function composer(): HTMLElement {
  const text = h("input", { name: "body", placeholder: "Message", autocomplete: "off" }) as HTMLInputElement;
  const file = h("input", { name: "file", type: "file", title: "Attach a file" }) as HTMLInputElement;
  const form = h("form", { id: "composer", class: "row" }, text, file, h("button", { type: "submit" }, "Send"));
  // While the user types (until a pause of TYPING_IDLE_MS), `typing: true` is repeated every
  // TYPING_REPEAT_MS: the server passes one on per interval and drops repeats, so a repeat is
  // what gets through after a quick stop and start. A pause or a send says `typing: false`.
  let repeat: number | undefined;
  let idle: number | undefined;
  let typingIn: string | undefined;
  const setTyping = (conversationId: string, on: boolean): void => {
    void request(SetTypingDocument, { conversationId, typing: on }, token()).catch(() => undefined);
  };
  const stopTyping = (): void => {
    window.clearTimeout(idle);
    window.clearInterval(repeat);
    if (typingIn) setTyping(typingIn, false);
    typingIn = undefined;
  };
  text.addEventListener("input", () => {
    if (!current) return;
    if (typingIn !== current) {
      stopTyping();
      typingIn = current;
      setTyping(current, true);
      const conversationId = current;
      repeat = window.setInterval(() => setTyping(conversationId, true), TYPING_REPEAT_MS);
    }
    window.clearTimeout(idle);
    idle = window.setTimeout(stopTyping, TYPING_IDLE_MS);
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const conversationId = current;
    if (!conversationId || (!text.value.trim() && !file.files?.length)) return;
    stopTyping();
    void send(conversationId, text.value.trim(), file.files?.[0]);
    text.value = "";
    file.value = "";
  });
  return form;
}

// ---- sending -------------------------------------------------------------------------------

async function send(conversationId: string, body: string, file: File | undefined): Promise<void> {
  const me = session?.me;
  if (!me) return;
  // One clientId per message: a retry after a timeout returns the first message, never a copy.
  const clientId = crypto.randomUUID();
  const draft: Shown = {
    message: {
      id: `draft-${clientId}`,
      clientId,
      conversationId,
      sentAt: new Date().toISOString(),
      body,
      replyToId: null,
      sender: me,
      attachments: [],
    },
    status: "sending",
  };
  add(draft);
  try {
    const attachmentIds = file ? [await upload(file, token())] : [];
    const { sendMessage } = await request(
      SendMessageDocument,
      { input: { conversationId, clientId, body: body || null, attachmentIds } },
      token(),
    );
    draft.message = sendMessage;
    draft.status = STATUS_RANK[draft.status] > STATUS_RANK.sent ? draft.status : "sent";
    dedupe(conversationId, sendMessage.id);
  } catch (error) {
    say((error as Error).message);
    const list = messages.get(conversationId) ?? [];
    messages.set(
      conversationId,
      list.filter((shown) => shown !== draft),
    );
  }
  renderMessages();
}

// ---- receiving -----------------------------------------------------------------------------

async function onEvent(event: EventsSubscription["events"]): Promise<void> {
  const me = session?.me;
  if (!me) return;
  switch (event.__typename) {
    case "MessageEvent": {
      const { message } = event;
      if (!conversations.has(message.conversationId)) await refresh(message.conversationId);
      const list = messages.get(message.conversationId) ?? [];
      const known = list.find(
        (s) =>
          s.message.id === message.id ||
          (s.message.clientId === message.clientId && s.message.sender.id === message.sender.id),
      );
      if (known) known.message = message;
      else add({ message, status: "sent" });
      acknowledge(event.cursor);
      if (message.conversationId === current) markVisibleRead();
      else renderList();
      break;
    }
    case "ReceiptEvent": {
      const { receipt } = event;
      if (receipt.user.id !== me.id) applyReceipt(receipt.conversationId, receipt.messageId, receipt.status);
      acknowledge(event.cursor);
      break;
    }
    case "TypingEvent": {
      if (event.user.id !== me.id)
        showTyping(event.conversationId, event.user.id, event.user.displayName, event.typing);
      break;
    }
    case "ConversationEvent": {
      await refresh(event.conversation.id);
      acknowledge(event.cursor);
      break;
    }
    // Edits and deletes name a message held here; one never received (deleted before it came) is ignored.
    case "MessageEditedEvent":
    case "MessageDeletedEvent": {
      const held = (messages.get(event.conversationId) ?? []).find((s) => s.message.id === event.messageId);
      if (held) {
        held.message =
          event.__typename === "MessageEditedEvent"
            ? { ...held.message, body: event.body ?? null }
            : { ...held.message, body: null, attachments: [] };
        renderMessages();
      }
      acknowledge(event.cursor);
      break;
    }
    case "ReactionEvent": {
      // This page shows no reactions; acknowledged so they do not stay pending.
      acknowledge(event.cursor);
      break;
    }
  }
}

/** Acknowledges up to `cursor` shortly after, once for a burst (it covers every earlier event). */
function acknowledge(cursor: string): void {
  latestCursor = cursor;
  window.clearTimeout(ackTimer);
  ackTimer = window.setTimeout(() => {
    if (latestCursor) void request(AcknowledgeDocument, { cursor: latestCursor }, token()).catch(() => undefined);
  }, 200);
}

/** A receipt covers the message it names and every earlier one of the conversation. */
function applyReceipt(conversationId: string, messageId: string, status: "DELIVERED" | "READ"): void {
  const list = messages.get(conversationId) ?? [];
  const until = list.findIndex((shown) => shown.message.id === messageId);
  if (until < 0) return;
  for (const shown of list.slice(0, until + 1)) {
    if (shown.message.sender.id === session?.me.id && STATUS_RANK[status] > STATUS_RANK[shown.status])
      shown.status = status;
  }
  if (conversationId === current) renderMessages();
}

function showTyping(conversationId: string, userId: string, name: string, on: boolean): void {
  const people = typing.get(conversationId) ?? new Map<string, { name: string; timer: number }>();
  window.clearTimeout(people.get(userId)?.timer);
  if (on) {
    // Shown for a while even if the "stopped" never comes (a closed tab sends none).
    const timer = window.setTimeout(() => showTyping(conversationId, userId, name, false), TYPING_SHOWN_MS);
    people.set(userId, { name, timer });
  } else {
    people.delete(userId);
  }
  typing.set(conversationId, people);
  if (conversationId === current) renderTyping();
}

/** Marks the open conversation's messages from others read (the sender sees the READ ticks). */
function markVisibleRead(): void {
  const conversationId = current;
  if (!conversationId || !document.hasFocus()) {
    renderMessages();
    return;
  }
  const unread = (messages.get(conversationId) ?? [])
    .map((shown) => shown.message)
    .filter((message) => message.sender.id !== session?.me.id && !markedRead.has(message.id));
  for (const message of unread) markedRead.add(message.id);
  if (unread.length) {
    void request(MarkReadDocument, { conversationId, messageIds: unread.map((m) => m.id) }, token()).catch((error) =>
      say((error as Error).message),
    );
  }
  renderMessages();
}

async function refresh(conversationId: string): Promise<void> {
  try {
    const { conversation } = await request(ConversationDetailDocument, { id: conversationId }, token());
    if (!conversation) throw new Error("not a member");
    upsert(conversation);
  } catch {
    // Left or removed: it is no longer ours.
    conversations.delete(conversationId);
    if (current === conversationId) current = undefined;
    renderList();
  }
}

function upsert(conversation: Conversation): void {
  conversations.set(conversation.id, conversation);
  for (const member of conversation.members) {
    if (!presence.has(member.user.id)) presence.set(member.user.id, member.user);
  }
  renderList();
  renderHeader();
  if (socket) watchPresence(socket);
}

/** Watches the online state of everyone sharing a conversation with us (up to 100). */
function watchPresence(client: Client): void {
  socket = client;
  const ids = new Set<string>();
  for (const conversation of conversations.values()) {
    for (const member of conversation.members) if (member.user.id !== session?.me.id) ids.add(member.user.id);
  }
  const userIds = [...ids].sort().slice(0, 100);
  if (userIds.join() === watched) return;
  watched = userIds.join();
  stopPresence?.();
  stopPresence = userIds.length
    ? subscribe(client, PresenceDocument, { userIds }, ({ presence: state }) => {
        presence.set(state.user.id, { online: state.online, lastSeen: state.lastSeen });
        renderList();
        renderHeader();
      })
    : undefined;
}

// ---- rendering -----------------------------------------------------------------------------

function add(shown: Shown): void {
  const list = messages.get(shown.message.conversationId) ?? [];
  list.push(shown);
  messages.set(shown.message.conversationId, list);
  if (shown.message.conversationId === current) renderMessages();
}

function dedupe(conversationId: string, messageId: string): void {
  const list = messages.get(conversationId) ?? [];
  const first = list.findIndex((shown) => shown.message.id === messageId);
  messages.set(
    conversationId,
    list.filter((shown, index) => shown.message.id !== messageId || index === first),
  );
}

function others(conversation: Conversation): UserFieldsFragment[] {
  return conversation.members.map((m) => m.user).filter((user) => user.id !== session?.me.id);
}

function nameOf(conversation: Conversation): string {
  if (conversation.kind === "GROUP") return conversation.title ?? "Group";
  return others(conversation)[0]?.displayName ?? "Just you";
}

function isOnline(userId: string): boolean {
  return presence.get(userId)?.online ?? false;
}

function open(conversationId: string): void {
  current = conversationId;
  renderList();
  renderHeader();
  renderTyping();
  markVisibleRead();
  (document.querySelector("#composer input[name=body]") as HTMLInputElement | null)?.focus();
}

function renderList(): void {
  const list = document.getElementById("conversations");
  if (!list) return;
  list.replaceChildren(
    ...[...conversations.values()].map((conversation) => {
      const online = others(conversation).some((user) => isOnline(user.id));
      const unread = (messages.get(conversation.id) ?? []).filter(
        (s) => s.message.sender.id !== session?.me.id && !markedRead.has(s.message.id),
      ).length;
      return h(
        "li",
        {},
        h(
          "button",
          {
            class: `conversation${conversation.id === current ? " current" : ""}`,
            "data-id": conversation.id,
            onclick: () => open(conversation.id),
          },
          h("span", { class: `dot${online ? " online" : ""}` }),
          h("span", { class: "name" }, nameOf(conversation)),
          unread ? h("span", { class: "unread" }, String(unread)) : null,
        ),
      );
    }),
  );
}

function renderHeader(): void {
  const conversation = current ? conversations.get(current) : undefined;
  const title = document.getElementById("title");
  const state = document.getElementById("presence");
  if (!conversation || !title || !state) return;
  title.textContent = nameOf(conversation);
  if (conversation.kind === "GROUP") {
    const people = others(conversation);
    state.textContent = `${people.length + 1} members, ${people.filter((u) => isOnline(u.id)).length + 1} online`;
    return;
  }
  const other = others(conversation)[0];
  const seen = other ? presence.get(other.id) : undefined;
  state.textContent = seen?.online ? "online" : seen?.lastSeen ? `last seen ${time(seen.lastSeen)}` : "offline";
}

function renderTyping(): void {
  const line = document.getElementById("typing");
  if (!line) return;
  const names = [...(typing.get(current ?? "")?.values() ?? [])].map((person) => person.name);
  line.textContent = names.length ? `${names.join(", ")} ${names.length > 1 ? "are" : "is"} typing…` : "";
}

function renderMessages(): void {
  const list = document.getElementById("messages");
  const conversation = current ? conversations.get(current) : undefined;
  if (!list || !conversation) return;
  list.replaceChildren(
    ...(messages.get(conversation.id) ?? []).map(({ message, status }) => {
      const mine = message.sender.id === session?.me.id;
      return h(
        "li",
        { class: `message${mine ? " mine" : ""}`, "data-status": mine ? status : "" },
        !mine && conversation.kind === "GROUP" ? h("div", { class: "sender" }, message.sender.displayName) : null,
        message.body ? h("div", { class: "body" }, message.body) : null,
        ...message.attachments.map((file) =>
          file.thumbnailUrl || file.contentType.startsWith("image/")
            ? h(
                "a",
                { class: "attachment", href: file.url, title: file.filename },
                h("img", { src: file.thumbnailUrl ?? file.url, alt: file.filename }),
              )
            : h(
                "a",
                { class: "attachment", href: file.url },
                `📎 ${file.filename} (${Math.ceil(file.size / 1024)} KB)`,
              ),
        ),
        h(
          "div",
          { class: "meta" },
          time(message.sentAt),
          mine
            ? h("span", { class: `ticks ${status.toLowerCase()}`, title: status.toLowerCase() }, ` ${TICKS[status]}`)
            : null,
        ),
      );
    }),
  );
  list.scrollTop = list.scrollHeight;
  renderList();
}

// ---- start ---------------------------------------------------------------------------------

async function resume(): Promise<void> {
  const saved = sessionStorage.getItem(STORAGE_KEY);
  if (!saved) return showLogin();
  try {
    const stored = JSON.parse(saved) as Session;
    const { me } = await request(MeDocument, {}, stored.token);
    session = { token: stored.token, me };
    await start();
  } catch {
    sessionStorage.removeItem(STORAGE_KEY);
    showLogin();
  }
}

void resume();
