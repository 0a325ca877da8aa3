#!/usr/bin/env node
// Builds a JavaScript wtrace guest, a hook or a task, into a component with
// componentize-qjs (QuickJS):
//
//   node guest-sdk/js/build.mjs DIR OUT.wasm [--opt-size]
//
// DIR holds app.js (an ES module exporting the world's functions in
// camelCase) and, for a task, a world.wit whose one world includes
// wtrace:tracing/task-imports@0.1.0 and adds the task's exports. Without
// world.wit the guest is a hook (world wtrace:tracing/hook@0.1.0).
//
// It lays out a build directory under target/guest-build/ (removed after):
//   wit/guest.wit                  world `guest`: the app's world + the WASI the SDK uses
//   wit/deps/app/                  the app's *.wit
//   wit/deps/wtrace/               this repository's wit/*.wit (copied, never committed twice)
//   wit/deps/wasi-*                WASI 0.2 as the host links it (its wasmtime-wasi crate's WIT)
//   js/app/                        the app's files
//   js/node_modules/wtrace-guest/  the SDK, imported as "wtrace-guest"
//
// componentize-qjs comes from $WTRACE_JS_TOOLS (default target/tools/js;
// scripts/setup-js.sh installs it). WASI's WIT comes from $WTRACE_WASI_WIT
// if set, else from the wasmtime-wasi crate Cargo.lock names, in cargo's
// registry (fetched with `cargo fetch` if absent).

import { execFileSync } from "node:child_process";
import fs from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");

class BuildError extends Error {
  constructor(message, code = 1) {
    super(message);
    this.code = code;
  }
}

function fail(message, code = 1) {
  throw new BuildError(message, code);
}

/** componentize() of the installed componentize-qjs. */
function componentizer() {
  const tools = process.env.WTRACE_JS_TOOLS ?? path.join(root, "target/tools/js");
  const entry = path.join(tools, "node_modules/componentize-qjs/index.js");
  if (!fs.existsSync(entry)) {
    fail(
      `componentize-qjs not found under ${tools}; install it with scripts/test.sh ` +
        "(or: source scripts/setup-js.sh && setup_js_guests)",
    );
  }
  return createRequire(entry)(entry).componentize;
}

/** The directory of the WASI 0.2 WIT packages (cli.wit, io.wit, ...) the host links. */
function wasiWitDir() {
  if (process.env.WTRACE_WASI_WIT) return process.env.WTRACE_WASI_WIT;
  const lock = fs.readFileSync(path.join(root, "Cargo.lock"), "utf8");
  const version = lock.match(/name = "wasmtime-wasi"\nversion = "([^"]+)"/)?.[1];
  if (version === undefined) fail("Cargo.lock names no wasmtime-wasi; set WTRACE_WASI_WIT");
  const crate = `wasmtime-wasi-${version}`;
  const registry = path.join(process.env.CARGO_HOME ?? path.join(os.homedir(), ".cargo"), "registry/src");
  const find = () =>
    (fs.existsSync(registry) ? fs.readdirSync(registry) : [])
      .map((index) => path.join(registry, index, crate, "src/p2/wit/deps"))
      .find((dir) => fs.existsSync(dir));
  if (find() === undefined) {
    execFileSync("cargo", ["fetch", "--manifest-path", path.join(root, "Cargo.toml")], { stdio: "inherit" });
  }
  return find() ?? fail(`no ${crate}/src/p2/wit/deps under ${registry}; set WTRACE_WASI_WIT`);
}

/** `ns:name/world@version` of the one world in the app's *.wit files. */
function appWorld(appDir, files) {
  const text = files.map((file) => fs.readFileSync(path.join(appDir, file), "utf8")).join("\n");
  const pkg = text.match(/^\s*package\s+([a-z0-9-]+):([a-z0-9-]+)(@[^;\s]+)?\s*;/m);
  const worlds = [...text.matchAll(/^\s*world\s+%?([a-z][a-z0-9-]*)\s*\{/gm)].map((m) => m[1]);
  if (pkg === null) fail(`${appDir}: no \`package ns:name;\` in ${files.join(", ")}`);
  if (worlds.length !== 1) fail(`${appDir}: ${files.join(", ")} must define one world, not ${worlds.length}`);
  return `${pkg[1]}:${pkg[2]}/${worlds[0]}${pkg[3] ?? ""}`;
}

async function build(appDir, out, optSize, dir) {
  // WIT: the app's world (or the hook world) plus what the SDK imports.
  const wit = path.join(dir, "wit");
  const deps = path.join(wit, "deps");
  fs.mkdirSync(path.join(deps, "wtrace"), { recursive: true });
  for (const file of fs.readdirSync(path.join(root, "wit"))) {
    if (file.endsWith(".wit")) fs.copyFileSync(path.join(root, "wit", file), path.join(deps, "wtrace", file));
  }
  if (fs.existsSync(path.join(root, "wit/deps"))) fs.cpSync(path.join(root, "wit/deps"), deps, { recursive: true });
  const wasi = wasiWitDir();
  for (const entry of fs.readdirSync(wasi)) {
    fs.cpSync(path.join(wasi, entry), path.join(deps, `wasi-${entry}`), { recursive: true });
  }
  let wasiVersion;
  for (const file of fs.readdirSync(deps, { recursive: true })) {
    if (String(file).endsWith(".wit")) {
      const text = fs.readFileSync(path.join(deps, String(file)), "utf8");
      wasiVersion ??= text.match(/^package wasi:cli@(0\.2\.[0-9]+);/m)?.[1];
    }
  }
  if (wasiVersion === undefined) fail(`no wasi:cli@0.2 package in ${wasi}`);

  const appWits = fs.readdirSync(appDir).filter((file) => file.endsWith(".wit"));
  let world = "wtrace:tracing/hook@0.1.0";
  if (appWits.length > 0) {
    world = appWorld(appDir, appWits);
    fs.mkdirSync(path.join(deps, "app"));
    for (const file of appWits) fs.copyFileSync(path.join(appDir, file), path.join(deps, "app", file));
  }
  const wasiImports = ["environment", "stdout", "stderr"];
  fs.writeFileSync(
    path.join(wit, "guest.wit"),
    [
      "package wtrace:js-guest;",
      "",
      "world guest {",
      `  include ${world};`,
      "  // What the SDK (wtrace-guest) uses: env() and console.",
      ...wasiImports.map((name) => `  import wasi:cli/${name}@${wasiVersion};`),
      "}",
      "",
    ].join("\n"),
  );

  // JS: the app, and the SDK as the package "wtrace-guest".
  const js = path.join(dir, "js");
  const sdk = path.join(js, "node_modules/wtrace-guest");
  fs.cpSync(path.join(here, "wtrace-guest"), sdk, { recursive: true });
  fs.writeFileSync(
    path.join(sdk, "wasi.js"),
    `export { getEnvironment } from "wasi:cli/environment@${wasiVersion}";\n` +
      `export { getStdout } from "wasi:cli/stdout@${wasiVersion}";\n` +
      `export { getStderr } from "wasi:cli/stderr@${wasiVersion}";\n`,
  );
  fs.cpSync(appDir, path.join(js, "app"), {
    recursive: true,
    filter: (source) => !source.endsWith(".wit") && path.basename(source) !== "node_modules",
  });
  const entry = path.join(js, "app/app.js");

  const { component } = await componentizer()({
    witPath: wit,
    world: "guest",
    jsSource: fs.readFileSync(entry, "utf8"),
    jsPath: entry,
    moduleRoot: js,
    sync: true,
    optSize,
  });
  fs.mkdirSync(path.dirname(path.resolve(out)), { recursive: true });
  fs.writeFileSync(out, component);
}

async function main() {
  const args = process.argv.slice(2);
  const optSize = args.includes("--opt-size");
  const [appDir, out, ...rest] = args.filter((arg) => arg !== "--opt-size");
  if (appDir === undefined || out === undefined || rest.length > 0) {
    fail("usage: node guest-sdk/js/build.mjs DIR OUT.wasm [--opt-size]  (DIR: app.js, plus world.wit for a task)", 2);
  }
  if (!fs.existsSync(path.join(appDir, "app.js"))) fail(`${appDir}/app.js not found`, 2);
  fs.mkdirSync(path.join(root, "target/guest-build"), { recursive: true });
  const dir = fs.mkdtempSync(path.join(root, "target/guest-build/js."));
  try {
    await build(appDir, out, optSize, dir);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((error) => {
  console.error(`error: ${error instanceof BuildError ? error.message : (error?.stack ?? error)}`);
  process.exit(error instanceof BuildError ? error.code : 1);
});
