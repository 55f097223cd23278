// Bundles the SDK for browsers without a build step of their own (the
// web chat example): one ES module, protobufjs included, ws left out.
// Usage: node scripts/bundle.js [OUTFILE]

import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2]
    ? resolve(process.argv[2])
    : join(here, "..", "..", "..", "build", "web", "ngx-im.js");

await build({
    entryPoints: [join(here, "..", "src", "index.js")],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2020",
    minify: true,
    sourcemap: true,
    outfile: out,
    logLevel: "warning",
});
