// Checks Kubernetes manifests against the schemas of their kinds, from the
// pinned @kubernetes-models packages (Istio and Gateway API: generated from
// the projects' CRD schemas; Envoy Gateway: from its Go API types):
//
// 1. the package's validator (types, enums, required fields, patterns,
//    limits), as `kubectl apply` would check them;
// 2. TypeScript's excess property check of each document against the kind's
//    declared type, so that a misspelt field is an error (Kubernetes would
//    silently drop it). Free-form fields (pluginConfig, config) stay free.
//
// Usage: node check.mjs FILE.yaml...   Exit 1 with one line per error.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";
import { parseAllDocuments } from "yaml";

const here = dirname(fileURLToPath(import.meta.url));
const packages = [
  [/^gateway\.envoyproxy\.io$/, "@kubernetes-models/envoy-gateway"],
  [/^gateway\.networking\.k8s\.io$/, "@kubernetes-models/gateway-api"],
  [/\.istio\.io$/, "@kubernetes-models/istio"],
];

function modulePath(apiVersion, kind) {
  const group = String(apiVersion).split("/")[0];
  const pkg = packages.find(([re]) => re.test(group));
  return pkg && `${pkg[1]}/${apiVersion}/${kind}`;
}

const errors = [];
const docs = [];
for (const file of process.argv.slice(2)) {
  const parsed = parseAllDocuments(readFileSync(file, "utf8"));
  parsed.forEach((d, i) => {
    const where = `${file}: document ${i + 1}`;
    if (d.errors.length) {
      errors.push(`${where}: ${d.errors[0].message}`);
      return;
    }
    const doc = d.toJS();
    if (doc === null) return;
    const mod = modulePath(doc.apiVersion, doc.kind);
    if (!mod) {
      errors.push(`${where}: no schema for ${doc.apiVersion} ${doc.kind}`);
      return;
    }
    docs.push({ where: `${where} (${doc.kind} ${doc.metadata?.name})`, doc, mod });
  });
}

// 1. The packages' validators.
for (const d of docs) {
  let Model;
  try {
    Model = (await import(d.mod))[d.doc.kind];
  } catch {
    errors.push(`${d.where}: no schema for ${d.doc.apiVersion} ${d.doc.kind}`);
    continue;
  }
  try {
    new Model(d.doc).validate();
  } catch (e) {
    errors.push(`${d.where}: ${e.message.split("\n")[0]}`);
  }
  d.checked = true;
}

// 2. Excess property checks: one TypeScript file per document.
const gen = mkdtempSync(join(here, ".gen-"));
try {
  const files = docs
    .filter((d) => d.checked)
    .map((d, i) => {
      const f = join(gen, `doc${i}.ts`);
      const json = JSON.stringify(d.doc, null, 1);
      writeFileSync(
        f,
        `import type { I${d.doc.kind} } from "${d.mod}";\n` +
          `export const doc: I${d.doc.kind} = ${json};\n`,
      );
      d.ts = f;
      d.lines = json.split("\n");
      return f;
    });
  const program = ts.createProgram(files, {
    noEmit: true,
    strict: true,
    skipLibCheck: true,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    target: ts.ScriptTarget.ES2022,
  });
  for (const diag of ts.getPreEmitDiagnostics(program)) {
    const d = docs.find((x) => x.ts === diag.file?.fileName);
    const msg = ts.flattenDiagnosticMessageText(diag.messageText, "\n").split("\n");
    if (!d) {
      errors.push(`checker: ${msg[0]}`);
      continue;
    }
    const { line } = diag.file.getLineAndCharacterOfPosition(diag.start);
    const last = msg[msg.length - 1];
    const unknown = /^Object literal may only specify known properties/.test(last);
    const text = unknown ? "unknown field" : last.slice(0, 200);
    errors.push(`${d.where}: ${fieldPath(d.lines, line - 1)}: ${text}`);
  }
} finally {
  rmSync(gen, { recursive: true, force: true });
}

// The JSON path of line `n` of a JSON.stringify(_, null, 1) text.
function fieldPath(lines, n) {
  const path = [];
  let depth = (lines[n] ?? "").search(/\S/);
  for (let i = n; i >= 0 && depth > 0; i--) {
    const indent = lines[i].search(/\S/);
    if (indent > depth) continue;
    if (i !== n && indent === depth) continue;
    const key = lines[i].trim().match(/^"([^"]*)":/);
    const arrayItem = !key && i !== n && indent > 0;
    if (key) path.unshift(key[1]);
    else if (arrayItem) {
      // Count the siblings above to get the index.
      let index = 0;
      for (let j = i - 1; j >= 0 && lines[j].search(/\S/) >= indent; j--) {
        if (lines[j].search(/\S/) === indent && /^[{\["]|^\d|^true|^false|^null/.test(lines[j].trim())) index++;
      }
      path.unshift(`[${index}]`);
    }
    depth = indent;
  }
  return path.join(".").replace(/\.\[/g, "[") || "(document)";
}

for (const e of errors) console.error(e);
if (errors.length) process.exit(1);
console.log(`${docs.length} manifest(s) match their schemas: ${[...new Set(process.argv.slice(2).map((f) => relative(process.cwd(), f)))].join(", ")}`);
