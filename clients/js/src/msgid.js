// msg_ids are Redis stream ids, "<ms>-<seq>" in decimal: ordered as pairs.

const FORM = /^(0|[1-9][0-9]{0,19})-(0|[1-9][0-9]{0,19})$/;

export function isMsgId(id) {
    return typeof id === "string" && FORM.test(id);
}

/** <0, 0 or >0 as a is before, equal to or after b; "" is before all. */
export function compareMsgId(a, b) {
    if (a === b) {
        return 0;
    }
    if (a === "") {
        return -1;
    }
    if (b === "") {
        return 1;
    }
    const [am, as] = a.split("-");
    const [bm, bs] = b.split("-");
    return cmp(am, bm) || cmp(as, bs);
}

function cmp(x, y) {
    // decimal strings without leading zeros: longer is greater
    if (x.length !== y.length) {
        return x.length - y.length;
    }
    return x < y ? -1 : x > y ? 1 : 0;
}
