#!/usr/bin/env node
// The anchor side of `cargo xtask bench`'s group numbers: an SFU-mode (LiveKit) MatrixRTC call
// of N members (default 8) in the Element Call dialect, on the real matrix-js-sdk 43.0.0 with its
// Rust crypto (`initRustCrypto`), through a real Synapse. Timed like the Rust side
// (crates/voip/examples/setup_bench.rs, fn `sfu_join_and_rotation`):
//
//   node bench/js-groups.mjs --hs URL --reg-secret SECRET [--members 8] [--out FILE.json]
//                            [--use-key-delay MS]   (default: js-sdk's own, 1000 ms)
//
// How: registers N fresh users through Synapse's shared-secret admin API, creates one encrypted
// room (Element Call rooms are encrypted: js-sdk's Rust crypto only sends Olm to-device to devices
// of users it shares an encrypted room with) and joins everyone. Then it starts ONE NODE PROCESS
// PER MEMBER (this same file with --worker; each is a js-sdk MatrixClient with its own in-memory
// Rust crypto, as every member of a real call is its own browser tab), waits until each has
// synced and sees all N members joined, and then:
//
// * sfu8_join_ms: t0 = the moment the coordinator tells every worker to join (each calls
//   `MatrixRTCSession.joinRoomSession([{type: "livekit", livekit_service_url}], undefined,
//   {manageMediaKeys: true, callIntent: "audio"})`, i.e. js-sdk's defaults otherwise), until every
//   member has a key of its own (its first own `EncryptionKeyChanged`, emitted at once for the
//   first key) AND has received a key from every other member (a remote `EncryptionKeyChanged`:
//   js-sdk emits it when a key that arrived over Olm-encrypted to-device
//   `io.element.call.encryption_keys` matches a known membership). Same as the Rust side's
//   `local.is_some() && remote.len() == N-1` on every member.
// * sfu_rotation_ms: one second after the join is complete (as on the Rust side), t1 = the moment
//   the last member is told to leave (`leaveRoomSession`), until, for every remaining member i:
//   (a) i's key in use differs from the one it used at t1 ("in use" = the latest own
//   `EncryptionKeyChanged`; js-sdk emits it for a rotated key only `useKeyDelay` after the key was
//   sent, which is when Element Call starts encrypting with it), and (b) every other remaining
//   member j has received i's key in use (a remote `EncryptionKeyChanged` from i with the same key
//   bytes and index). Same as the Rust side's "every remaining member uses a new key that all the
//   others hold". The end time is the latest of the (worker-side) timestamps of the events that make
//   the condition true.
//
// Times are wall-clock ms (performance.timeOrigin + performance.now(), comparable across the
// processes on one machine), stamped by the worker when js-sdk emits the event. Output: one JSON
// line on stdout (and --out FILE): {sfu8_join_ms, sfu_rotation_ms, members, sdk, ...}. Exit code
// 1 with a message on any failure or when the whole run exceeds 120 s; workers are stopped on
// every path. No WebRTC is involved (SFU mode: membership and keys only), so no network namespace.
//
// js-sdk defaults observed in 43.0.0 (RTCEncryptionManager.join): useKeyDelay 1000 ms (the class
// field says 5000 but join() overrides it with `?? 1000`), keyRotationGracePeriodMs 10000 (a joiner
// within 10 s of the key's creation gets the current key, no rotation), no participant limit for
// rotation, 16-byte keys, index ring 0..255; a leave rotates at once (no "make key" delay).

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { createInterface } from "node:readline";
import { api, createRoom, quietLogger } from "../interop/lib/homeserver.mjs";
import { polyfillPromiseWithResolvers } from "../interop/lib/node-compat.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const sdkDir = join(here, "..", "interop", "node_modules", "matrix-js-sdk");
const SDK_VERSION = "43.0.0";
const TOTAL_BOUND_MS = 120_000;
const FOCUS = { type: "livekit", livekit_service_url: "https://livekit-jwt.example.org" };
const now = () => performance.timeOrigin + performance.now();

const argv = process.argv.slice(2);
const opt = (name, dflt) => {
    const i = argv.indexOf(name);
    return i >= 0 && argv[i + 1] !== undefined ? argv[i + 1] : dflt;
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// Worker: one member (one js-sdk client), JSON lines on stdin (commands) / stdout (events).

async function worker() {
    const emit = (ev, fields = {}) => process.stdout.write(JSON.stringify({ ev, at: now(), ...fields }) + "\n");
    // js-sdk logs through console.*: keep stdout for the protocol.
    for (const k of ["log", "info", "debug", "trace", "warn"]) console[k] = (...a) => console.error(...a);
    polyfillPromiseWithResolvers();
    const lib = (p) => import(pathToFileURL(join(sdkDir, "lib", p)).href);
    const sdk = await lib("index.js");
    const { MatrixRTCSessionEvent } = await lib("matrixrtc/MatrixRTCSession.js");
    quietLogger((await lib("logger.js")).logger, process.env.JS_GROUPS_LOG ?? "warn");

    const [hs, userId, deviceId, token, roomId] = ["--hs", "--user-id", "--device-id", "--token", "--room"].map(
        (n) => opt(n),
    );
    const expect = Number(opt("--expect", "2"));
    const useKeyDelay = opt("--use-key-delay");
    const client = sdk.createClient({ baseUrl: hs, userId, deviceId, accessToken: token, timelineSupport: false });
    await client.initRustCrypto({ useIndexedDB: false });
    const synced = new Promise((resolve) =>
        client.on("sync", (s) => (s === "PREPARED" || s === "SYNCING") && resolve()),
    );
    await client.startClient({ initialSyncLimit: 1, lazyLoadMembers: false });
    await synced;
    // Every member has synced every join (as the Rust side's `encrypted_room` waits for).
    for (;;) {
        const r = client.getRoom(roomId);
        if (r && r.getJoinedMemberCount() >= expect) break;
        await sleep(20);
    }
    const room = client.getRoom(roomId);
    emit("ready", { user_id: client.getUserId(), device_id: client.getDeviceId() });

    let rtc = null;
    const commands = {
        join() {
            rtc = client.matrixRTC.getRoomSession(room);
            rtc.on(MatrixRTCSessionEvent.EncryptionKeyChanged, (key, index, m) => {
                emit("key", {
                    user_id: m.userId,
                    device_id: m.deviceId,
                    index,
                    key: Buffer.from(key).toString("base64"),
                    local: m.userId === userId && m.deviceId === deviceId,
                });
            });
            rtc.on(MatrixRTCSessionEvent.MembershipsChanged, (_old, ms) => emit("members", { n: ms.length }));
            const config = { manageMediaKeys: true, callIntent: "audio" };
            if (useKeyDelay !== undefined) config.useKeyDelay = Number(useKeyDelay);
            rtc.joinRoomSession([FOCUS], undefined, config);
            emit("joined");
        },
        async leave() {
            const ok = await rtc.leaveRoomSession(10_000);
            emit("left", { ok });
        },
        async quit() {
            try {
                if (rtc?.isJoined()) await rtc.leaveRoomSession(2_000);
            } catch {
                // best effort
            }
            client.stopClient();
            emit("bye");
            setTimeout(() => process.exit(0), 20);
        },
    };
    const rl = createInterface({ input: process.stdin });
    rl.on("line", async (line) => {
        let c;
        try {
            c = JSON.parse(line);
            await commands[c.cmd]();
        } catch (e) {
            emit("fatal", { message: `${c?.cmd ?? line}: ${e?.stack ?? e}` });
        }
    });
    // The coordinator went away: do not linger.
    rl.on("close", () => process.exit(0));
}

// ---------------------------------------------------------------------------------------------
// Coordinator.

/** Synapse's shared-secret registration (HMAC-SHA1 over nonce, user, password, admin flag). */
async function register(hs, secret, localpart) {
    const password = `pw-${localpart}`;
    for (let attempt = 0; ; attempt++) {
        const nonce = await api(hs, "GET", "/_synapse/admin/v1/register");
        if (nonce.status !== 200) throw new Error(`register nonce: ${nonce.status} ${JSON.stringify(nonce.json)}`);
        const mac = createHmac("sha1", secret)
            .update([nonce.json.nonce, localpart, password, "notadmin"].join("\0"))
            .digest("hex");
        const r = await api(hs, "POST", "/_synapse/admin/v1/register", {
            nonce: nonce.json.nonce,
            username: localpart,
            password,
            admin: false,
            mac,
        });
        if (r.status === 429 && attempt < 20) {
            await sleep(Math.max(50, r.json.retry_after_ms ?? 500));
            continue;
        }
        if (r.status !== 200) throw new Error(`register ${localpart}: ${r.status} ${JSON.stringify(r.json)}`);
        return { user_id: r.json.user_id, device_id: r.json.device_id, access_token: r.json.access_token };
    }
}

/** A member's worker process and what it has reported. */
class Member {
    constructor(hs, user, room, expect, useKeyDelay) {
        this.id = `${user.user_id}|${user.device_id}`;
        this.user = user;
        this.waiters = [];
        this.log = []; // the worker's stderr, last lines (shown on failure)
        this.local = []; // own keys in use: {key, index, at}
        this.received = new Map(); // sender id -> Map(index:key -> first arrival time)
        this.memberships = []; // {n, at}: the session's membership count after each change
        this.exited = null;
        const args = [fileURLToPath(import.meta.url), "--worker", "--hs", hs, "--user-id", user.user_id,
            "--device-id", user.device_id, "--token", user.access_token, "--room", room, "--expect", String(expect)];
        if (useKeyDelay !== undefined) args.push("--use-key-delay", String(useKeyDelay));
        this.proc = spawn(process.execPath, args, { stdio: ["pipe", "pipe", "pipe"] });
        createInterface({ input: this.proc.stderr }).on("line", (l) => {
            this.log.push(l);
            if (this.log.length > 40) this.log.shift();
            if (process.env.JS_GROUPS_LOG) console.error(`[${user.user_id}] ${l}`);
        });
        createInterface({ input: this.proc.stdout }).on("line", (line) => {
            let ev;
            try {
                ev = JSON.parse(line);
            } catch {
                return;
            }
            if (ev.ev === "key") {
                const k = `${ev.index}:${ev.key}`;
                if (ev.local) this.local.push({ key: k, at: ev.at });
                else {
                    const from = `${ev.user_id}|${ev.device_id}`;
                    if (!this.received.has(from)) this.received.set(from, new Map());
                    const m = this.received.get(from);
                    if (!m.has(k)) m.set(k, ev.at);
                }
            }
            if (ev.ev === "members") this.memberships.push({ n: ev.n, at: ev.at });
            if (ev.ev === "fatal") fail(`worker ${user.user_id}: ${ev.message}`);
            this.waiters = this.waiters.filter((w) => !w(ev));
            onChange();
        });
        this.proc.on("exit", (code, sig) => {
            this.exited = code ?? sig;
            if (!stopping) fail(`worker ${user.user_id} exited (${code ?? sig}):\n  ${this.log.join("\n  ")}`);
        });
    }
    send(cmd) {
        if (this.exited === null) this.proc.stdin.write(JSON.stringify(cmd) + "\n");
    }
    next(pick) {
        return new Promise((resolve) => this.waiters.push((ev) => pick(ev) && (resolve(ev), true)));
    }
    inUse() {
        return this.local.at(-1);
    }
}

let members = [];
let stopping = false;
let onChange = () => {};
let failHandler = null;

function fail(message) {
    if (failHandler) failHandler(new Error(message));
    else {
        console.error(`js-groups failed: ${message}`);
        cleanup().then(() => process.exit(1));
    }
}

async function cleanup() {
    if (stopping) return;
    stopping = true;
    for (const m of members) m.send({ cmd: "quit" });
    const deadline = Date.now() + 3000;
    while (members.some((m) => m.exited === null) && Date.now() < deadline) await sleep(20);
    for (const m of members) if (m.exited === null) m.proc.kill("SIGKILL");
}

/** Resolves with the time `check()` first returns a number (re-checked on every worker event). */
function until(what, check) {
    return new Promise((resolve, reject) => {
        failHandler = reject;
        onChange = () => {
            const t = check();
            if (t !== null) {
                onChange = () => {};
                failHandler = null;
                resolve(t);
            }
        };
        onChange();
        void what;
    });
}

/** When every member in `ms` had first seen exactly `n` memberships after `since` (ms after it). */
function allSaw(ms, n, since) {
    const ats = ms.map((m) => m.memberships.find((x) => x.at >= since && x.n === n)?.at);
    return ats.every((a) => a !== undefined) ? Math.round((Math.max(...ats) - since) * 10) / 10 : null;
}

/** Join complete: the latest event time among "own key" and "a key from each other member". */
function joinDone(ms) {
    let latest = 0;
    for (const m of ms) {
        if (m.local.length === 0) return null;
        latest = Math.max(latest, m.local[0].at);
        for (const o of ms) {
            if (o === m) continue;
            const got = m.received.get(o.id);
            if (!got || got.size === 0) return null;
            latest = Math.max(latest, Math.min(...got.values()));
        }
    }
    return latest;
}

/** Rotation complete: each member uses a key other than `before`, and every other member holds it. */
function rotationDone(ms, before) {
    let latest = 0;
    for (const [i, m] of ms.entries()) {
        const cur = m.inUse();
        if (!cur || cur.key === before[i]) return null;
        latest = Math.max(latest, cur.at);
        for (const o of ms) {
            if (o === m) continue;
            const at = o.received.get(m.id)?.get(cur.key);
            if (at === undefined) return null;
            latest = Math.max(latest, at);
        }
    }
    return latest;
}

/** What is still missing (for the timeout message). */
function missing(ms, before) {
    const out = [];
    for (const [i, m] of ms.entries()) {
        const cur = m.inUse();
        if (!cur) out.push(`${m.user.user_id}: no own key`);
        else if (before && cur.key === before[i]) out.push(`${m.user.user_id}: still uses index ${cur.key.split(":")[0]}`);
        for (const o of ms) {
            if (o === m) continue;
            const got = m.received.get(o.id);
            if (!before && (!got || got.size === 0)) out.push(`${m.user.user_id}: nothing from ${o.user.user_id}`);
            const oc = o.inUse();
            if (before && oc && !got?.has(oc.key)) out.push(`${m.user.user_id}: lacks ${o.user.user_id}'s key in use`);
        }
    }
    return out.slice(0, 12).join("; ") || "(nothing?)";
}

async function coordinator() {
    const hs = opt("--hs");
    const secret = opt("--reg-secret");
    const n = Number(opt("--members", "8"));
    const out = opt("--out");
    const useKeyDelay = opt("--use-key-delay");
    if (!hs || !secret || !(n >= 3)) {
        console.error(
            "usage: js-groups.mjs --hs URL --reg-secret SECRET [--members N>=3] [--out FILE] [--use-key-delay MS]",
        );
        process.exit(2);
    }
    const timer = setTimeout(() => {
        const phase = phaseName;
        fail(`not finished within ${TOTAL_BOUND_MS / 1000} s (phase: ${phase}; missing: ${missing(phaseMembers, phaseBefore)})`);
    }, TOTAL_BOUND_MS);
    let phaseName = "setup";
    let phaseMembers = [];
    let phaseBefore = null;

    const tSetup = now();
    const suffix = Math.random().toString(36).slice(2, 8);
    const users = [];
    for (let i = 1; i <= n; i++) users.push(await register(hs, secret, `jsg${i}-${suffix}`));
    const room = await createRoom(hs, users, { encrypted: true, name: "js-groups bench" });
    members = users.map((u) => new Member(hs, u, room, n, useKeyDelay));
    phaseName = "workers ready";
    phaseMembers = members;
    await new Promise((resolve, reject) => {
        failHandler = reject;
        Promise.all(members.map((m) => m.next((e) => e.ev === "ready"))).then(resolve);
    });
    failHandler = null;
    const setupMs = now() - tSetup;

    // Join.
    phaseName = "join";
    const t0 = now();
    for (const m of members) m.send({ cmd: "join" });
    const joinAt = await until("join", () => joinDone(members));
    const joinMs = joinAt - t0;

    // Leave of the last member; the others rotate.
    await sleep(1000);
    const rest = members.slice(0, -1);
    const leaver = members.at(-1);
    const before = rest.map((m) => m.inUse().key);
    const indexBefore = rest.map((m) => Number(m.inUse().key.split(":")[0]));
    phaseName = "rotation";
    phaseMembers = rest;
    phaseBefore = before;
    const t1 = now();
    leaver.send({ cmd: "leave" });
    const rotAt = await until("rotation", () => rotationDone(rest, before));
    const rotationMs = rotAt - t1;
    const indexAfter = rest.map((m) => Number(m.inUse().key.split(":")[0]));
    // How long after the leave the first rotated key reached someone (before the sender used it).
    const firstNewKeyMs =
        Math.min(
            ...rest.flatMap((m) =>
                [...m.received.entries()]
                    .filter(([from]) => from !== leaver.id)
                    .flatMap(([, keys]) => [...keys.values()].filter((at) => at >= t1)),
            ),
        ) - t1;
    clearTimeout(timer);

    const result = {
        sfu8_join_ms: Math.round(joinMs * 10) / 10,
        sfu_rotation_ms: Math.round(rotationMs * 10) / 10,
        members: n,
        sdk: SDK_VERSION,
        node: process.version,
        crypto: "rust (initRustCrypto, in-memory)",
        processes: n,
        use_key_delay_ms: useKeyDelay === undefined ? "js-sdk default (1000)" : Number(useKeyDelay),
        join_all_memberships_seen_ms: allSaw(members, n, t0),
        rotation_leave_seen_ms: allSaw(rest, n - 1, t1),
        rotation_first_new_key_received_ms: Math.round(firstNewKeyMs * 10) / 10,
        key_index_before: indexBefore,
        key_index_after: indexAfter,
        setup_ms: Math.round(setupMs),
        loadavg: (await import("node:fs")).readFileSync("/proc/loadavg", "utf8").trim(),
    };
    const line = JSON.stringify(result);
    console.log(line);
    if (out) writeFileSync(out, JSON.stringify(result, null, 2) + "\n");
    await cleanup();
    process.exit(0);
}

const main = argv.includes("--worker") ? worker : coordinator;
main().catch(async (e) => {
    if (argv.includes("--worker")) {
        process.stdout.write(JSON.stringify({ ev: "fatal", at: now(), message: String(e?.stack ?? e) }) + "\n");
        process.exit(1);
    }
    console.error(`js-groups failed: ${e?.message ?? e}`);
    await cleanup();
    process.exit(1);
});
