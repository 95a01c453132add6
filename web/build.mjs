// Builds Parley's browser pages into infra/static/ (committed, so a Python-only user gets
// them): graphiql/ (GraphiQL with React, served at GET /graphql) and chat/ (the example web
// chat, served at /). Each folder gets THIRD_PARTY_LICENSES.txt with the licence of every
// npm package bundled into it, found from esbuild's metafile so the list cannot drift.
import { build } from "esbuild";
import { copyFile, mkdir, readFile, readdir, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
// `node build.mjs <folder>` builds elsewhere (tests/test_browser.py compares with the committed files).
const out = process.argv[2] ? path.resolve(process.argv[2]) : path.join(here, "..", "infra", "static");

/** The licence texts of the npm packages among esbuild's inputs, one block per package. */
async function licences(metafile) {
  const packages = new Map();
  for (const input of Object.keys(metafile.inputs)) {
    const match = input.match(/^(.*node_modules\/(?:@[^/]+\/)?[^/]+)\//);
    if (match) packages.set(match[1], true);
  }
  const blocks = [];
  for (const dir of [...packages.keys()].sort()) {
    const pkg = JSON.parse(await readFile(path.join(here, dir, "package.json"), "utf8"));
    const files = (await readdir(path.join(here, dir))).filter((f) => /^(licen[cs]e|copying)/i.test(f));
    const text = files.length
      ? await readFile(path.join(here, dir, files[0]), "utf8")
      : `(no licence file in the package; package.json says: ${pkg.license})`;
    blocks.push(`${pkg.name}@${pkg.version} (${pkg.license})\n\n${text.trim()}\n`);
  }
  return `Third-party software bundled into these files, with its licence.\n\n${blocks.join("\n" + "-".repeat(72) + "\n\n")}`;
}

async function bundle(name, entry, outfile, extra) {
  const dir = path.join(out, name);
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  const result = await build({
    entryPoints: { [outfile]: path.join(here, entry) },
    outdir: dir,
    bundle: true,
    minify: true,
    format: "iife",
    target: ["es2022"],
    metafile: true,
    legalComments: "none", // collected whole into THIRD_PARTY_LICENSES.txt instead
    define: { "process.env.NODE_ENV": '"production"' },
    logLevel: "warning",
  });
  await writeFile(path.join(dir, "THIRD_PARTY_LICENSES.txt"), await licences(result.metafile));
  for (const file of extra) await copyFile(path.join(here, file), path.join(dir, path.basename(file)));
  // The pages must run offline: nothing in the bundle may load from another origin.
  for (const file of await readdir(dir)) {
    if (!/\.css$/.test(file)) continue;
    const css = await readFile(path.join(dir, file), "utf8");
    if (/@import|url\((?!["']?data:)/.test(css)) throw new Error(`${name}/${file} loads a remote resource`);
  }
}

await bundle("graphiql", "graphiql/main.ts", "graphiql", []);
await bundle("chat", "chat/main.ts", "chat", ["chat/index.html"]);
console.log(`built ${path.relative(process.cwd(), out)}/graphiql and chat`);
