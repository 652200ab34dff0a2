// Loads @influxdata/flux-lsp-browser under plain Node.
//
// The package is a wasm-bindgen "bundler" build: its JS glue does
// `import * as wasm from './flux-lsp-browser_bg.wasm'`, which only a bundler can resolve.
// Here the glue's source is rewritten so that `wasm` is a binding set after we instantiate
// the WebAssembly module ourselves, with the glue module as its import object.
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";

const PACKAGE = "@influxdata/flux-lsp-browser";
const GLUE = "flux-lsp-browser_bg.js";
const WASM = "flux-lsp-browser_bg.wasm";
const WASM_IMPORT = "import * as wasm from './flux-lsp-browser_bg.wasm';";
const EAGER_MEMORY_VIEWS = /^cached(Int32|Uint8)Memory0 = new (Int32|Uint8)Array\(wasm\.memory\.buffer\);$/gm;

function packageDirectory() {
  const require = createRequire(import.meta.url);
  return dirname(require.resolve(`${PACKAGE}/package.json`));
}

function rewriteGlue(source) {
  if (!source.includes(WASM_IMPORT)) {
    throw new Error(`${PACKAGE}: glue code changed (no wasm import found); update flux_lsp.mjs`);
  }
  const eagerViews = source.match(EAGER_MEMORY_VIEWS) ?? [];
  if (eagerViews.length !== 2) {
    throw new Error(`${PACKAGE}: glue code changed (memory views); update flux_lsp.mjs`);
  }
  const setter = [
    "let wasm;",
    "export function __runwatch_attach_wasm(exports) {",
    "  wasm = exports;",
    "  cachedInt32Memory0 = new Int32Array(wasm.memory.buffer);",
    "  cachedUint8Memory0 = new Uint8Array(wasm.memory.buffer);",
    "}",
  ].join("\n");
  return source.replace(WASM_IMPORT, setter).replace(EAGER_MEMORY_VIEWS, "");
}

/** The package's exports (Lsp, Flux, parse, ...), backed by a freshly instantiated module. */
export async function loadFluxLsp() {
  const directory = packageDirectory();
  const glueSource = rewriteGlue(await readFile(join(directory, GLUE), "utf8"));
  const glue = await import(
    `data:text/javascript;base64,${Buffer.from(glueSource).toString("base64")}`
  );
  const bytes = await readFile(join(directory, WASM));
  const { instance } = await WebAssembly.instantiate(bytes, { [`./${GLUE}`]: glue });
  glue.__runwatch_attach_wasm(instance.exports);
  return glue;
}
