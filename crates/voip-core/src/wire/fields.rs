//! Typed field access over a JSON object, with errors that name the field.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest string field the core accepts (SDP included). Olm/Megolm events are capped at 64 KiB
/// by homeservers anyway.
pub(crate) const MAX_STRING_LEN: usize = 65_536;
/// Longest identifier (`call_id`, `party_id`, …) accepted, as the opaque-id grammar allows.
pub(crate) const MAX_ID_LEN: usize = 255;
/// Most list entries (candidates, metadata streams) read from one event.
pub(crate) const MAX_LIST_LEN: usize = 512;

/// What is wrong with a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum WireErrorKind {
    /// The content is not a JSON object.
    NotAnObject,
    /// A required field is absent.
    Missing,
    /// The field has the wrong JSON type.
    WrongType,
    /// The field is longer than the core accepts.
    TooLong,
    /// The field has an invalid value (empty id, unknown enum value, …).
    Invalid,
}

/// A refused event content: which event type, which field, what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[error("{event_type}: field `{field}`: {kind:?}")]
pub struct WireError {
    /// The event type being parsed.
    pub event_type: String,
    /// The offending field (dotted path).
    pub field: String,
    /// The problem.
    pub kind: WireErrorKind,
}

pub(crate) struct Fields<'a> {
    pub(crate) event_type: &'a str,
    pub(crate) map: &'a Map<String, Value>,
    prefix: String,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(event_type: &'a str, value: &'a Value) -> Result<Self, WireError> {
        match value {
            Value::Object(map) => Ok(Fields { event_type, map, prefix: String::new() }),
            _ => Err(WireError {
                event_type: event_type.to_owned(),
                field: String::new(),
                kind: WireErrorKind::NotAnObject,
            }),
        }
    }

    pub(crate) fn err(&self, field: &str, kind: WireErrorKind) -> WireError {
        let field =
            if self.prefix.is_empty() { field.to_owned() } else { format!("{}.{field}", self.prefix) };
        WireError { event_type: self.event_type.to_owned(), field, kind }
    }

    pub(crate) fn nested(&self, field: &str) -> Result<Option<Fields<'a>>, WireError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(map)) => {
                let prefix = if self.prefix.is_empty() {
                    field.to_owned()
                } else {
                    format!("{}.{field}", self.prefix)
                };
                Ok(Some(Fields { event_type: self.event_type, map, prefix }))
            }
            Some(_) => Err(self.err(field, WireErrorKind::WrongType)),
        }
    }

    pub(crate) fn get(&self, field: &str) -> Option<&'a Value> {
        match self.map.get(field) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    pub(crate) fn str_opt(&self, field: &str, max: usize) -> Result<Option<&'a str>, WireError> {
        str_of(self.get(field), max).map_err(|kind| self.err(field, kind))
    }

    pub(crate) fn str_req(&self, field: &str, max: usize) -> Result<&'a str, WireError> {
        self.str_opt(field, max)?.ok_or_else(|| self.err(field, WireErrorKind::Missing))
    }

    /// A required non-empty identifier.
    pub(crate) fn id_req(&self, field: &str) -> Result<&'a str, WireError> {
        let s = self.str_req(field, MAX_ID_LEN)?;
        if s.is_empty() {
            return Err(self.err(field, WireErrorKind::Invalid));
        }
        Ok(s)
    }

    /// An optional identifier; an empty string counts as absent.
    pub(crate) fn id_opt(&self, field: &str) -> Result<Option<&'a str>, WireError> {
        Ok(self.str_opt(field, MAX_ID_LEN)?.filter(|s| !s.is_empty()))
    }

    /// A non-negative integer, also accepted as a numeric string or a float with no fraction.
    pub(crate) fn u64_opt(&self, field: &str) -> Result<Option<u64>, WireError> {
        u64_of(self.get(field)).map_err(|kind| self.err(field, kind))
    }

    /// A boolean; only `true` counts as true (capabilities rule), anything else is false.
    pub(crate) fn flag(&self, field: &str) -> bool {
        matches!(self.map.get(field), Some(Value::Bool(true)))
    }
}

/// [`Fields::str_opt`] of a value already looked up (`None`: absent or `null`).
pub(crate) fn str_of(v: Option<&Value>, max: usize) -> Result<Option<&str>, WireErrorKind> {
    match v {
        None => Ok(None),
        Some(Value::String(s)) if s.len() > max => Err(WireErrorKind::TooLong),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(WireErrorKind::WrongType),
    }
}

/// [`Fields::u64_opt`] of a value already looked up (`None`: absent or `null`).
pub(crate) fn u64_of(v: Option<&Value>) -> Result<Option<u64>, WireErrorKind> {
    match v {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(v) = n.as_u64() {
                Ok(Some(v))
            } else if let Some(f) = n.as_f64().filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < 1e15) {
                Ok(Some(f as u64))
            } else {
                Err(WireErrorKind::Invalid)
            }
        }
        Some(Value::String(s)) => s.trim().parse::<u64>().map(Some).map_err(|_| WireErrorKind::WrongType),
        Some(_) => Err(WireErrorKind::WrongType),
    }
}
