// The web chat at `/` in Debian's Chromium: alice (registering in the page) and bob (logging
// in) chat in two browser contexts with nothing beyond this machine reachable. Alice sends,
// bob sees it live and its unread badge until he opens it; alice sees the delivered and read
// ticks; bob sees alice typing and her online state; a picture is sent and shown; a group is
// created and used, where a mention of bob raises his badge's mention mark and is highlighted;
// bob's other device reads and his page's badge clears; carol joins by alice's invite link; the
// group gets a disappearing timer, and a message of a short timer leaves the page at expiry;
// bob leaves and alice sees when he was last seen. A screenshot of alice's screen in the group
// goes to $SCREENSHOT (docs/web-chat.png in the README).
import { deflateSync, crc32 } from "node:zlib";
import { BASE, gql, register, withBrowser } from "./lib.mjs";

const TIMEOUT = 15_000;

/** A small PNG (a colour gradient), encoded here so the test needs no image file. */
function png(width, height) {
  const chunk = (type, data) => {
    const length = Buffer.alloc(4);
    length.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([length, body, crc]);
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header.set([8, 2, 0, 0, 0], 8); // 8-bit RGB
  const rows = [];
  for (let y = 0; y < height; y++) {
    const row = Buffer.alloc(1 + width * 3);
    for (let x = 0; x < width; x++) row.set([40 + (x * 200) / width, 90 + (y * 120) / height, 220], 1 + x * 3);
    rows.push(row);
  }
  const signature = Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]);
  return Buffer.concat([
    signature,
    chunk("IHDR", header),
    chunk("IDAT", deflateSync(Buffer.concat(rows))),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

/** The newest message with `body` among the events pending for `token`'s device. */
async function pendingMessage(token, body) {
  const { pendingEvents } = await gql(
    "{ pendingEvents(first: 100) { ... on MessageEvent { message { id conversationId body } } } }",
    {},
    token,
  );
  const found = pendingEvents.filter((event) => event.message?.body === body).at(-1);
  if (!found) throw new Error(`no pending message "${body}"`);
  return found.message;
}

// Bob also has a device of his own outside the browser (the token `register` returned).
const bob = await register("Bob");
const carol = await register("Carol");
const aliceName = `alice${Math.random().toString(36).slice(2, 8)}`;

await withBrowser(async ({ newPage }) => {
  const [alice, bobPage] = await Promise.all([newPage(), newPage()]);
  const expectText = (page, selector, text) =>
    page.locator(selector, { hasText: text }).first().waitFor({ timeout: TIMEOUT });
  /** The conversation `name` in `page`'s list shows `unread` on its badge (none for 0). */
  const expectUnread = async (page, name, unread) => {
    await page.locator(`.conversation[data-unread="${unread}"]`, { hasText: name }).waitFor({ timeout: TIMEOUT });
    const badges = await page.locator(".conversation", { hasText: name }).locator(".unread").allTextContents();
    if (badges.join() !== (unread ? String(unread) : "")) throw new Error(`${name}'s badge shows ${badges}`);
  };

  // Alice registers in the page; bob logs in.
  await alice.goto(`${BASE}/`);
  await alice.fill("#login input[name=username]", aliceName);
  await alice.fill("#login input[name=password]", "correct horse battery");
  await alice.fill("#login input[name=displayName]", "Alice");
  await alice.click("#login button[value=register]");
  await bobPage.goto(`${BASE}/`);
  await bobPage.fill("#login input[name=username]", bob.username);
  await bobPage.fill("#login input[name=password]", bob.password);
  await bobPage.click("#login button[value=login]");
  await expectText(alice, "#me", "Alice");
  await expectText(bobPage, "#me", "Bob");

  // Alice starts a 1:1 chat with bob and sends; bob sees it live and opens it.
  await alice.fill("#new-chat input[name=username]", bob.username);
  await alice.click("#new-chat button");
  await expectText(alice, "#title", "Bob");
  await alice.fill("#composer input[name=body]", "Hi Bob! Lunch at noon?");
  await alice.click("#composer button");
  await expectText(alice, ".message.mine .ticks", "✓");
  await expectText(bobPage, ".conversation", "Alice");
  await expectUnread(bobPage, "Alice", 1);

  // Bob's device acknowledged it: delivered (✓✓). Bob opens it: read (✓✓ in colour), no badge.
  await alice.locator('.message.mine[data-status="DELIVERED"]').first().waitFor({ timeout: TIMEOUT });
  await bobPage.click(".conversation >> text=Alice");
  await expectText(bobPage, ".message .body", "Hi Bob! Lunch at noon?");
  await expectUnread(bobPage, "Alice", 0);
  await expectText(bobPage, "#presence", "online");
  await alice.locator('.message.mine[data-status="READ"]').first().waitFor({ timeout: TIMEOUT });

  // Alice types: bob sees it.
  await alice.locator("#composer input[name=body]").pressSequentially("Sure", { delay: 20 });
  await expectText(bobPage, "#typing", "Alice is typing");

  // Bob replies; alice sees it.
  await bobPage.fill("#composer input[name=body]", "Noon works. The usual place?");
  await bobPage.click("#composer button");
  await expectText(alice, ".message .body", "Noon works. The usual place?");

  // Alice sends a picture with a caption; bob sees the picture.
  await alice.fill("#composer input[name=body]", "Sure, here is the menu");
  await alice.setInputFiles("#composer input[type=file]", {
    name: "menu.png",
    mimeType: "image/png",
    buffer: png(240, 150),
  });
  await alice.click("#composer button");
  const picture = bobPage.locator(".message .attachment img").first();
  await picture.waitFor({ timeout: TIMEOUT });
  await bobPage.waitForFunction((img) => img.complete && img.naturalWidth > 0, await picture.elementHandle(), {
    timeout: TIMEOUT,
  });
  await alice.locator(".message.mine .attachment img").first().waitFor({ timeout: TIMEOUT });
  await alice.waitForFunction(
    () => [...document.querySelectorAll(".attachment img")].every((img) => img.complete && img.naturalWidth > 0),
    null,
    { timeout: TIMEOUT },
  );

  // Alice creates a group with bob; it shows up on bob's side, where the chat with alice is
  // open: the group's badge counts alice's messages, marks the one mentioning bob, and the
  // group moves to the top of his list.
  await alice.fill("#new-group input[name=title]", "Lunch crew");
  await alice.fill("#new-group input[name=members]", bob.username);
  await alice.click("#new-group button");
  await expectText(alice, "#title", "Lunch crew");
  await alice.fill("#composer input[name=body]", "Welcome to the group");
  await alice.click("#composer button");
  await expectText(bobPage, ".conversation", "Lunch crew");
  await expectUnread(bobPage, "Lunch crew", 1);
  await alice.fill("#composer input[name=body]", `@${bob.username} can you book a table?`);
  await alice.click("#composer button");
  await expectUnread(bobPage, "Lunch crew", 2);
  await bobPage.locator(".conversation .mentions", { hasText: "@" }).waitFor({ timeout: TIMEOUT });
  await expectText(bobPage, "#conversations li:first-child .conversation", "Lunch crew");
  // Bob opens it: the badge clears and the message that mentions him is highlighted.
  await bobPage.click(".conversation >> text=Lunch crew");
  await expectText(bobPage, ".message .sender", "Alice");
  await expectText(bobPage, ".message .body", "Welcome to the group");
  await expectText(bobPage, ".message.mentioned .body .mention", `@${bob.username}`);
  await expectUnread(bobPage, "Lunch crew", 0);
  if (await alice.locator(".message.mentioned").count()) throw new Error("alice's own mention of bob is highlighted");

  // Alice writes to bob while he is in the group: a badge on his page, until his other device
  // reads it (a ReadStateEvent sets his page's counts).
  await alice.click(".conversation >> text=Bob");
  await alice.fill("#composer input[name=body]", "Did you get my menu?");
  await alice.click("#composer button");
  await expectUnread(bobPage, "Alice", 1);
  const unread = await pendingMessage(bob.token, "Did you get my menu?");
  await gql(
    "mutation($c: ID!, $m: [ID!]!) { markRead(conversationId: $c, messageIds: $m) }",
    { c: unread.conversationId, m: [unread.id] },
    bob.token,
  );
  await expectUnread(bobPage, "Alice", 0);

  // In the group, alice (its owner) makes an invite link; carol opens it, logs in and is in.
  await alice.click(".conversation >> text=Lunch crew");
  await alice.click("#invite");
  const link = await alice.locator("#invite-link").inputValue();
  if (!link.startsWith(`${BASE}/#invite=`)) throw new Error(`not an invite link: ${link}`);
  const carolPage = await newPage();
  await carolPage.goto(link);
  await expectText(carolPage, "#invite-hint", "to join the group");
  await carolPage.fill("#login input[name=username]", carol.username);
  await carolPage.fill("#login input[name=password]", carol.password);
  await carolPage.click("#login button[value=login]");
  await expectText(carolPage, "#me", "Carol");
  await expectText(carolPage, "#title", "Lunch crew");
  await expectText(carolPage, "#presence", "3 members");
  await expectText(alice, "#presence", "3 members");
  if ((await carolPage.evaluate(() => window.location.hash)) !== "") throw new Error("the code stayed in the address");
  // The "Join" form takes a code or a link; one that is not valid says so.
  await carolPage.fill("#join input[name=code]", `${BASE}/#invite=not-a-real-code`);
  await carolPage.click("#join button");
  await expectText(carolPage, "#status", "This invite link is not valid");

  // Alice turns on disappearing messages (5 minutes): bob sees the timer (a member cannot
  // change it) and the timer mark on the messages sent since.
  await alice.selectOption("#timer", "300");
  await bobPage.waitForFunction(() => document.querySelector("#timer")?.value === "300", null, { timeout: TIMEOUT });
  await bobPage.locator("#timer:disabled").waitFor({ timeout: TIMEOUT });
  await carolPage.fill("#composer input[name=body]", `Thanks for the link @${aliceName}!`);
  await carolPage.click("#composer button");
  await expectText(alice, ".message.mentioned .body", "Thanks for the link");
  await expectText(bobPage, ".message .body", "Thanks for the link");
  await bobPage.locator(".message", { hasText: "Thanks for the link" }).locator(".timer").waitFor({ timeout: TIMEOUT });

  // Bob writes to alice in the 1:1 chat, mentioning her (a badge and a mention mark on her list),
  // and types in the group: the README's screenshot of alice's screen.
  await bobPage.click(".conversation >> text=Alice");
  await bobPage.fill("#composer input[name=body]", `@${aliceName} booked for noon!`);
  await bobPage.click("#composer button");
  await expectUnread(alice, "Bob", 1);
  await alice.locator(".conversation", { hasText: "Bob" }).locator(".mentions").waitFor({ timeout: TIMEOUT });
  await bobPage.click(".conversation >> text=Lunch crew");
  await bobPage.locator("#composer input[name=body]").pressSequentially("See you there", { delay: 20 });
  await expectText(alice, "#typing", "Bob is typing");
  if (process.env.SCREENSHOT) await alice.screenshot({ path: process.env.SCREENSHOT });

  // A 2-second timer (this server allows 1 s and up), set by bob's other device in the 1:1
  // chat: alice's page shows it, and her message under it leaves the page when it expires.
  await alice.click(".conversation >> text=Bob");
  await expectUnread(alice, "Bob", 0);
  await gql(
    "mutation($c: ID!) { setDisappearingTimer(conversationId: $c, seconds: 2) { id } }",
    { c: unread.conversationId },
    bob.token,
  );
  await alice.waitForFunction(() => document.querySelector("#timer")?.value === "2", null, { timeout: TIMEOUT });
  await alice.fill("#composer input[name=body]", "This one disappears");
  await alice.click("#composer button");
  const fleeting = alice.locator(".message", { hasText: "This one disappears" });
  await fleeting.locator(".timer").waitFor({ timeout: TIMEOUT });
  await fleeting.waitFor({ state: "detached", timeout: TIMEOUT });
  await expectText(alice, ".message .body", "Hi Bob! Lunch at noon?");

  // Bob closes the chat: alice sees him offline, with when he was last seen.
  await expectText(alice, "#presence", "online");
  await bobPage.context().close();
  await expectText(alice, "#presence", "last seen");
});
console.log(
  "chat: two users chatted with ticks, typing, presence and a picture, unread badges, mentions, " +
    "an invite link and disappearing messages, nothing loaded from beyond this machine",
);
