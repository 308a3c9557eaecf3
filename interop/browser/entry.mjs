// The browser side of browser-peer.mjs: js-sdk 43 bundled by esbuild and run in headless
// Chromium, with the same peer logic as the Node peer (lib/peer-core.mjs). The page talks to
// browser-peer.mjs through two functions: window.__emit (exposed by Playwright) for events and
// window.__command (defined here) for commands. Its media (a tone and the frame-number test
// pattern sent, decoded audio and video read back) is in media.mjs.

import * as sdk from "matrix-js-sdk";
import { CallEvent, CallState, CallErrorCode } from "matrix-js-sdk/lib/webrtc/call.js";
import { CallEventHandlerEvent } from "matrix-js-sdk/lib/webrtc/callEventHandler.js";
import { MatrixRTCSessionEvent } from "matrix-js-sdk/lib/matrixrtc/MatrixRTCSession.js";
import { logger } from "matrix-js-sdk/lib/logger.js";

import { startPeer } from "../lib/peer-core.mjs";
import { installMedia } from "./media.mjs";

const t0 = Date.now();
const emit = (ev, fields = {}) => window.__emit(JSON.stringify({ ev, t: Date.now() - t0, ...fields }));

window.startPeer = async (opts) => {
    // js-sdk's loggers force DEBUG; keep warnings and errors (they reach browser-peer's stderr).
    const orig = logger.methodFactory;
    logger.methodFactory = function (name, level, loggerName) {
        const raw = orig.call(this, name, level, loggerName);
        return name === "warn" || name === "error" ? raw : () => {};
    };
    if (typeof logger.rebuild === "function") logger.rebuild();
    const m = { CallEvent, CallState, CallErrorCode, CallEventHandlerEvent, MatrixRTCSessionEvent };
    // The microphone (a 440 Hz oscillator, `--tone HZ`) and camera (the test pattern) js-sdk
    // gets, and the decoded-media readers (media.mjs); before the client exists.
    const media = await installMedia({ toneHz: Number(opts.tone ?? 440) });
    const commands = await startPeer({ sdk, m, sdkLabel: "43-chromium", opts, emit, media });
    window.__command = async (c) => {
        const f = commands[c.cmd];
        if (!f) return emit("error", { cmd: c.cmd, message: "unknown command" });
        try {
            await f(c);
            emit("ok", { cmd: c.cmd });
        } catch (e) {
            emit("error", { cmd: c.cmd, message: String(e?.message ?? e) });
        }
    };
};
