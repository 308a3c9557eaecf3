// Client-server API helpers shared by the interop peers and the benchmarks: plain `fetch`, no
// SDK, so that set-up never depends on the js-sdk under test.

/** One JSON request; returns `{status, json}` (json `{}` when the body is not JSON). */
export async function api(hs, method, path, body, token) {
    const res = await fetch(hs + path, {
        method,
        headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
        body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = await res.json().catch(() => ({}));
    return { status: res.status, json };
}

/** Event types of group-call membership, each member may send them (power level 0). */
const CALL_MEMBER_TYPES = [
    "org.matrix.msc3401.call.member",
    "com.famedly.call.member",
    "org.matrix.msc3401.call",
    "org.matrix.msc4143.rtc.member",
    "m.rtc.slot",
    "org.matrix.msc4143.rtc.slot",
];

/**
 * A private room created by `members[0]` that every other member joined; call-member state
 * open to all members; Megolm-encrypted with `encrypted` (Element Call rooms are: js-sdk's
 * crypto then tracks the members' devices for Olm to-device). Returns the room id.
 */
export async function createRoom(hs, members, { encrypted = false, name = "interop" } = {}) {
    const [creator, ...others] = members;
    const room = await api(
        hs,
        "POST",
        "/_matrix/client/v3/createRoom",
        {
            preset: "private_chat",
            name,
            invite: others.map((u) => u.user_id),
            power_level_content_override: { events: Object.fromEntries(CALL_MEMBER_TYPES.map((t) => [t, 0])) },
            initial_state: encrypted
                ? [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }]
                : [],
        },
        creator.access_token,
    );
    if (room.status !== 200) throw new Error(`createRoom: ${room.status} ${JSON.stringify(room.json)}`);
    const roomId = room.json.room_id;
    for (const u of others) {
        const j = await api(hs, "POST", `/_matrix/client/v3/join/${encodeURIComponent(roomId)}`, {}, u.access_token);
        if (j.status !== 200) throw new Error(`join ${u.user_id}: ${j.status} ${JSON.stringify(j.json)}`);
    }
    return roomId;
}

/**
 * js-sdk's loggers force DEBUG on creation: filter through the method factory instead. `level`
 * is the lowest method kept (trace, debug, info, warn, error).
 */
export function quietLogger(logger, level = "warn") {
    const order = ["trace", "debug", "info", "warn", "error"];
    const min = order.indexOf(level);
    const orig = logger.methodFactory;
    logger.methodFactory = function (methodName, logLevel, loggerName) {
        const raw = orig.call(this, methodName, logLevel, loggerName);
        return order.indexOf(methodName) >= min ? raw : () => {};
    };
    if (typeof logger.rebuild === "function") logger.rebuild();
    else logger.setLevel(logger.getLevel());
}
