// What matrix-js-sdk expects from a newer Node than the one the harness may run on. No imports:
// safe to load from any script (unlike shim.mjs, which loads the native WebRTC binding).

/** `Promise.withResolvers`: js-sdk >= 37.6 targets Node 22; Node 20 lacks it. */
export function polyfillPromiseWithResolvers() {
    if (!Promise.withResolvers) {
        Promise.withResolvers = function () {
            let resolve;
            let reject;
            const promise = new Promise((a, b) => {
                resolve = a;
                reject = b;
            });
            return { promise, resolve, reject };
        };
    }
}
