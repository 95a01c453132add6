// The web chat at `/` in Debian's Chromium: alice (registering in the page) and bob (logging
// in) chat in two browser contexts with nothing beyond this machine reachable. Alice sends,
// bob sees it live; alice sees the delivered and read ticks; bob sees alice typing and her
// online state; a picture is sent and shown; a group is created and used; bob leaves and
// alice sees when he was last seen. A screenshot of alice's screen mid-conversation
// goes to $SCREENSHOT (docs/web-chat.png in the README).
import { deflateSync, crc32 } from "node:zlib";
import { BASE, register, withBrowser } from "./lib.mjs";

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

const bob = await register("Bob");
const aliceName = `alice${Math.random().toString(36).slice(2, 8)}`;

await withBrowser(async ({ newPage }) => {
  const [alice, bobPage] = await Promise.all([newPage(), newPage()]);
  const expectText = (page, selector, text) =>
    page.locator(selector, { hasText: text }).first().waitFor({ timeout: TIMEOUT });

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

  // Bob's device acknowledged it: delivered (✓✓). Bob opens it: read (✓✓ in colour).
  await alice.locator('.message.mine[data-status="DELIVERED"]').first().waitFor({ timeout: TIMEOUT });
  await bobPage.click(".conversation >> text=Alice");
  await expectText(bobPage, ".message .body", "Hi Bob! Lunch at noon?");
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

  // Mid-conversation, bob typing again: the README's screenshot of alice's screen.
  await bobPage.locator("#composer input[name=body]").pressSequentially("Looks good", { delay: 20 });
  await expectText(alice, "#typing", "Bob is typing");
  if (process.env.SCREENSHOT) await alice.screenshot({ path: process.env.SCREENSHOT });

  // Alice creates a group with bob; it shows up on bob's side and carries a message.
  await alice.fill("#new-group input[name=title]", "Lunch crew");
  await alice.fill("#new-group input[name=members]", bob.username);
  await alice.click("#new-group button");
  await expectText(alice, "#title", "Lunch crew");
  await alice.fill("#composer input[name=body]", "Welcome to the group");
  await alice.click("#composer button");
  await expectText(bobPage, ".conversation", "Lunch crew");
  await bobPage.click(".conversation >> text=Lunch crew");
  await expectText(bobPage, ".message .sender", "Alice");
  await expectText(bobPage, ".message .body", "Welcome to the group");

  // Bob closes the chat: alice sees him offline, with when he was last seen.
  await alice.click(".conversation >> text=Bob");
  await expectText(alice, "#presence", "online");
  await bobPage.context().close();
  await expectText(alice, "#presence", "last seen");
});
console.log(
  "chat: two users chatted with ticks, typing, presence and a picture, nothing loaded from beyond this machine",
);
