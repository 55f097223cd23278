// src/index.d.ts compiles and means what it says (test/types/check.ts).

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const here = dirname(fileURLToPath(import.meta.url));
const tsc = join(here, "..", "node_modules", ".bin", "tsc");

test("the TypeScript types check", async () => {
    const r = await promisify(execFile)(tsc, ["-p", join(here, "types")])
        .catch((e) => e);
    assert.equal(r.code ?? 0, 0, (r.stdout || "") + (r.stderr || ""));
});
