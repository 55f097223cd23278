// Compiled, not run, by types.test.js: the types of src/index.d.ts as an
// app would use them; the @ts-expect-error lines must stay errors.

import { ImClient, ImError, type Message, type SendAck } from "ngx-im-client";

const im = new ImClient({ url: "ws://127.0.0.1:1/", getToken: async () => "t",
    device: "phone" });

im.on("message", (m: Message) => {
    const text: string = m.text;
    void text;
    void im.markRead(m);
});
im.on("error", (e: ImError) => void e.code);
im.on("presence", (p) => void p.online);

async function go(): Promise<void> {
    await im.connect();
    const ack: SendAck = await im.send({ to: "bob", body: "hi" });
    await im.send({ group: "g1", body: new Uint8Array([1]), type: "x" });
    const page = await im.history(ack.msgId, 20);
    void page.more;
    await im.groups.join("g1");
    const now = await im.presence.subscribe(["bob"]);
    void now[0].lastSeenMs;
    im.typing({ to: "bob" });
    // @ts-expect-error: one of to and group, not both
    await im.send({ to: "bob", group: "g1" });
    // @ts-expect-error: no such event
    im.on("nonsense", () => {});
    im.close();
}
void go;
