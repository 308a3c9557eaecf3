//! `cargo xtask bench [--calls N] [--debug] [--no-groups] [--no-js] [--no-install] [--no-build]
//! [--no-handshake] [--no-sync-modes]`: what users feel, side by side with the anchor, in one run on the same
//! machine (issue #10, docs/benchmarks.md).
//!
//! `cargo xtask bench --media [--seconds S] [--runs N] [--no-video] [--debug] [--no-build]
//! [--no-install]` is the media benchmark instead (issue #17, see [`media`]): CPU, memory and
//! mouth-to-ear delay of one decoded voice call and one 640×480@30 video call, matrix-voip-rs
//! against libwebrtc in the same run.
//!
//! 1. builds `synapse-rig` and the `voip` example `setup_bench` (release, as an app ships;
//!    `--debug`: the test build);
//! 2. `npm ci` in `interop/` unless its `node_modules` exists (or `--no-install`);
//! 3. creates a network namespace (root: wrtc ignores `lo` when a real interface exists) and
//!    starts one Synapse in it, with coturn beside it (`/voip/turnServer` hands out its REST
//!    credentials);
//! 4. runs, inside it and one after the other, `setup_bench` (raw room-event delivery, N Rust
//!    calls, with `--groups` the 4-member mesh and 8-member SFU joins and the key rotation) and
//!    `bench/js-setup.mjs` (N matrix-js-sdk calls on Node + wrtc) and, with the groups,
//!    `bench/js-groups.mjs` (8 js-sdk MatrixRTC members in SFU mode: join and key rotation);
//!    then `setup_bench` once more per other sync mode (`--sync helper|client-sync|sync-service`,
//!    and `client-sync` again with 1.5 s between calls; calls only; `--no-sync-modes` skips
//!    them) and once relay-only through coturn (`--sync helper --relay-only`), for the "Sync
//!    modes" table;
//! 5. prints the results table with ratios (also written to `bench/results/summary.md`), keeps
//!    the raw JSON in `bench/results/`, and draws `docs/setup-time.svg`.
//!
//! The floor is two raw room-event deliveries (medians, measured in this run) plus the webrtc-rs
//! loopback handshake to first packet (voip-webrtc's `media_start` voice bench, run in this run
//! before the calls; `--no-handshake` uses its last recorded median instead).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context};

use crate::netns::{status, Netns, NsCoturn};
use serde_json::Value;

/// voip-webrtc `media_start` bench, voice (docs/benchmarks.md, issue #5): mean ms, used only
/// with `--no-handshake`.
const RECORDED_HANDSHAKE_MS: f64 = 67.4;

/// Runs voip-webrtc's `media_start` voice bench (criterion, optimised) and returns its median in
/// ms, from criterion's `estimates.json`.
fn bare_handshake_ms(target: &Path) -> anyhow::Result<f64> {
    println!("==> webrtc-rs loopback handshake (voip-webrtc media_start bench, voice)");
    cargo(&["bench", "-q", "-p", "voip-webrtc", "--bench", "media_start", "--", "voice"])?;
    let est = target.join("criterion/descriptions_set_to_media_flowing/voice/new/estimates.json");
    let v = read_json(&est)?;
    let ns =
        v["median"]["point_estimate"].as_f64().ok_or_else(|| anyhow!("no median in {}", est.display()))?;
    Ok(ns / 1e6)
}

/// The sync modes run after the main one: (result name, `setup_bench --sync` mode, pause before
/// each call in ms). `client-sync-idle` is `Client::sync` with every call placed 1.5 s after the
/// previous one ended: its 1 s pause then does not fall into the set-up (docs/benchmarks.md).
const SYNC_MODES: [(&str, &str, u32); 4] = [
    ("helper", "helper", 0),
    ("client-sync", "client-sync", 0),
    ("client-sync-idle", "client-sync", 1500),
    ("sync-service", "sync-service", 0),
];

/// Table names of the sync modes.
const SYNC_MODE_NAMES: [(&str, &str); 6] = [
    ("test-loop", "`sync_once` loop, 2 s long-poll (voip-testkit)"),
    ("helper", "`voip::sync::SyncLoop` (recommended)"),
    ("client-sync", "matrix-sdk `Client::sync`, calls back to back"),
    ("client-sync-idle", "matrix-sdk `Client::sync`, each call 1.5 s after the previous one ended"),
    ("sync-service", "matrix-sdk-ui `SyncService` (`voip::sync::sync_service`)"),
    ("relayed", "`voip::sync::SyncLoop`, relay-only through coturn (TURN from `/voip/turnServer`)"),
];

const STEPS: [&str; 8] = [
    "invite_received",
    "answer_sent",
    "answer_received",
    "caller_connected",
    "callee_connected",
    "caller_first_packet",
    "callee_first_packet",
    "total",
];

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| crate::root().join("target"))
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    status(Command::new(cargo).args(args).current_dir(crate::root()), &format!("cargo {}", args.join(" ")))
}

/// Synapse started by `synapse-rig` in the namespace, stopped (and its data removed) on drop.
struct Synapse {
    rig: PathBuf,
    data: String,
}

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ = Command::new(&self.rig).args(["stop", "--data", &self.data, "--rm"]).status();
    }
}

/// (median, p95) by nearest rank; NaN for no samples.
fn median_p95(xs: &[f64]) -> (f64, f64) {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    (rank(0.5), rank(0.95))
}

fn step(results: &Value, name: &str) -> Vec<f64> {
    results["calls"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c[name].as_f64()).collect())
        .unwrap_or_default()
}

fn read_json(p: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
}

/// A horizontal strip plot of the set-up totals per implementation, with the floor as a line.
fn svg(rows: &[(&str, Vec<f64>)], floor: f64) -> String {
    let max = rows.iter().flat_map(|(_, v)| v.iter().copied()).fold(floor, f64::max) * 1.1;
    let (w, left, right, row_h, top) = (760.0, 170.0, 30.0, 60.0, 40.0);
    let h = top + row_h * rows.len() as f64 + 50.0;
    let x = |ms: f64| left + (w - left - right) * ms / max;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" \
         font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"20\" font-size=\"14\">1:1 call set-up: invite → connected with media both \
         ways (ms)</text>\n"
    );
    for (i, (name, v)) in rows.iter().enumerate() {
        let y = top + row_h * (i as f64 + 0.5);
        let (med, p95) = median_p95(v);
        s.push_str(&format!("<text x=\"10\" y=\"{:.1}\">{name}</text>\n", y + 4.0));
        for (j, ms) in v.iter().enumerate() {
            let jitter = ((j * 7) % 11) as f64 - 5.0;
            s.push_str(&format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"#3573b9\" fill-opacity=\"0.6\"/>\n",
                x(*ms),
                y + jitter
            ));
        }
        for (val, label, color) in [(med, "median", "#d62728"), (p95, "p95", "#ff7f0e")] {
            if val.is_finite() {
                s.push_str(&format!(
                    "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{1:.1}\" y2=\"{2:.1}\" stroke=\"{color}\" \
                     stroke-width=\"2\"/>\n<text x=\"{0:.1}\" y=\"{3:.1}\" fill=\"{color}\" \
                     text-anchor=\"middle\">{label} {val:.0}</text>\n",
                    x(val),
                    y - 14.0,
                    y + 14.0,
                    if label == "median" { y - 18.0 } else { y + 26.0 }
                ));
            }
        }
    }
    let bottom = top + row_h * rows.len() as f64;
    s.push_str(&format!(
        "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{top}\" y2=\"{bottom}\" stroke=\"#2ca02c\" \
         stroke-dasharray=\"4 3\"/>\n<text x=\"{0:.1}\" y=\"{1:.1}\" fill=\"#2ca02c\" \
         text-anchor=\"middle\">floor {floor:.0}</text>\n",
        x(floor),
        bottom + 14.0
    ));
    s.push_str(&format!(
        "<line x1=\"{left}\" x2=\"{}\" y1=\"{bottom}\" y2=\"{bottom}\" stroke=\"black\"/>\n",
        w - right
    ));
    let tick = if max > 2000.0 { 500.0 } else { 250.0 };
    let mut t = 0.0;
    while t <= max {
        s.push_str(&format!(
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{bottom}\" y2=\"{1}\" stroke=\"black\"/>\n\
             <text x=\"{0:.1}\" y=\"{2}\" text-anchor=\"middle\">{t:.0}</text>\n",
            x(t),
            bottom + 5.0,
            bottom + 30.0
        ));
        t += tick;
    }
    s + "</svg>\n"
}

fn fmt_ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "–".into()
    }
}

pub(crate) fn run(args: &[String]) -> anyhow::Result<bool> {
    let flag = |f: &str| args.iter().any(|a| a == f);
    if flag("--media") {
        return media::run(args);
    }
    let calls: usize = match args.iter().position(|a| a == "--calls") {
        Some(i) => args.get(i + 1).context("--calls N")?.parse().context("--calls N")?,
        None => 10,
    };
    let root = crate::root();
    let target = target_dir();
    let profile = if flag("--debug") { "debug" } else { "release" };
    if !flag("--no-build") {
        println!("==> building synapse-rig and the setup_bench example ({profile})");
        cargo(&["build", "-q", "-p", "voip-testkit", "--no-default-features", "--bin", "synapse-rig"])?;
        let mut build =
            vec!["build", "-q", "-p", "voip", "--features", "sync-service", "--example", "setup_bench"];
        if profile == "release" {
            build.push("--release");
        }
        cargo(&build)?;
    }
    let rig = target.join("debug/synapse-rig");
    let rust_bench = target.join(profile).join("examples/setup_bench");
    let handshake = if flag("--no-handshake") { RECORDED_HANDSHAKE_MS } else { bare_handshake_ms(&target)? };
    let js = !flag("--no-js");
    if js && !flag("--no-install") && !root.join("interop/node_modules").is_dir() {
        status(
            Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(root.join("interop")),
            "npm ci in interop/",
        )?;
    }
    status(Command::new(&rig).arg("install"), "synapse-rig install")?;

    let pid = std::process::id();
    let ns = Netns::create(&format!("voip-bench-{pid}"))?;
    let data = format!("/dev/shm/voip-bench-{pid}");
    // coturn beside it, Synapse handing out its REST credentials (`/voip/turnServer`): the
    // relayed row.
    let turn_secret = format!("bench-{pid}-{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    let coturn = NsCoturn::start(&ns.0, &rig, &turn_secret)?;
    println!("==> Synapse in namespace {} (TURN {})", ns.0, coturn.uri);
    let out = ns
        .exec(&rig)
        .args(["start", "--data", &data, "--turn", &coturn.uri, "--turn-secret", &turn_secret])
        .stderr(Stdio::inherit())
        .output()?;
    let _synapse = Synapse { rig: rig.clone(), data: data.clone() };
    if !out.status.success() {
        bail!("synapse-rig start failed ({})", out.status);
    }
    let env: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.trim().strip_prefix("export ")?.split_once('=')?;
            Some((k.to_owned(), v.trim_matches(|c| c == '"' || c == '\'').to_owned()))
        })
        .collect();
    let hs = env.get("SYNAPSE_URL").ok_or_else(|| anyhow!("synapse-rig printed no SYNAPSE_URL"))?;
    let secret = env.get("SYNAPSE_REG_SECRET").ok_or_else(|| anyhow!("no SYNAPSE_REG_SECRET"))?;

    let results = root.join("bench/results");
    std::fs::create_dir_all(&results)?;
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let rust_json = results.join("rust.json");
    println!("==> Rust: {calls} calls through Synapse");
    let mut c = ns.exec(&rust_bench);
    c.args(["--homeserver", hs, "--registration-secret", secret, "--calls", &calls.to_string()]);
    c.arg("--out").arg(&rust_json);
    if !flag("--no-groups") {
        c.arg("--groups").arg("--synapse-log").arg(format!("{data}/homeserver.log"));
    }
    status(&mut c, "setup_bench")?;
    let rust = read_json(&rust_json)?;
    // The same calls under the other ways an app syncs (the run above: voip-testkit's loop).
    let mut modes: Vec<(&str, Value)> = vec![("test-loop", rust.clone())];
    if !flag("--no-sync-modes") {
        for (name, mode, gap) in SYNC_MODES {
            println!("==> Rust: {calls} calls, clients syncing with {mode}, {gap} ms before each call");
            let out = results.join(format!("rust-{name}.json"));
            let mut c = ns.exec(&rust_bench);
            c.args(["--homeserver", hs, "--registration-secret", secret, "--calls", &calls.to_string()]);
            c.args(["--sync", mode, "--gap-ms", &gap.to_string()]).arg("--out").arg(&out);
            status(&mut c, &format!("setup_bench --sync {mode} --gap-ms {gap}"))?;
            modes.push((name, read_json(&out)?));
        }
        println!("==> Rust: {calls} calls relayed through coturn (relay-only both sides, voip::sync)");
        let out = results.join("rust-relayed.json");
        let mut c = ns.exec(&rust_bench);
        c.args(["--homeserver", hs, "--registration-secret", secret, "--calls", &calls.to_string()]);
        c.args(["--sync", "helper", "--relay-only"]).arg("--out").arg(&out);
        status(&mut c, "setup_bench --sync helper --relay-only")?;
        modes.push(("relayed", read_json(&out)?));
    }
    drop(coturn);
    let js_res = if js {
        println!("==> matrix-js-sdk: {calls} calls through the same Synapse");
        let js_json = results.join("js.json");
        let mut c = ns.exec("node");
        c.args(["bench/js-setup.mjs", "--hs", hs, "--calls", &calls.to_string()]).arg("--out").arg(&js_json);
        status(&mut c, "bench/js-setup.mjs")?;
        Some(read_json(&js_json)?)
    } else {
        None
    };
    let js_groups = if js && !flag("--no-groups") {
        println!("==> matrix-js-sdk: SFU-mode group of 8 (join, key rotation) on the same Synapse");
        let out = results.join("js-groups.json");
        let mut c = ns.exec("node");
        c.args(["bench/js-groups.mjs", "--hs", hs, "--reg-secret", secret, "--members", "8"])
            .arg("--out")
            .arg(&out);
        status(&mut c, "bench/js-groups.mjs")?;
        Some(read_json(&out)?)
    } else {
        None
    };
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let raw: Vec<f64> =
        rust["raw_ms"].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default();
    let (raw_med, raw_p95) = median_p95(&raw);
    let floor = 2.0 * raw_med + handshake;
    let mut md = format!(
        "Run {} calls each (Rust: {profile} build), load average before `{}`, after `{}`.\n\n\
         | step, ms since the invite (median / p95) | Rust (voip) | matrix-js-sdk | Rust / js-sdk (median) |\n\
         |---|---|---|---|\n",
        calls,
        load_before.trim(),
        load_after.trim()
    );
    for s in STEPS {
        let (rm, rp) = median_p95(&step(&rust, s));
        let (jm, jp) = js_res.as_ref().map(|j| median_p95(&step(j, s))).unwrap_or((f64::NAN, f64::NAN));
        md.push_str(&format!("| {s} | {rm:.0} / {rp:.0} | {jm:.0} / {jp:.0} | {} |\n", fmt_ratio(rm, jm)));
    }
    let (rm, _) = median_p95(&step(&rust, "total"));
    md.push_str(&format!(
        "\nRaw room event A→B: {raw_med:.0} / {raw_p95:.0} ms. Floor = 2 × {raw_med:.0} + {handshake:.1} \
         (webrtc-rs handshake, media_start bench{}) = {floor:.0} ms. Rust set-up median / floor: {} \
         (target ≤ 1.5x); Rust / js-sdk median: {} (target ≤ 0.4x).\n",
        if flag("--no-handshake") { ", recorded" } else { ", this run" },
        fmt_ratio(rm, floor),
        js_res.as_ref().map(|j| fmt_ratio(rm, median_p95(&step(j, "total")).0)).unwrap_or_else(|| "–".into())
    ));
    if modes.len() > 1 {
        let js_total = js_res.as_ref().map_or(f64::NAN, |j| median_p95(&step(j, "total")).0);
        md += "\n| sync mode (Rust, both sides) | set-up median / p95 (ms) | answer leg median (ms) | raw event A→B median | / floor | / js-sdk |\n\
               |---|---|---|---|---|---|\n";
        // Answer leg: the callee's answer sent → the caller has it (per call), where a sync
        // loop's pause shows.
        let leg = |r: &Value| -> Vec<f64> {
            r["calls"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|c| Some(c["answer_received"].as_f64()? - c["answer_sent"].as_f64()?))
                        .collect()
                })
                .unwrap_or_default()
        };
        let js_leg = js_res.as_ref().map_or(f64::NAN, |j| median_p95(&leg(j)).0);
        for (mode, r) in &modes {
            let (m, p) = median_p95(&step(r, "total"));
            let raw: Vec<f64> = r["raw_ms"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default();
            md.push_str(&format!(
                "| {} | {m:.0} / {p:.0} | {:.0} | {:.0} | {} | {} |\n",
                SYNC_MODE_NAMES.iter().find(|(k, _)| k == mode).map_or(*mode, |(_, n)| n),
                median_p95(&leg(r)).0,
                median_p95(&raw).0,
                fmt_ratio(m, floor),
                fmt_ratio(m, js_total)
            ));
        }
        md.push_str(&format!("\nmatrix-js-sdk in the same run: set-up median {js_total:.0} ms, answer leg median {js_leg:.0} ms.\n"));
    }
    if let Some(g) = rust["groups"].as_object() {
        let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        let (jj, jr) = js_groups
            .as_ref()
            .map(|j| (num(&j["sfu8_join_ms"]), num(&j["sfu_rotation_ms"])))
            .unwrap_or((f64::NAN, f64::NAN));
        let (rj, rr) = (num(&g["sfu8_join_ms"]), num(&g["sfu_rotation_ms"]));
        md.push_str(&format!(
            "\n| group (one sample each) | Rust (voip) | matrix-js-sdk | Rust / js-sdk |\n|---|---|---|---|\n\
             | mesh, 4 members: `enter` → audio on every pair | {:.0} | – | – |\n\
             | SFU mode, 8 members: `enter` → every member has every key | {rj:.0} | {jj:.0} | {} |\n\
             | key rotation after one of 8 leaves → all 7 use a new key all others have | {rr:.0} | {jr:.0} | {} |\n\
             \nHTTP requests of all 8 Rust clients from the leave until 1 s after the rotation (Synapse's \
             log, `/sync` excluded): {}.\n",
            num(&g["mesh4_join_ms"]),
            fmt_ratio(rj, jj),
            fmt_ratio(rr, jr),
            g["sfu_rotation_requests"]
        ));
    }
    println!("\n{md}");
    std::fs::write(results.join("summary.md"), &md)?;
    let mut rows = vec![("Rust (voip)", step(&rust, "total"))];
    if let Some(j) = &js_res {
        rows.push(("matrix-js-sdk (Node)", step(j, "total")));
    }
    std::fs::write(root.join("docs/setup-time.svg"), svg(&rows, floor))?;
    println!("wrote bench/results/summary.md and docs/setup-time.svg");
    Ok(true)
}

/// `cargo xtask bench --media`: one 1:1 call with decoded media, both ends in one process,
/// matrix-voip-rs (`interop/rust-peer`'s `media-bench`: the `voip` API, webrtc-rs, libopus, the
/// jitter buffer; libvpx for video) against libwebrtc (`bench/js-media.mjs`: two wrtc peer
/// connections in Node, `RTCAudioSource`/`RTCAudioSink`, `RTCVideoSource`/`RTCVideoSink`), run
/// alternately `--runs` times (default 3) in one network namespace: a voice call, then (unless
/// `--no-video`) a 640×480@30 video call; medians over the runs, ratios against the anchor
/// measured in the same run.
pub(crate) mod media {
    use std::path::Path;
    use std::process::Command;

    use anyhow::Context;
    use serde_json::{json, Value};

    use super::{cargo, median_p95, read_json, status, target_dir, Netns};

    /// The goals of issue #17: CPU ≤ 1.0× libwebrtc's for voice and ≤ 1.5× for video, delay
    /// within ±20 ms of libwebrtc's.
    const VOICE_CPU_GOAL: f64 = 1.0;
    const VIDEO_CPU_GOAL: f64 = 1.5;
    const DELAY_GOAL_MS: f64 = 20.0;

    fn num(v: &Value, k: &str) -> f64 {
        v[k].as_f64().unwrap_or(f64::NAN)
    }

    fn med(rs: &[Value], k: &str) -> f64 {
        median_p95(&rs.iter().map(|r| num(r, k)).collect::<Vec<_>>()).0
    }

    fn per_run(rs: &[Value], k: &str) -> String {
        rs.iter().map(|r| format!("{:.2}", num(r, k))).collect::<Vec<_>>().join(", ")
    }

    fn met(ok: bool) -> &'static str {
        if ok {
            "met"
        } else {
            "**missed**"
        }
    }

    /// Decoded video frames per run, both ends: "A+B @ WxH".
    fn frames(rs: &[Value]) -> String {
        rs.iter()
            .map(|r| {
                let v = r["video_decoded"].as_array().cloned().unwrap_or_default();
                let n: Vec<String> = v.iter().map(|x| x["frames"].to_string()).collect();
                let size = v.first().map(|x| format!("{}x{}", x["width"], x["height"])).unwrap_or_default();
                format!("{} @ {size}", n.join("+"))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Decoded video frames per second each way in a run (mean of both receivers).
    fn fps(r: &Value) -> f64 {
        let v = r["video_decoded"].as_array().cloned().unwrap_or_default();
        let total: f64 = v.iter().filter_map(|x| x["frames"].as_f64()).sum();
        total / v.len().max(1) as f64 / num(r, "seconds")
    }

    /// CPU milliseconds per decoded video frame (both ends' whole work, audio included, over
    /// the frames both receivers decoded) in a run.
    fn cpu_per_frame_ms(r: &Value) -> f64 {
        let v = r["video_decoded"].as_array().cloned().unwrap_or_default();
        let total: f64 = v.iter().filter_map(|x| x["frames"].as_f64()).sum();
        1000.0 * num(r, "cpu_s") / total
    }

    fn med_of(rs: &[Value], f: fn(&Value) -> f64) -> f64 {
        median_p95(&rs.iter().map(f).collect::<Vec<_>>()).0
    }

    /// `runs` alternating runs of both sides; (Rust results, libwebrtc results).
    fn measure(
        ns: &Netns,
        bin: &Path,
        results: &Path,
        kind: &str,
        seconds: u64,
        runs: usize,
    ) -> anyhow::Result<(Vec<Value>, Vec<Value>)> {
        let (mut rust, mut js) = (Vec::new(), Vec::new());
        let secs = seconds.to_string();
        let extra: &[&str] = if kind == "video" { &["--video"] } else { &[] };
        for i in 0..runs {
            // Alternate, so that a change of load hits both sides alike.
            println!("==> {kind} run {}/{runs}: matrix-voip-rs, one {seconds} s call", i + 1);
            let out = results.join(format!("media-{kind}-rust-{i}.json"));
            status(
                ns.exec(bin).args(["--seconds", &secs]).args(extra).arg("--out").arg(&out),
                "media-bench",
            )?;
            rust.push(read_json(&out)?);
            println!("==> {kind} run {}/{runs}: libwebrtc (wrtc), one {seconds} s call", i + 1);
            let out = results.join(format!("media-{kind}-js-{i}.json"));
            status(
                ns.exec("node")
                    .args(["bench/js-media.mjs", "--seconds", &secs])
                    .args(extra)
                    .arg("--out")
                    .arg(&out),
                "bench/js-media.mjs",
            )?;
            js.push(read_json(&out)?);
        }
        Ok((rust, js))
    }

    pub(crate) fn run(args: &[String]) -> anyhow::Result<bool> {
        let flag = |f: &str| args.iter().any(|a| a == f);
        let value = |f: &str| args.iter().position(|a| a == f).and_then(|i| args.get(i + 1)).cloned();
        let seconds: u64 =
            value("--seconds").map(|s| s.parse()).transpose().context("--seconds S")?.unwrap_or(20);
        let runs: usize = value("--runs").map(|s| s.parse()).transpose().context("--runs N")?.unwrap_or(3);
        let root = crate::root();
        let profile = if flag("--debug") { "debug" } else { "release" };
        if !flag("--no-build") {
            println!("==> building interop/rust-peer's media-bench ({profile})");
            let mut build = vec!["build", "-q", "-p", "rust-peer", "--bin", "media-bench"];
            if profile == "release" {
                build.push("--release");
            }
            cargo(&build)?;
        }
        let bin = target_dir().join(profile).join("media-bench");
        if !flag("--no-install") && !root.join("interop/node_modules").is_dir() {
            status(
                Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(root.join("interop")),
                "npm ci in interop/",
            )?;
        }
        let results = root.join("bench/results");
        std::fs::create_dir_all(&results)?;
        // One JSON file per run (all of them also go into bench/results/media.json).
        let runs_dir = target_dir().join("media-bench");
        std::fs::create_dir_all(&runs_dir)?;
        let ns = Netns::create(&format!("voip-media-{}", std::process::id()))?;
        let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let (rust, js) = measure(&ns, &bin, &runs_dir, "voice", seconds, runs)?;
        let video = if flag("--no-video") {
            None
        } else {
            Some(measure(&ns, &bin, &runs_dir, "video", seconds, runs)?)
        };
        let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        drop(ns);

        let mut md = format!(
            "One 1:1 call with decoded media both ways, both ends in one process, {seconds} s measured \
             after 2 s of warm-up, {runs} runs per side alternating (Rust: {profile} build); medians over \
             the runs. Load average before `{}`, after `{}`.\n\n\
             | per call (both ends) | Rust (voip: webrtc-rs + libopus/libvpx) | libwebrtc M106 (wrtc) | Rust / libwebrtc | goal |\n\
             |---|---|---|---|---|\n",
            load_before.trim(),
            load_after.trim()
        );
        let (rc, jc) = (med(&rust, "cpu_s_per_20s_call"), med(&js, "cpu_s_per_20s_call"));
        let (rm, jm) = (med(&rust, "rss_per_call_mib"), med(&js, "rss_per_call_mib"));
        let (rd, jd) = (med(&rust, "delay_median_ms"), med(&js, "delay_median_ms"));
        let (rb, jb) = (med(&rust, "rss_before_mib"), med(&js, "rss_before_mib"));
        let voice_cpu_met = rc / jc <= VOICE_CPU_GOAL;
        let delay_met = (rd - jd).abs() <= DELAY_GOAL_MS;
        md.push_str(&format!(
            "| voice: CPU seconds per 20 s call | {rc:.2} | {jc:.2} | {} | ≤ {VOICE_CPU_GOAL:.1}x: {} |\n\
             | voice: mouth-to-ear delay, median (ms) | {rd:.1} | {jd:.1} | {:+.1} ms | within ±{DELAY_GOAL_MS:.0} ms: {} |\n\
             | voice: RSS during the call − before the peers (MiB) | {rm:.1} | {jm:.1} | {} | – |\n",
            super::fmt_ratio(rc, jc),
            met(voice_cpu_met),
            rd - jd,
            met(delay_met),
            super::fmt_ratio(rm, jm),
        ));
        let mut video_cpu_met = None;
        if let Some((rv, jv)) = &video {
            let (rc, jc) = (med(rv, "cpu_s_per_20s_call"), med(jv, "cpu_s_per_20s_call"));
            let (rm, jm) = (med(rv, "rss_per_call_mib"), med(jv, "rss_per_call_mib"));
            let (rk, jk) = (med(rv, "video_kbps_each_way"), med(jv, "video_kbps_each_way"));
            let (rd, jd) = (med(rv, "delay_median_ms"), med(jv, "delay_median_ms"));
            let (rf, jf) = (med_of(rv, fps), med_of(jv, fps));
            let (rp, jp) = (med_of(rv, cpu_per_frame_ms), med_of(jv, cpu_per_frame_ms));
            // CPU per call compares like with like only if both decoded (nearly) the same
            // frame rate; otherwise the goal is judged on CPU per decoded frame and says so.
            let same_rate = rf >= 0.9 * jf;
            let goal = if same_rate { rc / jc } else { rp / jp };
            video_cpu_met = Some(goal <= VIDEO_CPU_GOAL && same_rate);
            let verdict = if same_rate {
                met(goal <= VIDEO_CPU_GOAL).to_owned()
            } else {
                format!("**not comparable** (Rust decoded {rf:.1} fps, libwebrtc {jf:.1})")
            };
            md.push_str(&format!(
                "| video 640×480@30 + voice: CPU seconds per 20 s call | {rc:.2} | {jc:.2} | {} | ≤ {VIDEO_CPU_GOAL:.1}x: {verdict} |\n\
                 | video: decoded frames per second each way | {rf:.1} | {jf:.1} | {} | – |\n\
                 | video: CPU ms per decoded frame (both ends, audio included) | {rp:.2} | {jp:.2} | {} | ≤ {VIDEO_CPU_GOAL:.1}x: {} |\n\
                 | video: received video bitrate each way (kbit/s) | {rk:.0} | {jk:.0} | {} | – |\n\
                 | video: RSS during the call − before the peers (MiB) | {rm:.1} | {jm:.1} | {} | – |\n\
                 | video call: audio mouth-to-ear delay, median (ms) | {rd:.1} | {jd:.1} | {:+.1} ms | – |\n",
                super::fmt_ratio(rc, jc),
                super::fmt_ratio(rf, jf),
                super::fmt_ratio(rp, jp),
                met(rp / jp <= VIDEO_CPU_GOAL),
                super::fmt_ratio(rk, jk),
                super::fmt_ratio(rm, jm),
                rd - jd,
            ));
        }
        md.push_str(&format!(
            "| RSS of the process before the peers (MiB) | {rb:.1} | {jb:.1} | – | – |\n\n\
             Per run — voice CPU s: Rust {}; libwebrtc {}. Voice delay ms: Rust {}; libwebrtc {}. Bursts \
             heard per voice run (both ways): Rust {}; libwebrtc {}.\n",
            per_run(&rust, "cpu_s_per_20s_call"),
            per_run(&js, "cpu_s_per_20s_call"),
            per_run(&rust, "delay_median_ms"),
            per_run(&js, "delay_median_ms"),
            per_run(&rust, "bursts_heard"),
            per_run(&js, "bursts_heard"),
        ));
        if let Some((rv, jv)) = &video {
            md.push_str(&format!(
                "Per run — video CPU s: Rust {}; libwebrtc {}. Decoded video frames (A+B) in the window: \
                 Rust {}; libwebrtc {}.\n",
                per_run(rv, "cpu_s_per_20s_call"),
                per_run(jv, "cpu_s_per_20s_call"),
                frames(rv),
                frames(jv),
            ));
        }
        println!("\n{md}");
        std::fs::write(results.join("media.md"), &md)?;
        let all = json!({
            "seconds": seconds, "runs": runs, "profile": profile,
            "voice": {"rust": rust, "libwebrtc": js},
            "video": video.as_ref().map(|(r, j)| json!({"rust": r, "libwebrtc": j})),
            "voice_cpu_goal_met": voice_cpu_met, "delay_goal_met": delay_met, "video_cpu_goal_met": video_cpu_met,
        });
        std::fs::write(results.join("media.json"), format!("{all:#}\n"))?;
        println!("wrote bench/results/media.md and bench/results/media.json");
        Ok(true)
    }
}
