// The js-sdk side of a peer, shared by the Node peer (js-peer.mjs) and the browser peer
// (browser/entry.mjs): creates the client, reports events, and returns the command handlers.
// `sdk` is the matrix-js-sdk module, `m` the enums it needs (passed in so that the browser
// bundle imports them statically), `emit(ev, fields)` writes one protocol event.

export async function startPeer({ sdk, m, sdkLabel, opts, emit, media }) {
    const { CallEvent, CallState, CallErrorCode, CallEventHandlerEvent, MatrixRTCSessionEvent } = m;
    const client = sdk.createClient({
        baseUrl: opts.hs,
        userId: opts["user-id"],
        deviceId: opts["device-id"],
        accessToken: opts.token,
        useE2eForGroupCall: false,
        timelineSupport: false,
        // --force-turn: relay candidates only (js-sdk sets iceTransportPolicy "relay"), through
        // the TURN servers js-sdk fetched from /voip/turnServer.
        forceTURN: Boolean(opts["force-turn"]),
    });
    if (opts.crypto) await client.initRustCrypto({ useIndexedDB: false });

    // Report what goes on the wire, so the harness can check the candidate style.
    const sendEvent = client.sendEvent.bind(client);
    client.sendEvent = (roomId, ...rest) => {
        const [type, content] = typeof rest[0] === "string" && typeof rest[1] === "object" ? rest : rest.slice(1);
        if (typeof type === "string" && type.startsWith("m.call.")) {
            const sdp = content?.offer?.sdp ?? content?.answer?.sdp ?? content?.description?.sdp ?? "";
            emit("sent", {
                type,
                call_id: content?.call_id,
                sdp_candidates: sdp.split("\r\n").filter((l) => l.startsWith("a=candidate:")).length,
                candidates: Array.isArray(content?.candidates) ? content.candidates.length : undefined,
                reason: content?.reason,
            });
        }
        return sendEvent(roomId, ...rest);
    };
    const encryptAndSendToDevice = client.encryptAndSendToDevice?.bind(client);
    if (encryptAndSendToDevice) {
        client.encryptAndSendToDevice = (type, targets, content) => {
            emit("sent-to-device", { type, encrypted: true, targets: targets.length ?? undefined });
            return encryptAndSendToDevice(type, targets, content);
        };
    }

    let call = null; // the current MatrixCall
    let incoming = null; // an incoming call not yet answered or rejected
    let rtc = null; // the MatrixRTCSession

    const watch = (c, direction) => {
        emit("call", { call_id: c.callId, direction, peer: c.getOpponentMember?.()?.userId ?? c.invitee ?? null });
        c.on(CallEvent.State, (state, old) => emit("state", { call_id: c.callId, state, old }));
        c.on(CallEvent.RemoteHoldUnhold, (onHold) => emit("hold", { call_id: c.callId, remote_on_hold: onHold }));
        c.on(CallEvent.LocalHoldUnhold, (onHold) => emit("hold", { call_id: c.callId, local_on_hold: onHold }));
        c.on(CallEvent.Replaced, (n) => {
            emit("replaced", { call_id: c.callId, by: n.callId });
            if (call === c) call = n;
            watch(n, "replacement");
        });
        c.on(CallEvent.Hangup, () =>
            emit("ended", {
                call_id: c.callId,
                reason: c.hangupReason ?? null,
                party: c.hangupParty ?? null,
            }),
        );
        c.on(CallEvent.Error, (e) => emit("error", { call_id: c.callId, code: e.code, message: String(e.message) }));
    };

    client.on(CallEventHandlerEvent.Incoming, (c) => {
        // --busy: refuse a call that comes in during another one. js-sdk has no busy policy of
        // its own; m.call.reject is what stops a js-sdk caller (it ignores an m.call.hangup
        // from a callee it has not chosen yet, see docs/interop.md).
        if (opts.busy && call && call.state !== CallState.Ended) {
            emit("incoming", { call_id: c.callId, from: c.getOpponentMember?.()?.userId ?? null, busy: true });
            watch(c, "incoming");
            c.reject();
            return;
        }
        incoming = c;
        emit("incoming", { call_id: c.callId, from: c.getOpponentMember?.()?.userId ?? null, room_id: c.roomId });
        watch(c, "incoming");
        // Glare: js-sdk answers the replacement itself; keep track of the newest call.
        if (call && call.state !== CallState.Ended && c.callId !== call.callId) emit("glare-incoming", { call_id: c.callId });
        c.on(CallEvent.State, (s) => {
            if (s === CallState.Connected || s === CallState.Connecting) call = c;
        });
    });

    const ready = new Promise((resolve) => {
        client.on("sync", (state) => {
            if (state === "PREPARED" || state === "SYNCING") resolve();
        });
    });
    await client.startClient({ initialSyncLimit: 1, lazyLoadMembers: false });
    await ready;
    // Relay-only calls need js-sdk's TURN servers (fetched by startClient, asynchronously).
    const turnServers = () => (client.getTurnServers() ?? []).filter((s) => [s.urls].flat().some((u) => String(u).startsWith("turn"))).length;
    if (opts["force-turn"]) {
        const deadline = Date.now() + 20000;
        while (turnServers() === 0) {
            if (Date.now() > deadline) throw new Error("--force-turn: no TURN server from /voip/turnServer within 20 s");
            await new Promise((r) => setTimeout(r, 50));
        }
    }
    // Incoming invites are handled only after the first sync (callEventHandler starts on it).
    emit("ready", {
        user_id: client.getUserId(),
        device_id: client.getDeviceId(),
        sdk: sdkLabel,
        candidates: opts.candidates ?? "sdp",
        voip: client.supportsVoip(),
        turn_servers: turnServers(),
        force_turn: Boolean(opts["force-turn"]),
    });

    const stats = async (c) => {
        let sent = 0;
        let received = 0;
        let pair = null;
        if (c?.peerConn) {
            const report = await c.peerConn.getStats();
            const byId = new Map();
            let selectedId = null;
            report.forEach((s) => {
                byId.set(s.id, s);
                if (s.type === "outbound-rtp" && (s.kind ?? s.mediaType) === "audio") sent += s.packetsSent ?? 0;
                if (s.type === "inbound-rtp" && (s.kind ?? s.mediaType) === "audio") received += s.packetsReceived ?? 0;
                if (s.type === "transport" && s.selectedCandidatePairId) selectedId = s.selectedCandidatePairId;
            });
            // The selected pair: the transport's, else the nominated succeeded one.
            let p = selectedId ? byId.get(selectedId) : null;
            if (!p) report.forEach((s) => { if (!p && s.type === "candidate-pair" && s.nominated && s.state === "succeeded") p = s; });
            if (p) {
                const side = (id) => {
                    const x = byId.get(id);
                    return x ? { type: x.candidateType, address: x.address ?? x.ip, relay_protocol: x.relayProtocol } : null;
                };
                pair = { local: side(p.localCandidateId), remote: side(p.remoteCandidateId), nominated: Boolean(p.nominated) };
            }
        }
        return { sent, received, pair };
    };

    const room = () => client.getRoom(opts.room);

    const commands = {
        async call(c) {
            const mc = client.createCall(c.room ?? opts.room, c.to ? { invitee: c.to } : undefined);
            if (!mc) throw new Error("createCall returned null (no VoIP support)");
            if (c.to) mc.invitee = c.to;
            call = mc;
            watch(mc, "outgoing");
            if (c.video) await mc.placeVideoCall();
            else await mc.placeVoiceCall();
        },
        async answer() {
            if (!incoming) throw new Error("no incoming call");
            call = incoming;
            incoming = null;
            // A video call is answered with the camera (the test pattern in the Node peer).
            await call.answer(true, call.type === "video");
        },
        async reject() {
            if (!incoming) throw new Error("no incoming call");
            incoming.reject();
            incoming = null;
        },
        async hangup() {
            if (!call) throw new Error("no call");
            call.hangup(CallErrorCode.UserHangup, false);
        },
        async hold() {
            if (!call) throw new Error("no call");
            call.setRemoteOnHold(true);
        },
        async unhold() {
            if (!call) throw new Error("no call");
            call.setRemoteOnHold(false);
        },
        async stats() {
            const s = await stats(call);
            emit("stats", {
                call_id: call?.callId ?? null,
                state: call?.state ?? null,
                local_on_hold: call?.isLocalOnHold?.() ?? false,
                remote_on_hold: call?.isRemoteOnHold?.() ?? false,
                ...s,
            });
        },
        // {"cmd":"measure-audio","ms":2000,"target":440,"freqs":[...]}: decoded audio of the
        // current call's remote track; an `audio` event with the tone analysis.
        async "measure-audio"(c) {
            if (!call?.peerConn) throw new Error("no call");
            if (!media?.measureAudio) throw new Error("this peer cannot read decoded audio");
            const r = await media.measureAudio(call.peerConn, c);
            emit("audio", { call_id: call.callId, ...r });
        },
        // {"cmd":"measure-video","ms":3000}: decoded video of the current call's remote track;
        // a `video` event (frame numbers of the test pattern, size, luma movement).
        async "measure-video"(c) {
            if (!call?.peerConn) throw new Error("no call");
            if (!media?.measureVideo) throw new Error("this peer cannot read decoded video");
            const r = await media.measureVideo(call.peerConn, c);
            emit("video", { call_id: call.callId, ...r });
        },
        async "rtc-join"() {
            const r = room();
            if (!r) throw new Error(`room ${opts.room} not known`);
            rtc = client.matrixRTC.getRoomSession(r);
            rtc.on(MatrixRTCSessionEvent.MembershipsChanged, (_old, memberships) =>
                emit("rtc-members", {
                    members: memberships.map((m) => ({ user_id: m.sender ?? m.userId, device_id: m.deviceId })),
                }),
            );
            rtc.on(MatrixRTCSessionEvent.EncryptionKeyChanged, (key, index, membership) => {
                const userId = membership.userId ?? membership.sender;
                emit("rtc-key", {
                    user_id: userId,
                    device_id: membership.deviceId,
                    index,
                    key: btoa(String.fromCharCode(...key)),
                    local: userId === client.getUserId() && membership.deviceId === client.getDeviceId(),
                });
            });
            rtc.joinRoomSession(
                [{ type: "livekit", livekit_service_url: "http://127.0.0.1:9/livekit", livekit_alias: opts.room }],
                undefined,
                { manageMediaKeys: true, callIntent: "audio", useKeyDelay: 0, keyRotationGracePeriodMs: 0 },
            );
            emit("rtc-joined", { room_id: opts.room });
        },
        async "rtc-leave"() {
            if (!rtc) throw new Error("not joined");
            const ok = await rtc.leaveRoomSession(5000);
            emit("rtc-left", { ok });
        },
        async quit() {
            emit("bye", {});
            client.stopClient();
        },
    };
    return commands;

}
