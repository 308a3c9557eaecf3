//! What the program prints: human lines (stdout), a live status line (stderr, on a terminal), or
//! with `--json` one JSON object per line on stdout.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

/// The printer; cheap to clone.
#[derive(Clone, Debug)]
pub struct Out {
    json: bool,
    /// Whether stderr is a terminal (the status line is drawn there).
    tty: bool,
    /// A status line is on screen (cleared before the next line).
    status_shown: Arc<AtomicBool>,
}

impl Out {
    /// A printer; `json` for machine-readable events.
    pub fn new(json: bool) -> Self {
        Out { json, tty: std::io::stderr().is_terminal(), status_shown: Arc::new(AtomicBool::new(false)) }
    }

    /// Whether events are printed as JSON.
    pub fn is_json(&self) -> bool {
        self.json
    }

    fn clear_status(&self) {
        if self.status_shown.swap(false, Ordering::SeqCst) {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }

    /// An event: `{"event": name, ...fields}` with `--json`, else `human` as a line.
    pub fn event(&self, name: &str, fields: Value, human: impl FnOnce() -> String) {
        if self.json {
            let mut obj = serde_json::Map::new();
            obj.insert("event".into(), Value::String(name.into()));
            obj.insert("ts".into(), json!(now_ms()));
            if let Value::Object(map) = fields {
                obj.extend(map);
            }
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", Value::Object(obj));
            let _ = out.flush();
        } else {
            self.clear_status();
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", human());
            let _ = out.flush();
        }
    }

    /// The live status of a call: a `stats` event with `--json`, else a status line redrawn in
    /// place on a terminal (nothing when stderr is not a terminal).
    pub fn status(&self, status: &Status) {
        if self.json {
            self.event("stats", serde_json::to_value(status).unwrap_or(Value::Null), String::new);
        } else if self.tty {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{}", status.line());
            let _ = err.flush();
            self.status_shown.store(true, Ordering::SeqCst);
        }
    }

    /// An error, in one line: `{"event":"error",...}` with `--json` (stdout), and always on
    /// stderr as `matrix-call: message`.
    pub fn error(&self, kind: &str, code: u8, message: &str) {
        if self.json {
            self.event("error", json!({ "kind": kind, "exit_code": code, "message": message }), String::new);
        }
        self.clear_status();
        eprintln!("matrix-call: {message}");
    }

    /// Clears the status line (before the program exits).
    pub fn finish(&self) {
        self.clear_status();
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// One status sample of a call.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Status {
    /// The call id.
    pub call_id: String,
    /// The call state (`connected`, ...).
    pub state: String,
    /// Seconds since the call connected (or since it started, before).
    pub elapsed_s: f64,
    /// Round-trip time, ms.
    pub rtt_ms: Option<f64>,
    /// Packets lost / (received + lost), percent, since the call began.
    pub loss_percent: Option<f64>,
    /// Send bitrate over the last interval, kbit/s.
    pub send_kbps: f64,
    /// Receive bitrate over the last interval, kbit/s.
    pub recv_kbps: f64,
    /// Level of the peer's decoded audio (last frame), dBFS.
    pub audio_level_dbfs: Option<f32>,
    /// Candidate type of the selected pair (`host`, `srflx`, `relay`).
    pub path: Option<String>,
}

impl Status {
    /// The human status line.
    pub fn line(&self) -> String {
        let secs = self.elapsed_s.max(0.0) as u64;
        let mut s = format!("{:<10} {:02}:{:02}", self.state, secs / 60, secs % 60);
        match self.rtt_ms {
            Some(r) => s.push_str(&format!("  rtt {r:.0} ms")),
            None => s.push_str("  rtt -"),
        }
        match self.loss_percent {
            Some(l) => s.push_str(&format!("  loss {l:.1}%")),
            None => s.push_str("  loss -"),
        }
        s.push_str(&format!("  up {:.0} kbit/s  down {:.0} kbit/s", self.send_kbps, self.recv_kbps));
        match self.audio_level_dbfs {
            Some(l) if l.is_finite() => s.push_str(&format!("  level {l:.0} dBFS {}", meter(l))),
            _ => s.push_str("  level -"),
        }
        if let Some(p) = &self.path {
            s.push_str(&format!("  via {p}"));
        }
        s
    }
}

/// A ten-step level meter for -60..0 dBFS.
fn meter(dbfs: f32) -> String {
    let filled = (((dbfs + 60.0) / 6.0).round().clamp(0.0, 10.0)) as usize;
    format!("[{}{}]", "#".repeat(filled), ".".repeat(10 - filled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_shows_every_figure() {
        let s = Status {
            call_id: "c".into(),
            state: "connected".into(),
            elapsed_s: 75.4,
            rtt_ms: Some(3.2),
            loss_percent: Some(1.26),
            send_kbps: 41.0,
            recv_kbps: 39.6,
            audio_level_dbfs: Some(-18.0),
            path: Some("host".into()),
        };
        assert_eq!(
            s.line(),
            "connected  01:15  rtt 3 ms  loss 1.3%  up 41 kbit/s  down 40 kbit/s  level -18 dBFS [#######...]  via host"
        );
        let empty = Status { state: "ringing".into(), ..Status::default() };
        assert_eq!(empty.line(), "ringing    00:00  rtt -  loss -  up 0 kbit/s  down 0 kbit/s  level -");
    }

    #[test]
    fn meter_is_clamped() {
        assert_eq!(meter(-100.0), "[..........]");
        assert_eq!(meter(3.0), "[##########]");
    }
}
