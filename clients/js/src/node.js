// ngx-im-client for Node: the same client, with ws as its WebSocket
// unless options.WebSocket says otherwise.

import WebSocket from "ws";
import { ImClient as BaseClient } from "./client.js";

export { ImError } from "./client.js";
export { codes } from "./wire.js";
export { compareMsgId, isMsgId } from "./msgid.js";

// no frame of the server is larger than im_max_frame; ws's own default
// would take 100 MiB
const MAX_PAYLOAD = 16 << 20;

export class ImClient extends BaseClient {
    constructor(options) {
        super({
            WebSocket, ...options,
            wsOptions: { maxPayload: MAX_PAYLOAD, ...options?.wsOptions },
        });
    }
}
