#!/usr/bin/env node
// One real matrix-js-sdk peer per process, driven by JSON lines (see docs/interop.md).
//
//   node js-peer.mjs setup --hs URL [--users alice,bob] [--encrypted]   register users, create a shared room
//   node js-peer.mjs peer  --hs URL --user-id @a:localhost --device-id DEV --token TOKEN --room !r
//                          [--sdk 43|40] [--candidates sdp|trickle] [--crypto] [--busy] [--tone HZ]
//                          [--force-turn]
//
// `peer` reads commands from stdin, one JSON object a line, and writes events to stdout, one
// JSON object a line. Everything else (js-sdk's own logging) goes to stderr. `--force-turn` is
// js-sdk's forceTURN (relay candidates only); `stats` events carry the selected candidate pair.
//
// Commands: {"cmd":"call","to":"@b:localhost"}  {"cmd":"answer"}  {"cmd":"reject"}
//           {"cmd":"hangup"}  {"cmd":"hold"}  {"cmd":"unhold"}  {"cmd":"stats"}
//           {"cmd":"measure-audio","ms":2000,"target":440,"freqs":[300,1000]}
//           {"cmd":"rtc-join"}  {"cmd":"rtc-leave"}  {"cmd":"quit"}
// Events:   ready, incoming, state, hold, ended, stats, audio, error, rtc-members, rtc-key,
//           rtc-joined, rtc-left, bye. Each has "ev" and "t" (ms since start).

import { api, createRoom, quietLogger } from "./lib/homeserver.mjs";
import { setupShim } from "./lib/shim.mjs";
import { startPeer } from "./lib/peer-core.mjs";

const t0 = Date.now();
const emit = (ev, fields = {}) => process.stdout.write(JSON.stringify({ ev, t: Date.now() - t0, ...fields }) + "\n");

// js-sdk logs through console.log/info/debug: keep stdout for the protocol.
for (const k of ["log", "info", "debug", "trace"]) console[k] = (...a) => console.error(...a);

function args(argv) {
    const out = { _: [] };
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        if (a.startsWith("--")) {
            const next = argv[i + 1];
            if (next === undefined || next.startsWith("--")) out[a.slice(2)] = true;
            else out[a.slice(2)] = argv[++i];
        } else out._.push(a);
    }
    return out;
}

const opts = args(process.argv.slice(2));
const verb = opts._[0];

async function register(hs, name) {
    const body = { username: name, password: `pw-${name}`, initial_device_display_name: `interop ${name}` };
    let r = await api(hs, "POST", "/_matrix/client/v3/register", body);
    if (r.status === 401 && r.json.session) {
        r = await api(hs, "POST", "/_matrix/client/v3/register", {
            ...body,
            auth: { type: "m.login.dummy", session: r.json.session },
        });
    }
    if (r.status !== 200) throw new Error(`register ${name}: ${r.status} ${JSON.stringify(r.json)}`);
    return { user_id: r.json.user_id, device_id: r.json.device_id, access_token: r.json.access_token };
}

/** Registers fresh users (random suffix) and a room they all joined; prints one JSON line. */
async function setup() {
    const hs = opts.hs;
    const names = String(opts.users ?? "alice,bob").split(",");
    const suffix = Math.random().toString(36).slice(2, 8);
    const users = [];
    for (const n of names) users.push(await register(hs, `${n}-${suffix}`));
    // One room with everybody, plus one room per extra pair (--pairs 0-2,1-2: indices into users).
    const encrypted = Boolean(opts.encrypted);
    const rooms = [await createRoom(hs, users, { encrypted })];
    for (const pair of String(opts.pairs ?? "").split(",").filter(Boolean)) {
        rooms.push(await createRoom(hs, pair.split("-").map((i) => users[Number(i)]), { encrypted }));
    }
    process.stdout.write(JSON.stringify({ room_id: rooms[0], rooms, users }) + "\n");
}

async function peer() {
    const sdkName = String(opts.sdk ?? "43") === "40" ? "matrix-js-sdk-40" : "matrix-js-sdk";
    const trickle = opts.candidates === "trickle";
    const media = setupShim({ trickle, toneHz: Number(opts.tone ?? 440) });
    const sdk = await import(sdkName);
    const { CallEvent, CallState, CallErrorCode } = await import(`${sdkName}/lib/webrtc/call.js`);
    const { CallEventHandlerEvent } = await import(`${sdkName}/lib/webrtc/callEventHandler.js`);
    const { MatrixRTCSessionEvent } = await import(`${sdkName}/lib/matrixrtc/MatrixRTCSession.js`);
    const { logger } = await import(`${sdkName}/lib/logger.js`);
    quietLogger(logger, process.env.JS_PEER_LOG ?? "warn");
    const m = { CallEvent, CallState, CallErrorCode, CallEventHandlerEvent, MatrixRTCSessionEvent };
    const sdkLabel = sdkName === "matrix-js-sdk" ? "43" : "40";
    const commands = await startPeer({ sdk, m, sdkLabel, opts, emit, media });
    const quit = commands.quit;
    commands.quit = async () => {
        await quit();
        media.stop();
        setTimeout(() => process.exit(0), 50);
    };

    const readline = await import("node:readline");
    const rl = readline.createInterface({ input: process.stdin });
    rl.on("line", async (line) => {
        if (!line.trim()) return;
        let c;
        try {
            c = JSON.parse(line);
        } catch {
            emit("error", { message: `not JSON: ${line}` });
            return;
        }
        const f = commands[c.cmd];
        if (!f) return emit("error", { cmd: c.cmd, message: "unknown command" });
        try {
            await f(c);
            emit("ok", { cmd: c.cmd });
        } catch (e) {
            emit("error", { cmd: c.cmd, message: String(e?.message ?? e) });
        }
    });
    rl.on("close", () => commands.quit());
}

const main = verb === "setup" ? setup : verb === "peer" ? peer : null;
if (!main) {
    console.error("usage: js-peer.mjs setup --hs URL | peer --hs URL --user-id U --device-id D --token T --room R");
    process.exit(2);
}
main().catch((e) => {
    emit("fatal", { message: String(e?.stack ?? e) });
    process.exit(1);
});
