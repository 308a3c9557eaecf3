#!/usr/bin/env node
// A matrix-js-sdk peer in headless Chromium (Debian's /usr/bin/chromium), with the same
// JSON-lines protocol and arguments as `js-peer.mjs peer` (see docs/interop.md):
//
//   node browser-peer.mjs peer --hs URL --user-id U --device-id D --token T --room R
//
// It bundles js-sdk 43 with esbuild, serves the page from http://127.0.0.1 (a secure context:
// getUserMedia needs one), grants the fake microphone (without the permission Chromium hides
// host candidates behind mDNS names) and relays commands and events.

import http from "node:http";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import path from "node:path";

import * as esbuild from "esbuild";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const t0 = Date.now();
const emit = (ev, fields = {}) => process.stdout.write(JSON.stringify({ ev, t: Date.now() - t0, ...fields }) + "\n");

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

async function main() {
    const opts = args(process.argv.slice(2));
    if (opts._[0] !== "peer") {
        console.error("usage: browser-peer.mjs peer --hs URL --user-id U --device-id D --token T --room R");
        process.exit(2);
    }
    opts.candidates = "browser";
    const bundle = await esbuild.build({
        entryPoints: [path.join(here, "browser/entry.mjs")],
        bundle: true,
        format: "esm",
        platform: "browser",
        write: false,
        logLevel: "error",
        define: { "process.env.NODE_ENV": '"production"', global: "globalThis" },
    });
    const js = bundle.outputFiles[0].contents;
    const page = '<!doctype html><meta charset="utf-8"><title>interop</title><script type="module" src="/bundle.js"></script>';
    const server = http.createServer((req, res) => {
        if (req.url === "/bundle.js") {
            res.writeHead(200, { "content-type": "text/javascript" });
            res.end(js);
        } else {
            res.writeHead(200, { "content-type": "text/html" });
            res.end(page);
        }
    });
    await new Promise((r) => server.listen(0, "127.0.0.1", r));
    const origin = `http://127.0.0.1:${server.address().port}`;

    const browser = await chromium.launch({
        executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
        args: [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            "--autoplay-policy=no-user-gesture-required",
        ],
    });
    const context = await browser.newContext();
    await context.grantPermissions(["microphone", "camera"], { origin });
    const tab = await context.newPage();
    tab.on("console", (m) => console.error(`[page ${m.type()}] ${m.text()}`));
    tab.on("pageerror", (e) => console.error(`[page error] ${e}`));
    await tab.exposeFunction("__emit", (line) => process.stdout.write(line + "\n"));
    await tab.goto(origin + "/");
    await tab.waitForFunction(() => typeof window.startPeer === "function");
    await tab.evaluate((o) => window.startPeer(o), opts);

    const quit = async () => {
        try {
            await tab.evaluate(() => window.__command({ cmd: "quit" }));
        } catch {}
        await browser.close().catch(() => {});
        server.close();
        process.exit(0);
    };
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
        if (c.cmd === "quit") return quit();
        await tab.evaluate((cmd) => window.__command(cmd), c).catch((e) => emit("error", { cmd: c.cmd, message: String(e) }));
    });
    rl.on("close", quit);
}

main().catch((e) => {
    emit("fatal", { message: String(e?.stack ?? e) });
    process.exit(1);
});
