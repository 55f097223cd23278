// Types of ngx-im-client (src/client.js).

export type ErrorCode =
    | "UNSPECIFIED" | "BAD_FRAME" | "UNAUTHENTICATED" | "FORBIDDEN"
    | "TOO_LARGE" | "RATE_LIMITED" | "UNAVAILABLE" | "NOT_FOUND"
    | "INTERNAL"
    // the client's own
    | "CLOSED" | "QUEUE_FULL" | "PROTOCOL";

export class ImError extends Error {
    readonly code: ErrorCode;
    readonly reason: string;
}

export interface ImClientOptions {
    /** ws:// or wss:// URL of an nginx stream server with `im;` */
    url: string;
    /** a PASETO v4.public token */
    token?: string;
    /** asked before every connection and before expiresAtMs */
    getToken?: () => Promise<string>;
    /** device id for the per-device cursor; "" is "default" */
    device?: string;
    /** WebSocket constructor; the global one (browsers), ws (Node) */
    WebSocket?: unknown;
    /** Node only: the ws constructor's options, e.g. { ca } */
    wsOptions?: object;
    /** sends and requests waiting at most (1000) */
    maxQueue?: number;
    /** sends written before their SendAck (32) */
    sendWindow?: number;
    /** Acks are coalesced over this many ms (100) */
    ackDelayMs?: number;
    backoffMinMs?: number;
    backoffMaxMs?: number;
    connectTimeoutMs?: number;
    /** refresh this long before expiry (60000, at most a fifth of the
     *  token's remaining lifetime) */
    refreshMarginMs?: number;
}

export type Target = { to: string; group?: undefined }
    | { group: string; to?: undefined };

export type SendRequest = Target & {
    body?: string | Uint8Array;
    type?: string;
    clientMsgId?: string;
};

export interface SendAck {
    clientMsgId: string;
    msgId: string;
    tsMs: number;
}

export interface Message {
    msgId: string;
    /** where it is in this user's inbox: what Sync's after/before take */
    cursor: string;
    from: string;
    to: string;
    group: string;
    body: Uint8Array;
    /** body decoded as UTF-8 */
    text: string;
    tsMs: number;
    clientMsgId: string;
    type: string;
}

export interface Receipt {
    msgId: string;
    /** the receipt's place in this user's inbox */
    cursor: string;
    from: string;
    to: string;
    group: string;
    /** the msg_id read up to */
    upTo: string;
    tsMs: number;
}

export interface Presence {
    user: string;
    online: boolean;
    lastSeenMs: number;
}

export interface Typing {
    to: string;
    group: string;
    from: string;
}

export interface Page {
    messages: Message[];
    last: string;
    more: boolean;
}

export type State = "idle" | "connecting" | "open" | "waiting" | "closed";

export interface Events {
    message: Message;
    receipt: Receipt;
    presence: Presence;
    typing: Typing;
    state: State;
    connect: { user: string; session: string };
    disconnect: { reason: string };
    refresh: { expiresAtMs: number };
    goaway: { reconnectAfterMs: number };
    error: ImError;
}

export class ImClient {
    constructor(options: ImClientOptions);
    readonly state: State;
    readonly pending: number;
    user: string;
    session: string;
    expiresAtMs: number;
    on<K extends keyof Events>(type: K, fn: (e: Events[K]) => void):
        () => void;
    off<K extends keyof Events>(type: K, fn: (e: Events[K]) => void): void;
    connect(): Promise<void>;
    send(msg: SendRequest): Promise<SendAck>;
    markRead(m: Message): Promise<SendAck>;
    sync(range?: { after?: string; before?: string; limit?: number }):
        Promise<Page>;
    history(before?: string, limit?: number): Promise<Page>;
    typing(target: Target): void;
    presence: { subscribe(users: string[]): Promise<Presence[]> };
    groups: {
        join(group: string): Promise<void>;
        leave(group: string): Promise<void>;
    };
    close(): void;
}

export const codes: Readonly<Record<string, number>>;
export function compareMsgId(a: string, b: string): number;
export function isMsgId(id: string): boolean;
