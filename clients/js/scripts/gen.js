// Generates gen/im.js, the protobuf descriptor of proto/im.proto as an
// ES module, so that the SDK needs neither the .proto file nor a parser
// at run time (browsers, React Native).

import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import protobuf from "protobufjs";

const here = dirname(fileURLToPath(import.meta.url));
const proto = join(here, "..", "..", "..", "proto", "im.proto");
const out = join(here, "..", "gen", "im.js");

const root = protobuf.loadSync(proto);

mkdirSync(dirname(out), { recursive: true });
writeFileSync(out,
    "// generated from proto/im.proto by scripts/gen.js; do not edit\n" +
    "export default " + JSON.stringify(root.toJSON()) + ";\n");
