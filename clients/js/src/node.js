// ngx-im-client for Node: the same client, with ws as its WebSocket
// unless options.WebSocket says otherwise.

import WebSocket from "ws";
import { ImClient as BaseClient } from "./client.js";

export { ImError } from "./client.js";
export { codes } from "./wire.js";
export { compareMsgId, isMsgId } from "./msgid.js";

export class ImClient extends BaseClient {
    constructor(options) {
        super({ WebSocket, ...options });
    }
}
