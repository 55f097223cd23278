// The wire: im.Frame to and from bytes, with the descriptor generated from
// proto/im.proto (scripts/gen.js).

import protobuf from "protobufjs/light.js";
import descriptor from "../gen/im.js";

const root = protobuf.Root.fromJSON(descriptor);
const Frame = root.lookupType("im.Frame");
const Code = root.lookupEnum("im.Error.Code");

/** Error.Code by name and by number. */
export const codes = Object.freeze({ ...Code.values });
export const codeNames = Object.freeze(
    Object.fromEntries(Object.entries(Code.values).map(([k, v]) => [v, k])));

/**
 * Encodes {id, <body>: {...}} to the bytes of one WebSocket message.
 * Fields at their default value are left out, as proto3 encoders do: the
 * server refuses a frame that does not pack back to its own size, which
 * an explicit "" or 0 would make it.
 */
export function encode(frame) {
    return Frame.encode(Frame.fromObject(compact(frame))).finish();
}

function compact(o) {
    const out = {};
    for (const [k, v] of Object.entries(o)) {
        if (v === "" || v === 0 || v === false || v === null
            || v === undefined || (v.length === 0 && typeof v !== "string"))
        {
            continue;
        }
        out[k] = (typeof v === "object" && !ArrayBuffer.isView(v)
            && !Array.isArray(v)) ? compact(v) : v;
    }
    return out;
}

/**
 * Decodes one WebSocket message; throws on anything that is not an
 * im.Frame with a body.  uint64 fields come back as numbers (milliseconds
 * fit), bytes as Uint8Array.
 */
export function decode(bytes) {
    const msg = Frame.decode(bytes);
    const frame = Frame.toObject(msg, {
        longs: Number, enums: String, bytes: Uint8Array, defaults: true,
        oneofs: true,
    });
    if (!frame.body) {
        throw new Error("a frame without a body");
    }
    return frame;
}
