#!/usr/bin/env node
// The anchor side of `cargo xtask bench`: N 1:1 voice calls between two real matrix-js-sdk
// peers (Node + @roamhq/wrtc), through the same Synapse, timed the same way as the Rust side
// (crates/voip/examples/setup_bench.rs): from the caller's `call` command to "connected with media
// flowing" on both sides (CallState.Connected and at least one inbound audio packet each).
//
//   node bench/js-setup.mjs --hs URL [--calls 10] [--out results.json]
//
// Reuses interop/'s pinned install and its peer (interop/js-peer.mjs, JSON lines on
// stdin/stdout) as a black box: two peer processes, the callee answers as soon as it rings.
// Must run inside the network namespace that `cargo xtask bench` creates (wrtc ignores `lo`
// when a real interface exists).

import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

const here = dirname(fileURLToPath(import.meta.url));
const peerScript = join(here, "..", "interop", "js-peer.mjs");

const argv = process.argv.slice(2);
const opt = (name, dflt) => {
    const i = argv.indexOf(name);
    return i >= 0 && argv[i + 1] !== undefined ? argv[i + 1] : dflt;
};
const hs = opt("--hs");
const n = Number(opt("--calls", "10"));
const out = opt("--out");
if (!hs) {
    console.error("usage: js-setup.mjs --hs URL [--calls N] [--out FILE]");
    process.exit(2);
}

const BOUND_MS = 30_000;
const now = () => Number(process.hrtime.bigint()) / 1e6;

function run(args) {
    return new Promise((resolve, reject) => {
        const p = spawn(process.execPath, [peerScript, ...args], { stdio: ["ignore", "pipe", "inherit"] });
        let text = "";
        p.stdout.on("data", (d) => (text += d));
        p.on("exit", (code) => (code === 0 ? resolve(text) : reject(new Error(`js-peer ${args[0]} exited ${code}`))));
    });
}

/** A js-peer process: send commands, wait for events. */
class Peer {
    constructor(user, room) {
        this.waiters = [];
        this.events = [];
        this.proc = spawn(
            process.execPath,
            [peerScript, "peer", "--hs", hs, "--user-id", user.user_id, "--device-id", user.device_id,
                "--token", user.access_token, "--room", room],
            { stdio: ["pipe", "pipe", "ignore"] },
        );
        createInterface({ input: this.proc.stdout }).on("line", (line) => {
            let ev;
            try {
                ev = JSON.parse(line);
            } catch {
                return;
            }
            ev.at = now();
            this.events.push(ev);
            if (ev.ev === "fatal") console.error(`peer ${user.user_id}: ${ev.message}`);
            this.waiters = this.waiters.filter((w) => !w(ev));
        });
    }
    send(cmd) {
        this.proc.stdin.write(JSON.stringify(cmd) + "\n");
    }
    /** The first event (from now on) for which `pick` holds. */
    next(what, pick) {
        return new Promise((resolve, reject) => {
            const timer = setTimeout(() => reject(new Error(`${what}: nothing after ${BOUND_MS} ms`)), BOUND_MS);
            this.waiters.push((ev) => {
                if (!pick(ev)) return false;
                clearTimeout(timer);
                resolve(ev);
                return true;
            });
        });
    }
    /** Polls stats until at least one audio packet came in; returns when it was seen. */
    async firstPacket(what) {
        const deadline = now() + BOUND_MS;
        while (now() < deadline) {
            const s = this.next(what, (e) => e.ev === "stats");
            this.send({ cmd: "stats" });
            const ev = await s;
            if (ev.received > 0) return ev.at;
            await new Promise((r) => setTimeout(r, 2));
        }
        throw new Error(`${what}: no audio packet after ${BOUND_MS} ms`);
    }
    quit() {
        this.send({ cmd: "quit" });
    }
}

async function oneCall(alice, bob) {
    const t0 = now();
    const rings = bob.next("incoming call", (e) => e.ev === "incoming");
    const aConn = alice.next("caller connected", (e) => e.ev === "state" && e.state === "connected");
    const answered = alice.next("answer received", (e) => e.ev === "state" && e.state === "connecting");
    alice.send({ cmd: "call" });
    const ring = await rings;
    // Only this call's events (a late event of the previous call must not count).
    const bConn = bob.next("callee connected", (e) => e.ev === "state" && e.state === "connected" && e.call_id === ring.call_id);
    bob.send({ cmd: "answer" });
    const marks = { invite_received: ring.at - t0, answer_sent: now() - t0 };
    const [a, b, ans] = await Promise.all([aConn, bConn, answered]);
    marks.answer_received = ans.at - t0;
    marks.caller_connected = a.at - t0;
    marks.callee_connected = b.at - t0;
    const [pa, pb] = await Promise.all([alice.firstPacket("caller media"), bob.firstPacket("callee media")]);
    marks.caller_first_packet = pa - t0;
    marks.callee_first_packet = pb - t0;
    marks.total = Math.max(...Object.values(marks));
    const endA = alice.next("caller ended", (e) => e.ev === "ended");
    const endB = bob.next("callee ended", (e) => e.ev === "ended");
    alice.send({ cmd: "hangup" });
    await Promise.all([endA, endB]);
    return marks;
}

async function main() {
    const setup = JSON.parse((await run(["setup", "--hs", hs, "--users", "jsa,jsb"])).trim().split("\n").pop());
    const [ua, ub] = setup.users;
    const alice = new Peer(ua, setup.room_id);
    const bob = new Peer(ub, setup.room_id);
    await Promise.all([alice.next("alice ready", (e) => e.ev === "ready"), bob.next("bob ready", (e) => e.ev === "ready")]);
    await oneCall(alice, bob); // warm-up, unmeasured (as on the Rust side)
    const calls = [];
    for (let i = 0; i < n; i++) {
        const c = await oneCall(alice, bob);
        console.log(`js call ${i}: ${JSON.stringify(c)}`);
        calls.push(c);
    }
    alice.quit();
    bob.quit();
    if (out) writeFileSync(out, JSON.stringify({ calls }, null, 2));
    setTimeout(() => process.exit(0), 200);
}

main().catch((e) => {
    console.error(`js-setup failed: ${e?.stack ?? e}`);
    process.exit(1);
});
