//! Conformance fixtures: one device's transcript of inputs and expected outputs.
//!
//! The format is documented in `docs/conformance.md` and `fixtures/fixture.schema.json`. In
//! short: a fixture names a local device, a seed, a start time and an optional partial
//! [`Config`]; then a list of steps. An `input` step feeds one `voip_core::Input` (with `at_ms`
//! to move the clock first); `advance_ms` moves the clock and ticks; `expect` takes the next
//! output and matches it as a JSON subset, optionally capturing values for later steps
//! (`{{name}}` in any later string); `expect_error` matches the last input's error;
//! `expect_none` asserts that no output is left; `expect_call` matches a call snapshot;
//! `expect_media_keys` matches the media keys of an SFU group call (`VoipMachine::media_keys`).

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use voip_core::{
    seed_from_u64, CallId, Config, GroupCallId, Input, LocalDevice, RoomId, Timestamp, VoipMachine,
};

/// One fixture file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    /// Short kebab-case name.
    pub name: String,
    /// What it checks.
    #[serde(default)]
    pub description: String,
    /// Where the expected behaviour comes from (spec section, js-sdk test, famedly test, capture).
    #[serde(default)]
    pub source: String,
    /// The device under test.
    pub device: LocalDevice,
    /// Seed of the device's CSPRNG.
    #[serde(default)]
    pub seed: u64,
    /// Clock at the start, ms since the epoch.
    #[serde(default = "default_start")]
    pub start_ms: u64,
    /// Partial configuration (missing fields take their defaults).
    #[serde(default)]
    pub config: Value,
    /// Outputs matching any of these subsets are dropped before matching (e.g. every
    /// `streams_changed` event, when the fixture is not about streams).
    #[serde(default)]
    pub ignore_outputs: Vec<Value>,
    /// The transcript.
    pub steps: Vec<Step>,
}

fn default_start() -> u64 {
    1_700_000_000_000
}

/// One step of a transcript.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Feed this input (a `voip_core::Input` in JSON, with `{{vars}}`).
    #[serde(default)]
    pub input: Option<Value>,
    /// Move the clock to `start + at_ms` before the input (never backwards).
    #[serde(default)]
    pub at_ms: Option<u64>,
    /// Move the clock forward by this much and tick.
    #[serde(default)]
    pub advance_ms: Option<u64>,
    /// The next output must match this subset.
    #[serde(default)]
    pub expect: Option<Value>,
    /// Capture values from the matched output: name → JSON pointer.
    #[serde(default)]
    pub capture: BTreeMap<String, String>,
    /// The last input must have failed with an error matching this subset.
    #[serde(default)]
    pub expect_error: Option<Value>,
    /// No output may be left.
    #[serde(default)]
    pub expect_none: Option<bool>,
    /// `{"call_id": "...", ...subset of the call snapshot}`, or `{"call_id": "...", "gone": true}`.
    #[serde(default)]
    pub expect_call: Option<Value>,
    /// `{"room_id": "...", "call_id": "...", ...subset of the media keys}` (`local`: `[index,
    /// key]`; `remote`: `[[participant, index, key], ...]`).
    #[serde(default)]
    pub expect_media_keys: Option<Value>,
    /// A note for readers.
    #[serde(default)]
    pub comment: Option<String>,
}

/// Why a fixture failed.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// The file could not be read or parsed.
    #[error("cannot load {path}: {message}")]
    Load {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A step did not hold.
    #[error("step {step}: {message}")]
    Step {
        /// Zero-based step index.
        step: usize,
        /// What went wrong.
        message: String,
    },
}

/// Loads a fixture file.
pub fn load(path: &Path) -> Result<Fixture, FixtureError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| FixtureError::Load { path: path.into(), message: e.to_string() })?;
    serde_json::from_str(&text).map_err(|e| FixtureError::Load { path: path.into(), message: e.to_string() })
}

/// Every `*.json` fixture in `dir` (not recursive, schema files excluded), sorted by name.
pub fn discover(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().contains("schema")))
        .collect();
    v.sort();
    Ok(v)
}

/// Runs one fixture.
pub fn run(fx: &Fixture) -> Result<(), FixtureError> {
    let fail = |step: usize, message: String| FixtureError::Step { step, message };
    let mut config_json = serde_json::to_value(Config::default()).expect("config serializes");
    if !fx.config.is_null() {
        merge(&mut config_json, &fx.config);
    }
    let config: Config =
        serde_json::from_value(config_json).map_err(|e| fail(0, format!("bad config: {e}")))?;
    let mut voip = VoipMachine::new(config, fx.device.clone(), seed_from_u64(fx.seed));
    let start = Timestamp(fx.start_ms);
    let mut now = start;
    let mut vars: BTreeMap<String, Value> = BTreeMap::new();
    let mut pending: VecDeque<Value> = VecDeque::new();
    let mut last_result: Option<Result<(), voip_core::Error>> = None;
    let collect = |voip: &mut VoipMachine, pending: &mut VecDeque<Value>| {
        while let Some(out) = voip.poll() {
            let v = serde_json::to_value(&out).expect("outputs serialize");
            if !fx.ignore_outputs.iter().any(|pat| subset(pat, &v).is_ok()) {
                pending.push_back(v);
            }
        }
    };
    for (i, step) in fx.steps.iter().enumerate() {
        if let Some(at) = step.at_ms {
            now = now.max(start.plus(at));
        }
        if let Some(ms) = step.advance_ms {
            now = now.plus(ms);
            let r = voip.handle(now, Input::Tick);
            r.map_err(|e| fail(i, format!("tick failed: {e}")))?;
            collect(&mut voip, &mut pending);
        }
        if let Some(input) = &step.input {
            let input = substitute(input, &vars);
            let input: Input = serde_json::from_value(input.clone())
                .map_err(|e| fail(i, format!("bad input {input}: {e}")))?;
            last_result = Some(voip.handle(now, input));
            collect(&mut voip, &mut pending);
        }
        if let Some(expected) = &step.expect {
            let expected = substitute(expected, &vars);
            let Some(actual) = pending.pop_front() else {
                return Err(fail(i, format!("expected {expected}, but there is no output left")));
            };
            subset(&expected, &actual)
                .map_err(|m| fail(i, format!("{m}\n  expected ⊆ {expected}\n  actual   {actual}")))?;
            for (name, pointer) in &step.capture {
                let v = actual
                    .pointer(pointer)
                    .ok_or_else(|| fail(i, format!("capture {name}: no {pointer} in {actual}")))?;
                vars.insert(name.clone(), v.clone());
            }
        }
        if let Some(expected) = &step.expect_error {
            let expected = substitute(expected, &vars);
            match &last_result {
                Some(Err(e)) => {
                    let actual = serde_json::to_value(e).expect("errors serialize");
                    subset(&expected, &actual)
                        .map_err(|m| fail(i, format!("error mismatch: {m}: {actual}")))?;
                }
                other => return Err(fail(i, format!("expected an error, the input returned {other:?}"))),
            }
        } else if step.input.is_some() {
            if let Some(Err(e)) = &last_result {
                // An unexpected error fails the fixture unless the next step expects it.
                let next_expects_error =
                    fx.steps.get(i + 1).is_some_and(|s| s.expect_error.is_some() && s.input.is_none());
                if !next_expects_error {
                    return Err(fail(i, format!("input failed: {e}")));
                }
            }
        }
        if step.expect_none == Some(true) && !pending.is_empty() {
            return Err(fail(i, format!("expected no more output, found {}", Value::Array(pending.into()))));
        }
        if let Some(expected) = &step.expect_call {
            let expected = substitute(expected, &vars);
            let call_id = expected
                .get("call_id")
                .and_then(Value::as_str)
                .ok_or_else(|| fail(i, "expect_call needs call_id".into()))?;
            let info = voip.call(&CallId::from(call_id));
            let gone = expected.get("gone").and_then(Value::as_bool).unwrap_or(false);
            match (info, gone) {
                (None, true) => {}
                (Some(_), true) => return Err(fail(i, format!("call {call_id} should be gone"))),
                (None, false) => return Err(fail(i, format!("no live call {call_id}"))),
                (Some(info), false) => {
                    let actual = serde_json::to_value(info).expect("call info serializes");
                    subset(&expected, &actual)
                        .map_err(|m| fail(i, format!("call snapshot: {m}: {actual}")))?;
                }
            }
        }
        if let Some(expected) = &step.expect_media_keys {
            let mut expected = substitute(expected, &vars);
            let field = |name: &str| {
                expected
                    .get(name)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| fail(i, format!("expect_media_keys needs {name}")))
            };
            let group = GroupCallId { room_id: RoomId::from(field("room_id")?), call_id: field("call_id")? };
            if let Some(o) = expected.as_object_mut() {
                o.remove("room_id");
                o.remove("call_id");
            }
            let keys =
                voip.media_keys(&group).ok_or_else(|| fail(i, "no media keys for the group".into()))?;
            let actual = serde_json::to_value(keys).expect("media keys serialize");
            subset(&expected, &actual).map_err(|m| fail(i, format!("media keys: {m}: {actual}")))?;
        }
    }
    Ok(())
}

/// Deep-merges `patch` into `base` (objects merge, everything else replaces).
fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// Replaces `{{name}}` in strings and object keys: a string that is exactly `{{name}}` becomes the captured JSON
/// value (keeping numbers numbers); otherwise the captured value is spliced in as text.
fn substitute(v: &Value, vars: &BTreeMap<String, Value>) -> Value {
    match v {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix("{{").and_then(|r| r.strip_suffix("}}")) {
                if let Some(val) = vars.get(name) {
                    return val.clone();
                }
            }
            let mut out = s.clone();
            for (name, val) in vars {
                let text = match val {
                    Value::String(t) => t.clone(),
                    other => other.to_string(),
                };
                out = out.replace(&format!("{{{{{name}}}}}"), &text);
            }
            Value::String(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| substitute(x, vars)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| {
                    let key = match substitute(&Value::String(k.clone()), vars) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, substitute(x, vars))
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// `expected ⊆ actual`: objects by key (recursively), arrays element-wise with equal length,
/// `"$any"` matches any present value, `"$absent"` requires the key to be missing.
fn subset(expected: &Value, actual: &Value) -> Result<(), String> {
    match (expected, actual) {
        (Value::String(s), _) if s == "$any" => Ok(()),
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                match (ev, a.get(k)) {
                    (Value::String(s), None) if s == "$absent" => {}
                    (Value::String(s), Some(av)) if s == "$absent" => {
                        return Err(format!("`{k}` should be absent, is {av}"))
                    }
                    (_, None) => return Err(format!("missing key `{k}`")),
                    (ev, Some(av)) => subset(ev, av).map_err(|m| format!("{k}: {m}"))?,
                }
            }
            Ok(())
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                return Err(format!("array length {} != {}", e.len(), a.len()));
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                subset(ev, av).map_err(|m| format!("[{i}]: {m}"))?;
            }
            Ok(())
        }
        (e, a) if e == a => Ok(()),
        (e, a) => Err(format!("{e} != {a}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subset_rules() {
        assert!(subset(&json!({"a": 1}), &json!({"a": 1, "b": 2})).is_ok());
        assert!(subset(&json!({"a": "$any"}), &json!({"a": [1]})).is_ok());
        assert!(subset(&json!({"c": "$absent"}), &json!({"a": 1})).is_ok());
        assert!(subset(&json!({"a": "$absent"}), &json!({"a": 1})).is_err());
        assert!(subset(&json!({"a": 2}), &json!({"a": 1})).is_err());
        assert!(subset(&json!([{"x": 1}]), &json!([{"x": 1, "y": 0}])).is_ok());
        assert!(subset(&json!([1]), &json!([1, 2])).is_err());
    }

    #[test]
    fn substitution_keeps_types() {
        let mut vars = BTreeMap::new();
        vars.insert("id".to_owned(), json!(7));
        vars.insert("c".to_owned(), json!("abc"));
        assert_eq!(
            substitute(&json!({"x": "{{id}}", "y": "pre-{{c}}"}), &vars),
            json!({"x": 7, "y": "pre-abc"})
        );
    }
}
