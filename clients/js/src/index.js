// ngx-im-client: browsers and React Native (their global WebSocket).
// Node: the "node" export (node.js) passes the ws package instead.

export { ImClient, ImError } from "./client.js";
export { codes } from "./wire.js";
export { compareMsgId, isMsgId } from "./msgid.js";
