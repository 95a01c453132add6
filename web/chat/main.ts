// Parley's example web chat, served at `/`: a working example for frontend teams, not a
// product. Plain TypeScript and the DOM; every operation is one of frontend_schema/operations,
// typed by its generated types. The server keeps no history: this page shows what arrives
// while it is open (and what was pending for this device when it connected). Unread counts
// are the server's (Conversation.unreadCount): raised here as messages arrive, then set from
// the server again, and by ReadStateEvents when another device of ours reads.
import {
  AcknowledgeDocument,
  ConversationDetailDocument,
  ConversationListDocument,
  CreateGroupDocument,
  CreateInviteDocument,
  EventsDocument,
  JoinByInviteDocument,
  LoginDocument,
  LogoutDocument,
  MarkReadDocument,
  MeDocument,
  PresenceDocument,
  RegisterDocument,
  SearchUsersDocument,
  SendMessageDocument,
  SetDisappearingTimerDocument,
  SetTypingDocument,
  StartDirectConversationDocument,
  connect,
  request,
  subscribe,
  upload,
  type ConversationFieldsFragment,
  type EventsSubscription,
  type MessageFieldsFragment,
  type ReadStateEventFieldsFragment,
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
// Counts are fetched again this long after a burst of messages (they may have been counted already).
const COUNTS_SETTLE_MS = 300;
const MAX_MARK_READ = 100;
const LIST_MEMBERS = 10; // ConversationList's membersFirst
// setTimeout's longest delay; a later expiry is waited for in steps.
const MAX_TIMER_MS = 2_147_483_647;
const TIMERS: [number | null, string][] = [
  [null, "off"],
  [30, "30 s"],
  [300, "5 min"],
  [3600, "1 h"],
  [86400, "1 day"],
  [604800, "7 days"],
];
// A username (resolvers/accounts.py) after an @ that does not follow a word character (not an email).
const MENTION = /(?<![\w@])@([a-z0-9_.]{3,32})/gi;

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
// Most recent activity first (a counter, not a clock): the server's order at start, then messages.
const activity = new Map<string, number>();
let activityTick = 0;
// Bumped by every read and every fetch of a conversation: an older fetch's counts are dropped.
const countsVersion = new Map<string, number>();
const settleTimers = new Map<string, number>();
const readStateAt = new Map<string, string>();
const expiryTimers = new Map<string, number>();
const inviteLinks = new Map<string, string>();
let listedAt = 0; // when the list's counts were read (this clock)
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
    inviteCode() ? h("p", { class: "hint", id: "invite-hint" }, "Log in or register to join the group.") : null,
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
        joinForm(),
        h("ul", { id: "conversations" }),
        h("p", { id: "status", class: "error" }),
      ),
      h(
        "section",
        { id: "conversation" },
        h(
          "header",
          {},
          h("div", {}, h("div", { id: "title" }, "Pick or start a conversation"), h("div", { id: "presence" })),
          h("div", { id: "tools" }),
        ),
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
  listedAt = Date.now();
  // The server lists pinned ones first, then by activity: keep that order until messages move them.
  activityTick = list.length;
  list.forEach((conversation, index) => {
    conversations.set(conversation.id, conversation);
    activity.set(conversation.id, list.length - index);
  });
  // Pending events first (after what this device acknowledged), then live ones.
  subscribe(client, EventsDocument, {}, (data) => void onEvent(data.events));
  watchPresence(client);
  renderList();
  window.addEventListener("focus", markVisibleRead);
  window.addEventListener("hashchange", () => void joinFromLink());
  await joinFromLink();
}

// ---- invite links --------------------------------------------------------------------------

/** The code of an invite link (`<origin>/#invite=<code>`) this page was opened with, if any. */
function inviteCode(): string | undefined {
  return codeIn(window.location.hash);
}

/** The code in an invite link, or the text itself when it is a bare code. */
function codeIn(text: string): string | undefined {
  const match = /#invite=([^&\s]+)/.exec(text);
  if (match?.[1]) return decodeURIComponent(match[1]);
  return text.startsWith("#") ? undefined : text.trim() || undefined;
}

async function joinFromLink(): Promise<void> {
  const code = inviteCode();
  if (!code) return;
  // The code leaves the address bar (and the history) once used.
  history.replaceState(null, "", window.location.pathname + window.location.search);
  await join(code);
}

async function join(code: string): Promise<boolean> {
  try {
    const { joinByInvite } = await request(JoinByInviteDocument, { code }, token());
    upsert(joinByInvite, "server");
    open(joinByInvite.id);
    return true;
  } catch (error) {
    say((error as Error).message);
    return false;
  }
}

function joinForm(): HTMLElement {
  const form = h(
    "form",
    { id: "join", class: "row" },
    h("input", { name: "code", placeholder: "invite code or link", required: true, autocomplete: "off" }),
    h("button", { type: "submit" }, "Join"),
  ) as HTMLFormElement;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const code = codeIn(formValues(form).code ?? "");
    if (code) void join(code).then((joined) => joined && form.reset());
  });
  return form;
}

async function createInvite(conversationId: string): Promise<void> {
  try {
    const { createInvite: invite } = await request(CreateInviteDocument, { conversationId }, token());
    // The only time the server shows the code: it keeps a hash.
    const link = invite.code && `${window.location.origin}/#invite=${encodeURIComponent(invite.code)}`;
    if (link) inviteLinks.set(conversationId, link);
    renderHeader();
  } catch (error) {
    say((error as Error).message);
  }
}

async function setTimer(conversationId: string, seconds: number | null): Promise<void> {
  try {
    const { setDisappearingTimer } = await request(SetDisappearingTimerDocument, { conversationId, seconds }, token());
    upsert(setDisappearingTimer, "keep");
  } catch (error) {
    say((error as Error).message);
    renderHeader(); // back to the timer as it is
  }
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
        upsert(startDirectConversation, "keep");
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
        upsert(createGroup, "keep");
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
  const text = h("input", {
    name: "body",
    placeholder: "Message (@username mentions a member)",
    autocomplete: "off",
  }) as HTMLInputElement;
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
  const mentions = mentioned(conversationId, body);
  const draft: Shown = {
    message: {
      id: `draft-${clientId}`,
      clientId,
      conversationId,
      sentAt: new Date().toISOString(),
      body,
      ciphertext: null, // this example chat writes plaintext conversations only
      replyToId: null,
      expiresAt: null,
      sender: me,
      attachments: [],
      mentions: mentions.map((id) => ({ id })),
    },
    status: "sending",
  };
  add(draft);
  touch(conversationId);
  try {
    const attachmentIds = file ? [await upload(file, token())] : [];
    const { sendMessage } = await request(
      SendMessageDocument,
      { input: { conversationId, clientId, body: body || null, attachmentIds, mentions } },
      token(),
    );
    draft.message = sendMessage;
    scheduleExpiry(sendMessage);
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

/** The members named as `@username` in `body` (the sender left out): the message's mentions. */
function mentioned(conversationId: string, body: string): string[] {
  const members = conversations.get(conversationId)?.members ?? [];
  const byName = new Map(members.map((member) => [member.user.username, member.user.id]));
  const ids = new Set<string>();
  for (const [, name = ""] of body.matchAll(MENTION)) {
    const lower = name.toLowerCase();
    // "@bob." at the end of a sentence names bob, unless someone is called "bob.".
    const id = byName.get(lower) ?? byName.get(lower.replace(/\.+$/, ""));
    if (id && id !== session?.me.id) ids.add(id);
  }
  return [...ids];
}

function mentionsMe(message: MessageFieldsFragment): boolean {
  return message.mentions.some((user) => user.id === session?.me.id);
}

// ---- receiving -----------------------------------------------------------------------------

async function onEvent(event: EventsSubscription["events"]): Promise<void> {
  const me = session?.me;
  if (!me) return;
  switch (event.__typename) {
    case "MessageEvent": {
      const { message } = event;
      acknowledge(event.cursor);
      if (message.expiresAt && Date.parse(message.expiresAt) <= Date.now()) break; // gone already
      // A conversation fetched now already counts this message.
      const fetched = !conversations.has(message.conversationId);
      if (fetched) await refresh(message.conversationId);
      const list = messages.get(message.conversationId) ?? [];
      const known = list.find(
        (s) =>
          s.message.id === message.id ||
          (s.message.clientId === message.clientId && s.message.sender.id === message.sender.id),
      );
      if (known) {
        known.message = message;
        scheduleExpiry(message);
      } else {
        add({ message, status: "sent" });
        if (!fetched) countArrival(message);
      }
      touch(message.conversationId);
      if (message.conversationId === current) markVisibleRead();
      else renderList();
      break;
    }
    case "ReadStateEvent": {
      applyReadState(event);
      acknowledge(event.cursor);
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
    case "ToDeviceEvent":
    case "DeviceListEvent":
    case "OneTimeKeysLowEvent": {
      // End-to-end encryption's events: this example chat has no encrypted conversations.
      acknowledge(event.cursor);
      break;
    }
    case "ReportEvent": {
      // For group owners and admins; this example chat has no moderation screen.
      say(`A message in a group you manage was reported (${event.report.reason.toLowerCase()}).`);
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

/**
 * Marks the open conversation read up to the newest message held (the senders see the READ
 * ticks, the badge clears). Messages the server counts but this page never got (it keeps no
 * history) are covered too when a newer one is held.
 */
function markVisibleRead(): void {
  const conversationId = current;
  const conversation = conversationId ? conversations.get(conversationId) : undefined;
  if (!conversationId || !conversation || !document.hasFocus()) {
    renderMessages();
    return;
  }
  const held = (messages.get(conversationId) ?? []).filter((s) => s.status !== "sending").map((s) => s.message);
  const unread = held.filter((message) => message.sender.id !== session?.me.id && !markedRead.has(message.id));
  const newest = held.at(-1);
  for (const message of unread) markedRead.add(message.id);
  if (newest && (unread.length || conversation.unreadCount > 0)) {
    const messageIds = [...new Set([...unread.map((m) => m.id), newest.id])].slice(-MAX_MARK_READ);
    conversation.unreadCount = 0;
    conversation.unreadMentions = 0;
    // A fetch answered before the server applied this read would bring the old counts back.
    bumpCounts(conversationId);
    void request(MarkReadDocument, { conversationId, messageIds }, token())
      .then(() => bumpCounts(conversationId))
      .catch((error) => say((error as Error).message));
  }
  renderMessages();
}

function bumpCounts(conversationId: string): number {
  const version = (countsVersion.get(conversationId) ?? 0) + 1;
  countsVersion.set(conversationId, version);
  return version;
}

/** A message from someone else raises the badge of a conversation not being read now. */
function countArrival(message: MessageFieldsFragment): void {
  const conversation = conversations.get(message.conversationId);
  if (!conversation || message.sender.id === session?.me.id) return;
  conversation.archived = false; // a message from someone else brings it back, on the server too
  if (message.conversationId === current && document.hasFocus()) return;
  // Pending messages replayed at connect were counted in the list already; clocks differ, so the
  // server's count settles it either way.
  if (Date.parse(message.sentAt) > listedAt) {
    conversation.unreadCount += 1;
    if (mentionsMe(message)) conversation.unreadMentions += 1;
  }
  window.clearTimeout(settleTimers.get(message.conversationId));
  settleTimers.set(
    message.conversationId,
    window.setTimeout(() => void refresh(message.conversationId), COUNTS_SETTLE_MS),
  );
}

/** Another device of ours (or this one) read: the counts it carries are exact; apply the newest. */
function applyReadState(state: ReadStateEventFieldsFragment): void {
  const conversation = conversations.get(state.conversationId);
  const seen = readStateAt.get(state.conversationId);
  if (!conversation || (seen && Date.parse(seen) > Date.parse(state.at))) return;
  readStateAt.set(state.conversationId, state.at);
  bumpCounts(state.conversationId);
  conversation.unreadCount = state.unreadCount;
  conversation.unreadMentions = state.unreadMentions;
  const list = messages.get(state.conversationId) ?? [];
  const upTo = list.findIndex((shown) => shown.message.id === state.readUpTo);
  for (const shown of list.slice(0, upTo + 1)) markedRead.add(shown.message.id);
  renderList();
}

async function refresh(conversationId: string): Promise<void> {
  const version = bumpCounts(conversationId);
  try {
    const { conversation } = await request(ConversationDetailDocument, { id: conversationId }, token());
    if (!conversation) throw new Error("not a member");
    upsert(conversation, countsVersion.get(conversationId) === version ? "server" : "keep");
  } catch {
    // Left or removed: it is no longer ours.
    conversations.delete(conversationId);
    if (current === conversationId) current = undefined;
    renderList();
  }
}

/** Stores a conversation as the server sent it; "keep": with the counts held here (they are newer). */
function upsert(conversation: Conversation, counts: "server" | "keep"): void {
  const held = conversations.get(conversation.id);
  if (held && counts === "keep") {
    conversation.unreadCount = held.unreadCount;
    conversation.unreadMentions = held.unreadMentions;
  }
  if (!held) touch(conversation.id);
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
  scheduleExpiry(shown.message);
  if (shown.message.conversationId === current) renderMessages();
}

/** Moves a conversation to the top of its part of the list (pinned, or the rest). */
function touch(conversationId: string): void {
  activity.set(conversationId, ++activityTick);
}

/** A disappearing message leaves this page at its `expiresAt`, read or not (frontend_schema/README.md). */
function scheduleExpiry(message: MessageFieldsFragment): void {
  if (!message.expiresAt || expiryTimers.has(message.id)) return;
  const wait = Date.parse(message.expiresAt) - Date.now();
  const timer = window.setTimeout(
    () => expire(message.conversationId, message.id),
    Math.min(Math.max(wait, 0), MAX_TIMER_MS),
  );
  expiryTimers.set(message.id, timer);
}

function expire(conversationId: string, messageId: string): void {
  expiryTimers.delete(messageId);
  const list = messages.get(conversationId) ?? [];
  const shown = list.find((s) => s.message.id === messageId);
  if (!shown?.message.expiresAt) return;
  if (Date.parse(shown.message.expiresAt) > Date.now()) return scheduleExpiry(shown.message);
  messages.set(
    conversationId,
    list.filter((s) => s !== shown),
  );
  markedRead.delete(messageId);
  if (conversationId === current) renderMessages();
}

function duration(seconds: number): string {
  const named = TIMERS.find(([value]) => value === seconds);
  if (named) return named[1];
  if (seconds % 86400 === 0) return `${seconds / 86400} days`;
  if (seconds % 3600 === 0) return `${seconds / 3600} h`;
  if (seconds % 60 === 0) return `${seconds / 60} min`;
  return `${seconds} s`;
}

function myRole(conversation: Conversation): string | undefined {
  return conversation.members.find((member) => member.user.id === session?.me.id)?.role;
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
  if (current !== conversationId) inviteLinks.delete(current ?? "");
  current = conversationId;
  // The list carries the first members only: mentions and roles need them all.
  const conversation = conversations.get(conversationId);
  if (conversation && conversation.members.length >= LIST_MEMBERS) void refresh(conversationId);
  renderList();
  renderHeader();
  renderTyping();
  markVisibleRead();
  (document.querySelector("#composer input[name=body]") as HTMLInputElement | null)?.focus();
}

/** Pinned first, then by activity; archived ones are hidden (unless open). */
function renderList(): void {
  const list = document.getElementById("conversations");
  if (!list) return;
  const shown = [...conversations.values()]
    .filter((conversation) => !conversation.archived || conversation.id === current)
    .sort(
      (a, b) =>
        Number(b.pinned) - Number(a.pinned) || (activity.get(b.id) ?? 0) - (activity.get(a.id) ?? 0),
    );
  list.replaceChildren(
    ...shown.map((conversation) => {
      const online = others(conversation).some((user) => isOnline(user.id));
      const { unreadCount: unread, unreadMentions: mentions, muted } = conversation;
      return h(
        "li",
        {},
        h(
          "button",
          {
            class: `conversation${conversation.id === current ? " current" : ""}`,
            "data-id": conversation.id,
            "data-unread": String(unread),
            onclick: () => open(conversation.id),
          },
          h("span", { class: `dot${online ? " online" : ""}` }),
          h("span", { class: "name" }, nameOf(conversation)),
          conversation.pinned ? h("span", { class: "pinned", title: "pinned" }, "★") : null,
          mentions ? h("span", { class: "mentions", title: `${mentions} unread mentions of you` }, "@") : null,
          unread
            ? h(
                "span",
                { class: `unread${muted ? " muted" : ""}`, title: `${unread} unread${muted ? " (muted)" : ""}` },
                String(unread),
              )
            : null,
        ),
      );
    }),
  );
}

function renderHeader(): void {
  const conversation = current ? conversations.get(current) : undefined;
  const title = document.getElementById("title");
  const state = document.getElementById("presence");
  const tools = document.getElementById("tools");
  if (!conversation || !title || !state || !tools) return;
  title.textContent = nameOf(conversation);
  renderTools(conversation, tools);
  if (conversation.kind === "GROUP") {
    const people = others(conversation);
    state.textContent = `${people.length + 1} members, ${people.filter((u) => isOnline(u.id)).length + 1} online`;
    return;
  }
  const other = others(conversation)[0];
  const seen = other ? presence.get(other.id) : undefined;
  state.textContent = seen?.online ? "online" : seen?.lastSeen ? `last seen ${time(seen.lastSeen)}` : "offline";
}

/** The disappearing timer, and in a group an owner's or admin's invite link. */
function renderTools(conversation: Conversation, tools: HTMLElement): void {
  const role = myRole(conversation);
  const manages = role === "OWNER" || role === "ADMIN";
  const timer = conversation.disappearAfterSeconds;
  const link = inviteLinks.get(conversation.id);
  // Drawn again only when it changed, so an open menu or a selected link is not lost on a presence update.
  const key = JSON.stringify([conversation.id, conversation.kind, timer, manages, link]);
  if (tools.dataset.key === key) return;
  tools.dataset.key = key;
  const choices: [number | null, string][] = TIMERS.some(([value]) => value === timer)
    ? TIMERS
    : [...TIMERS, [timer, duration(timer ?? 0)]];
  const select = h(
    "select",
    {
      id: "timer",
      title:
        conversation.kind === "GROUP" && !manages
          ? "Disappearing messages (set by the group's owners and admins)"
          : "Disappearing messages",
      disabled: conversation.kind === "GROUP" && !manages,
    },
    ...choices.map(([value, label]) =>
      h("option", { value: value === null ? "" : String(value), selected: value === timer }, `◔ ${label}`),
    ),
  ) as HTMLSelectElement;
  select.addEventListener("change", () => {
    void setTimer(conversation.id, select.value ? Number(select.value) : null);
  });
  const linkField = link
    ? (h("input", { id: "invite-link", readonly: true, value: link, title: "Share this link" }) as HTMLInputElement)
    : null;
  linkField?.addEventListener("focus", () => linkField.select());
  const parts: (HTMLElement | null)[] = [
    select,
    conversation.kind === "GROUP" && manages
      ? h(
          "button",
          { class: "secondary", id: "invite", onclick: () => void createInvite(conversation.id) },
          "Invite link",
        )
      : null,
    linkField,
    linkField
      ? h(
          "button",
          {
            class: "secondary",
            onclick: (event) => {
              // Selected for a manual copy where the clipboard is not available (plain HTTP).
              linkField.select();
              const button = event.currentTarget as HTMLButtonElement;
              void navigator.clipboard?.writeText(linkField.value).then(
                () => (button.textContent = "Copied"),
                () => undefined,
              );
            },
          },
          "Copy",
        )
      : null,
  ];
  tools.replaceChildren(...parts.filter((part) => part !== null));
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
      const forMe = mentionsMe(message);
      return h(
        "li",
        {
          class: `message${mine ? " mine" : ""}${forMe ? " mentioned" : ""}`,
          "data-id": message.id,
          "data-status": mine ? status : "",
        },
        !mine && conversation.kind === "GROUP" ? h("div", { class: "sender" }, message.sender.displayName) : null,
        message.body ? h("div", { class: "body" }, ...highlight(message, conversation)) : null,
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
          message.expiresAt
            ? h(
                "span",
                { class: "timer", title: `disappears at ${new Date(message.expiresAt).toLocaleString()}` },
                "◔ ",
              )
            : null,
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

/** The body, with each `@username` of a member it mentions marked. */
function highlight(message: MessageFieldsFragment, conversation: Conversation): (Node | string)[] {
  const body = message.body ?? "";
  const names = new Set(
    conversation.members
      .filter((member) => message.mentions.some((user) => user.id === member.user.id))
      .map((member) => member.user.username),
  );
  const parts: (Node | string)[] = [];
  let from = 0;
  for (const match of body.matchAll(MENTION)) {
    const name = (match[1] ?? "").toLowerCase();
    if (!names.has(name) && !names.has(name.replace(/\.+$/, ""))) continue;
    parts.push(body.slice(from, match.index), h("span", { class: "mention" }, match[0]));
    from = match.index + match[0].length;
  }
  parts.push(body.slice(from));
  return parts;
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
