// Checks Flux documents with InfluxData's Flux language server (parser + type checker).
//
// stdin:  JSON list of {"name": str, "flux": str, "prelude"?: str}
// stdout: JSON object {name: [diagnostic, ...]}, where a diagnostic is
//         {"file": "query" | "prelude", "severity": 1-4 (LSP: error, warning, info, hint),
//          "message": str, "line": int, "character": int, "endLine": int, "endCharacter": int}
//         with 0-based LSP positions.
//
// Each document gets its own directory (a Flux package in the language server's eyes), so
// names declared by one query never leak into another. A prelude is opened as a second file
// in that directory: it declares what the query expects to be provided at run time (Grafana's
// `v` record, influxdb-client's externs) and, being another file of the same package, it
// leaves the query's own line numbers and import block untouched.
import { loadFluxLsp } from "./flux_lsp.mjs";

// The language server logs through console.*; stdout carries only the JSON answer.
for (const level of ["debug", "info", "log", "warn"]) {
  console[level] = (...parts) => process.stderr.write(`${parts.join(" ")}\n`);
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
}

function validate(documents) {
  if (!Array.isArray(documents)) throw new Error("stdin must be a JSON list of documents");
  const seen = new Set();
  for (const doc of documents) {
    if (typeof doc?.name !== "string" || typeof doc?.flux !== "string") {
      throw new Error("every document needs a string `name` and a string `flux`");
    }
    if (doc.prelude !== undefined && typeof doc.prelude !== "string") {
      throw new Error(`document ${doc.name}: prelude must be a string`);
    }
    if (seen.has(doc.name)) throw new Error(`duplicate document name: ${doc.name}`);
    seen.add(doc.name);
  }
}

class FluxServer {
  constructor(flux) {
    this.lsp = new flux.Lsp();
    this.diagnostics = new Map();
    this.nextId = 1;
    this.lsp.onMessage((raw) => {
      const message = JSON.parse(raw);
      if (message.method === "textDocument/publishDiagnostics") {
        if (process.env.FLUX_CHECK_TRACE) process.stderr.write(`TRACE ${raw}\n`);
        this.diagnostics.set(message.params.uri, message.params.diagnostics);
      }
    });
    this.lsp.run().catch((error) => {
      process.stderr.write(`flux language server stopped: ${error}\n`);
      process.exitCode = 1;
    });
  }

  async request(method, params) {
    const answer = await this.lsp.send(
      JSON.stringify({ jsonrpc: "2.0", id: this.nextId++, method, params }),
    );
    const parsed = JSON.parse(answer);
    if (parsed.error) throw new Error(`${method}: ${JSON.stringify(parsed.error)}`);
    return parsed.result;
  }

  notify(method, params) {
    return this.lsp.send(JSON.stringify({ jsonrpc: "2.0", method, params }));
  }

  async start() {
    await this.request("initialize", { processId: null, rootUri: null, capabilities: {} });
    await this.notify("initialized", {});
  }

  open(uri, text) {
    return this.notify("textDocument/didOpen", {
      textDocument: { uri, languageId: "flux", version: 1, text },
    });
  }

  published(uri) {
    const found = this.diagnostics.get(uri);
    if (found === undefined) throw new Error(`no diagnostics published for ${uri}`);
    return found;
  }
}

// Diagnostics are published as notifications; this lets any queued ones arrive.
function settle() {
  return new Promise((resolve) => setImmediate(resolve));
}

function unique(diagnostics) {
  const seen = new Set();
  return diagnostics.filter((d) => {
    const key = JSON.stringify(d);
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

function simplify(file, diagnostic) {
  const { start, end } = diagnostic.range;
  return {
    file,
    severity: diagnostic.severity ?? 1,
    message: diagnostic.message,
    line: start.line,
    character: start.character,
    endLine: end.line,
    endCharacter: end.character,
  };
}

async function main() {
  const documents = JSON.parse(await readStdin());
  validate(documents);
  const server = new FluxServer(await loadFluxLsp());
  await server.start();
  const uris = documents.map((doc, index) => {
    const directory = `file:///runwatch-flux-check/${index}`;
    return { query: `${directory}/query.flux`, prelude: `${directory}/prelude.flux` };
  });
  // Opening the query re-publishes an empty list for the prelude (the server then reports
  // package-level results for the file just opened), so the prelude's own diagnostics are
  // taken as they stand right after it is opened, before the query joins the package.
  const preludeDiagnostics = new Map();
  for (const [index, doc] of documents.entries()) {
    if (doc.prelude) {
      await server.open(uris[index].prelude, doc.prelude);
      await settle();
      preludeDiagnostics.set(index, server.published(uris[index].prelude));
    }
    await server.open(uris[index].query, doc.flux);
  }
  await settle();
  const report = {};
  for (const [index, doc] of documents.entries()) {
    const fromPrelude = unique([
      ...(preludeDiagnostics.get(index) ?? []),
      ...(doc.prelude ? server.published(uris[index].prelude) : []),
    ]);
    report[doc.name] = [
      ...fromPrelude.map((d) => simplify("prelude", d)),
      ...server.published(uris[index].query).map((d) => simplify("query", d)),
    ];
  }
  process.stdout.write(`${JSON.stringify(report)}\n`);
}

main().then(
  () => process.exit(process.exitCode ?? 0),
  (error) => {
    process.stderr.write(`flux check failed: ${error?.stack ?? error}\n`);
    process.exit(2);
  },
);
