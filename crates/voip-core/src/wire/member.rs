//! Group-call membership events, in every dialect deployed:
//!
//! - famedly: `com.famedly.call.member` state, a `memberships` list per state key (user id, or
//!   `{user}_{device}` / `{device}_{user}` per-device keys), absolute `expires_ts`, backend in
//!   `foci_active` (a single `backend` object also accepted, as famedly's docs show it);
//! - MatrixRTC (Element Call): `org.matrix.msc3401.call.member` state, one event per device
//!   (state key `_@user:server_DEVICE_m.call`, no leading `_` in MSC3757 rooms), relative
//!   `expires` from `created_ts`; the empty content `{}` is a leave;
//! - MSC4143 sticky form, read only: `org.matrix.msc4143.rtc.member` room events.
//!
//! Each parses into [`MemberEntry`] values; identity always comes from the event's sender and
//! the content, never from the state key. Dispatch is by event type, then the exact shape is
//! parsed (no untagged guessing): a malformed entry is skipped, never the whole event.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::fields::{str_of, u64_of, Fields, MAX_ID_LEN, MAX_LIST_LEN};
use super::{WireError, WireErrorKind};

/// `com.famedly.call.member`
pub const FAMEDLY_MEMBER: &str = "com.famedly.call.member";
/// `org.matrix.msc3401.call.member` (Element Call's state-event membership)
pub const RTC_MEMBER: &str = "org.matrix.msc3401.call.member";
/// `org.matrix.msc4143.rtc.member` (sticky-event membership, read only)
pub const RTC_MEMBER_STICKY: &str = "org.matrix.msc4143.rtc.member";

/// Default `expires` of MatrixRTC memberships: 4 hours.
pub const RTC_DEFAULT_EXPIRES_MS: u64 = 4 * 3600 * 1000;
/// Stickiness of MSC4143 sticky memberships: 1 hour.
pub const STICKY_DURATION_MS: u64 = 3600 * 1000;

/// Which membership format a call uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum MembershipDialect {
    /// `com.famedly.call.member` lists.
    Famedly,
    /// Element Call's per-device `org.matrix.msc3401.call.member`.
    MatrixRtc,
    /// MSC4143 sticky `org.matrix.msc4143.rtc.member` (read only).
    Sticky,
}

/// A call backend / transport as memberships announce it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Focus {
    /// Peer-to-peer mesh (famedly `{type: "mesh"}`).
    Mesh,
    /// A LiveKit SFU reached through a JWT service.
    Livekit {
        /// `livekit_service_url`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        livekit_service_url: Option<String>,
        /// `livekit_alias` (legacy; Element Call writes the room id).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        livekit_alias: Option<String>,
    },
    /// Something else, kept by its type name.
    Other {
        /// The `type` value.
        name: String,
    },
}

/// How members choose an SFU (`focus_active.focus_selection`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum FocusSelection {
    /// Everyone uses the oldest member's first preferred focus.
    OldestMembership,
    /// Each member publishes on its own first preferred focus.
    MultiSfu,
}

/// One membership as parsed from the wire (the sender is added by the caller).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MemberEntry {
    /// `call_id` (`""` is the room call; the sticky `slot_id` `m.call#ROOM` maps to `""`).
    pub call_id: String,
    /// `application` (e.g. `m.call`).
    pub application: String,
    /// `scope` (`m.room` or `m.user`).
    pub scope: String,
    /// The member's device.
    pub device_id: String,
    /// `membershipID` / `member.id`.
    pub member_id: Option<String>,
    /// Creation time (MatrixRTC `created_ts`), if given.
    pub created_ts: Option<u64>,
    /// Absolute expiry (famedly `expires_ts`), if given.
    pub expires_ts: Option<u64>,
    /// Relative expiry (MatrixRTC `expires`), if given.
    pub expires: Option<u64>,
    /// Backends: famedly `foci_active`, MatrixRTC `foci_preferred`, sticky `rtc_transports`.
    pub foci: Vec<Focus>,
    /// MatrixRTC `focus_active.focus_selection`.
    pub focus_selection: Option<FocusSelection>,
    /// famedly mesh `feeds` purposes (e.g. whether the member shares its screen).
    pub feeds: Vec<String>,
}

/// A parsed membership event: the memberships it announces (empty: the sender left).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedMembers {
    /// Dialect of the event.
    pub dialect: MembershipDialect,
    /// Valid entries (malformed ones are skipped and counted in `skipped`).
    pub entries: Vec<MemberEntry>,
    /// Entries skipped because they were malformed.
    pub skipped: usize,
}

/// Parses a membership event of any dialect. `Ok(None)` for event types that are not
/// memberships. For MatrixRTC, the 2024 list format `{memberships: […]}` is ignored (as Element
/// Call does) and yields no entries.
pub fn parse(event_type: &str, content: &Value) -> Result<Option<ParsedMembers>, WireError> {
    let f = Fields::new(event_type, content)?;
    match event_type {
        FAMEDLY_MEMBER => {
            let list = match f.get("memberships") {
                None => &[][..],
                Some(Value::Array(a)) => a.as_slice(),
                Some(_) => return Err(f.err("memberships", WireErrorKind::WrongType)),
            };
            let mut entries = Vec::new();
            let mut skipped = 0;
            for item in list.iter().take(MAX_LIST_LEN) {
                match famedly_entry(event_type, item) {
                    Ok(e) => entries.push(e),
                    Err(e) => {
                        tracing::warn!(%e, "skipping malformed famedly membership entry");
                        skipped += 1;
                    }
                }
            }
            Ok(Some(ParsedMembers { dialect: MembershipDialect::Famedly, entries, skipped }))
        }
        RTC_MEMBER => Ok(Some(rtc_members(RtcFields::gather(f.map.iter())))),
        RTC_MEMBER_STICKY => {
            let dialect = MembershipDialect::Sticky;
            let Some(member) = f.nested("member")? else {
                // Only the sticky key left: a leave.
                return Ok(Some(ParsedMembers { dialect, entries: Vec::new(), skipped: 0 }));
            };
            // `APPLICATION#CALL`, `ROOM` for the room call; anything else is not a slot (no call
            // id is made up for it).
            let slot = f.str_req("slot_id", MAX_ID_LEN)?;
            let call_id = match slot.split_once('#') {
                Some((app, "ROOM")) if !app.is_empty() => "",
                Some((app, call)) if !app.is_empty() && !call.is_empty() => call,
                _ => return Err(f.err("slot_id", WireErrorKind::Invalid)),
            };
            let application = match f.nested("application")? {
                Some(a) => a.str_req("type", MAX_ID_LEN)?.to_owned(),
                None => "m.call".to_owned(),
            };
            let foci = foci_list(&f, "rtc_transports")?;
            Ok(Some(ParsedMembers {
                dialect,
                entries: vec![MemberEntry {
                    call_id: call_id.to_owned(),
                    application,
                    scope: "m.room".to_owned(),
                    device_id: member.id_req("device_id")?.to_owned(),
                    member_id: member.id_opt("id")?.map(str::to_owned),
                    created_ts: None,
                    expires_ts: None,
                    expires: Some(STICKY_DURATION_MS),
                    foci,
                    focus_selection: Some(FocusSelection::MultiSfu),
                    feeds: Vec::new(),
                }],
                skipped: 0,
            }))
        }
        _ => Ok(None),
    }
}

/// [`parse`], taking the strings a membership keeps (ids, application, scope) out of `content`
/// instead of copying them: for a content that is dropped after (a large room's take-in moves
/// each member's strings instead of allocating them again and freeing the originals). What is
/// left of `content` is not meant to be read. The result is the same as [`parse`]'s.
pub fn parse_mut(event_type: &str, content: &mut Value) -> Result<Option<ParsedMembers>, WireError> {
    match (event_type, content) {
        (RTC_MEMBER, Value::Object(map)) => Ok(Some(rtc_members(RtcFields::gather(map.iter_mut())))),
        (_, content) => parse(event_type, content),
    }
}

/// Whether `sender` owns the state key `key` of a membership event of `event_type`: per-user keys
/// are the user id (famedly's list, MatrixRTC's legacy form); per-device keys start with it
/// (`@u:hs_…`, or `_@u:hs_…` in room versions without owned state keys), in both dialects, and
/// famedly's also end with it (`DEVICE_@u:hs`).
/// Sticky memberships are keyed by their sender by the machine itself.
pub fn state_key_owned_by(event_type: &str, key: &str, sender: &str) -> bool {
    match event_type {
        RTC_MEMBER_STICKY => true,
        _ => {
            let rest = key.strip_prefix('_').unwrap_or(key);
            rest == sender
                || rest.strip_prefix(sender).is_some_and(|tail| tail.starts_with('_'))
                // famedly's unprotected per-device form `DEVICE_@user`.
                || (event_type == FAMEDLY_MEMBER
                    && key.strip_suffix(sender).is_some_and(|head| head.len() > 1 && head.ends_with('_')))
        }
    }
}

/// The content that announces no membership, for an event type (a leave).
pub fn empty_content(event_type: &str) -> Value {
    if event_type == FAMEDLY_MEMBER {
        serde_json::json!({ "memberships": [] })
    } else {
        serde_json::json!({})
    }
}

/// The `member.user_id` of a sticky membership (must equal the sender).
pub fn sticky_user(content: &Value) -> Option<&str> {
    content.get("member")?.get("user_id")?.as_str()
}

/// The sticky key of an MSC4143 membership (`msc4354_sticky_key`, or `sticky_key`).
pub fn sticky_key(content: &Value) -> Option<&str> {
    content.get("msc4354_sticky_key").or_else(|| content.get("sticky_key")).and_then(Value::as_str)
}

fn famedly_entry(event_type: &str, item: &Value) -> Result<MemberEntry, WireError> {
    let f = Fields::new(event_type, item)?;
    let mut foci = foci_list(&f, "foci_active")?;
    if foci.is_empty() {
        if let Some(b) = f.get("backend") {
            foci.extend(focus(b));
        }
    }
    if foci.is_empty() {
        return Err(f.err("foci_active", WireErrorKind::Missing));
    }
    let feeds = match f.get("feeds") {
        Some(Value::Array(a)) => a
            .iter()
            .take(8)
            .filter_map(|x| x.get("purpose").and_then(Value::as_str).map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    Ok(MemberEntry {
        call_id: f.str_req("call_id", MAX_ID_LEN)?.to_owned(),
        application: f.str_opt("application", MAX_ID_LEN)?.unwrap_or("m.call").to_owned(),
        scope: f.str_opt("scope", MAX_ID_LEN)?.unwrap_or("m.room").to_owned(),
        device_id: f.id_req("device_id")?.to_owned(),
        member_id: f.id_opt("membershipID")?.map(str::to_owned),
        created_ts: None,
        expires_ts: Some(
            f.u64_opt("expires_ts")?.ok_or_else(|| f.err("expires_ts", WireErrorKind::Missing))?,
        ),
        expires: None,
        foci,
        focus_selection: None,
        feeds,
    })
}

/// A field's value in a content being parsed: borrowed (its string is copied out) or owned
/// ([`parse_mut`]: its string is moved out).
trait FieldValue: Sized {
    fn value(&self) -> &Value;
    /// The string it holds (empty if it holds none: only called once it was checked to be one).
    fn into_string(self) -> String;
}

impl FieldValue for &Value {
    fn value(&self) -> &Value {
        self
    }
    fn into_string(self) -> String {
        self.as_str().unwrap_or_default().to_owned()
    }
}

impl FieldValue for &mut Value {
    fn value(&self) -> &Value {
        self
    }
    fn into_string(self) -> String {
        match self {
            Value::String(s) => std::mem::take(s),
            _ => String::new(),
        }
    }
}

/// The fields of a MatrixRTC membership, gathered in one walk over the content's keys (instead
/// of a map lookup per field).
struct RtcFields<F> {
    empty: bool,
    /// `memberships` is there (the 2024 list form, not read).
    list: bool,
    /// `device_id` is there (even as `null`).
    has_device: bool,
    call_id: Option<F>,
    application: Option<F>,
    scope: Option<F>,
    device_id: Option<F>,
    membership_id: Option<F>,
    created_ts: Option<F>,
    expires: Option<F>,
    focus_active: Option<F>,
    foci_preferred: Option<F>,
}

impl<F: FieldValue> RtcFields<F> {
    fn gather<'k>(entries: impl Iterator<Item = (&'k String, F)>) -> Self {
        let mut r = RtcFields {
            empty: true,
            list: false,
            has_device: false,
            call_id: None,
            application: None,
            scope: None,
            device_id: None,
            membership_id: None,
            created_ts: None,
            expires: None,
            focus_active: None,
            foci_preferred: None,
        };
        for (k, v) in entries {
            r.empty = false;
            // `null` counts as absent, as `Fields::get` has it (but `device_id: null` still
            // makes it an entry, a malformed one).
            let v = (!v.value().is_null()).then_some(v);
            match k.as_str() {
                "memberships" => r.list = true,
                "device_id" => {
                    r.has_device = true;
                    r.device_id = v;
                }
                "call_id" => r.call_id = v,
                "application" => r.application = v,
                "scope" => r.scope = v,
                "membershipID" => r.membership_id = v,
                "created_ts" => r.created_ts = v,
                "expires" => r.expires = v,
                "focus_active" => r.focus_active = v,
                "foci_preferred" => r.foci_preferred = v,
                _ => {}
            }
        }
        r
    }
}

fn rtc_members<F: FieldValue>(r: RtcFields<F>) -> ParsedMembers {
    let dialect = MembershipDialect::MatrixRtc;
    if r.empty || r.list || !r.has_device {
        // `{}` (or `{leave_reason}`) is a leave; the old list form is not read.
        return ParsedMembers { dialect, entries: Vec::new(), skipped: 0 };
    }
    match rtc_entry(r) {
        Ok(e) => ParsedMembers { dialect, entries: vec![e], skipped: 0 },
        Err(e) => {
            tracing::warn!(%e, "malformed MatrixRTC membership");
            ParsedMembers { dialect, entries: Vec::new(), skipped: 1 }
        }
    }
}

fn rtc_entry<F: FieldValue>(r: RtcFields<F>) -> Result<MemberEntry, WireError> {
    let err =
        |field: &str, kind| WireError { event_type: RTC_MEMBER.to_owned(), field: field.to_owned(), kind };
    fn view<F: FieldValue>(v: &Option<F>) -> Option<&Value> {
        v.as_ref().map(FieldValue::value)
    }
    let str_opt = |v: &Option<F>, field: &str| {
        str_of(view(v), MAX_ID_LEN).map(|s| s.map(str::len)).map_err(|k| err(field, k))
    };
    let str_req = |v: &Option<F>, field: &str| {
        str_opt(v, field)?.map(|_| ()).ok_or_else(|| err(field, WireErrorKind::Missing))
    };
    let focus_selection = match view(&r.focus_active) {
        None => None,
        Some(Value::Object(a)) => {
            let nested = |field: &str| a.get(field).filter(|v| !v.is_null());
            str_of(nested("type"), MAX_ID_LEN)
                .and_then(|t| t.ok_or(WireErrorKind::Missing))
                .map_err(|k| err("focus_active.type", k))?;
            match str_of(nested("focus_selection"), MAX_ID_LEN)
                .map_err(|k| err("focus_active.focus_selection", k))?
            {
                Some("oldest_membership") => Some(FocusSelection::OldestMembership),
                Some("multi_sfu") => Some(FocusSelection::MultiSfu),
                _ => None,
            }
        }
        Some(_) => return Err(err("focus_active", WireErrorKind::WrongType)),
    };
    str_req(&r.call_id, "call_id")?;
    str_req(&r.application, "application")?;
    let has_scope = str_opt(&r.scope, "scope")?.is_some();
    if str_opt(&r.device_id, "device_id")?.ok_or_else(|| err("device_id", WireErrorKind::Missing))? == 0 {
        return Err(err("device_id", WireErrorKind::Invalid));
    }
    let has_member_id = str_opt(&r.membership_id, "membershipID")?.is_some_and(|len| len > 0);
    let created_ts = u64_of(view(&r.created_ts)).map_err(|k| err("created_ts", k))?;
    let expires = u64_of(view(&r.expires)).map_err(|k| err("expires", k))?;
    let foci = foci_of(view(&r.foci_preferred)).map_err(|k| err("foci_preferred", k))?;
    // Every field checked: the strings are taken (or copied) out.
    let take = |v: Option<F>| v.map(FieldValue::into_string).unwrap_or_default();
    Ok(MemberEntry {
        call_id: take(r.call_id),
        application: take(r.application),
        scope: if has_scope { take(r.scope) } else { "m.room".to_owned() },
        device_id: take(r.device_id),
        member_id: has_member_id.then(|| take(r.membership_id)),
        created_ts,
        expires_ts: None,
        expires,
        foci,
        focus_selection,
        feeds: Vec::new(),
    })
}

fn foci_list(f: &Fields<'_>, field: &str) -> Result<Vec<Focus>, WireError> {
    foci_of(f.get(field)).map_err(|k| f.err(field, k))
}

fn foci_of(v: Option<&Value>) -> Result<Vec<Focus>, WireErrorKind> {
    match v {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => Ok(a.iter().take(16).filter_map(focus).collect()),
        Some(_) => Err(WireErrorKind::WrongType),
    }
}

fn focus(v: &Value) -> Option<Focus> {
    let t = v.get("type")?.as_str()?;
    let s = |k: &str| v.get(k).and_then(Value::as_str).filter(|s| s.len() <= 2048).map(str::to_owned);
    Some(match t {
        "mesh" => Focus::Mesh,
        "livekit" => Focus::Livekit {
            livekit_service_url: s("livekit_service_url"),
            livekit_alias: s("livekit_alias"),
        },
        other => Focus::Other { name: other.chars().take(MAX_ID_LEN).collect() },
    })
}

fn focus_json(focus: &Focus) -> Value {
    match focus {
        Focus::Mesh => json!({"type": "mesh"}),
        Focus::Livekit { livekit_service_url, livekit_alias } => {
            let mut m = Map::new();
            m.insert("type".into(), json!("livekit"));
            if let Some(u) = livekit_service_url {
                m.insert("livekit_service_url".into(), json!(u));
            }
            if let Some(a) = livekit_alias {
                m.insert("livekit_alias".into(), json!(a));
            }
            Value::Object(m)
        }
        Focus::Other { name } => json!({"type": name}),
    }
}

/// One famedly membership entry, as written.
pub fn famedly_entry_json(e: &MemberEntry) -> Value {
    let mut m = Map::new();
    m.insert("call_id".into(), json!(e.call_id));
    m.insert("application".into(), json!(e.application));
    m.insert("scope".into(), json!(e.scope));
    m.insert("foci_active".into(), Value::Array(e.foci.iter().map(focus_json).collect()));
    m.insert("device_id".into(), json!(e.device_id));
    m.insert("expires_ts".into(), json!(e.expires_ts.unwrap_or(0)));
    if let Some(id) = &e.member_id {
        m.insert("membershipID".into(), json!(id));
    }
    if !e.feeds.is_empty() {
        m.insert("feeds".into(), e.feeds.iter().map(|p| json!({"purpose": p})).collect());
    }
    Value::Object(m)
}

/// A MatrixRTC (Element Call) per-device membership content, as written.
pub fn rtc_content(e: &MemberEntry) -> Value {
    let mut m = Map::new();
    m.insert("application".into(), json!(e.application));
    m.insert("call_id".into(), json!(e.call_id));
    m.insert("scope".into(), json!(e.scope));
    m.insert("device_id".into(), json!(e.device_id));
    if let Some(id) = &e.member_id {
        m.insert("membershipID".into(), json!(id));
    }
    m.insert("expires".into(), json!(e.expires.unwrap_or(RTC_DEFAULT_EXPIRES_MS)));
    if let Some(ts) = e.created_ts {
        m.insert("created_ts".into(), json!(ts));
    }
    let selection = match e.focus_selection.unwrap_or(FocusSelection::MultiSfu) {
        FocusSelection::OldestMembership => "oldest_membership",
        FocusSelection::MultiSfu => "multi_sfu",
    };
    m.insert("focus_active".into(), json!({"type": "livekit", "focus_selection": selection}));
    m.insert("foci_preferred".into(), Value::Array(e.foci.iter().map(focus_json).collect()));
    Value::Object(m)
}

/// The MatrixRTC state key of a device's membership: `_{user}_{device}_{application}{call_id}`,
/// without the leading `_` in rooms whose version allows owned state keys (MSC3757/MSC3779).
pub fn rtc_state_key(user: &str, device: &str, application: &str, call_id: &str, owned_keys: bool) -> String {
    let key = format!("{user}_{device}_{application}{call_id}");
    if owned_keys {
        key
    } else {
        format!("_{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn famedly_list_with_a_malformed_entry_and_the_documented_backend_key() {
        let content = json!({"memberships": [
            {"call_id": "", "application": "m.call", "scope": "m.room", "device_id": "D1",
             "expires_ts": 1_700_000_360_000u64, "foci_active": [{"type": "mesh"}], "membershipID": "S1",
             "feeds": [{"purpose": "m.usermedia"}]},
            {"call_id": "", "device_id": "D2", "expires_ts": "soon", "foci_active": [{"type": "mesh"}]},
            {"call_id": "c2", "device_id": "D3", "expires_ts": 5, "backend": {"type": "livekit",
             "livekit_service_url": "https://lk.example", "livekit_alias": "!r"}}
        ]});
        let p = parse(FAMEDLY_MEMBER, &content).unwrap().unwrap();
        assert_eq!((p.entries.len(), p.skipped), (2, 1));
        assert_eq!(p.entries[0].member_id.as_deref(), Some("S1"));
        assert_eq!(p.entries[0].feeds, vec!["m.usermedia"]);
        assert!(
            matches!(&p.entries[1].foci[0], Focus::Livekit { livekit_service_url: Some(u), .. } if u == "https://lk.example")
        );
        let back = parse(FAMEDLY_MEMBER, &json!({"memberships": [famedly_entry_json(&p.entries[0])]}))
            .unwrap()
            .unwrap();
        assert_eq!(back.entries[0], p.entries[0]);
    }

    #[test]
    fn rtc_join_leave_and_ignored_list_form() {
        let join = json!({"application": "m.call", "call_id": "", "scope": "m.room", "device_id": "DEV",
            "membershipID": "@a:x:DEV", "expires": 14400000, "created_ts": 1000,
            "focus_active": {"type": "livekit", "focus_selection": "multi_sfu"},
            "foci_preferred": [{"type": "livekit", "livekit_service_url": "https://sfu", "livekit_alias": "!r:x"}]});
        let p = parse(RTC_MEMBER, &join).unwrap().unwrap();
        assert_eq!(p.entries.len(), 1);
        assert_eq!(p.entries[0].focus_selection, Some(FocusSelection::MultiSfu));
        assert_eq!(parse(RTC_MEMBER, &rtc_content(&p.entries[0])).unwrap().unwrap().entries[0], p.entries[0]);
        assert!(parse(RTC_MEMBER, &json!({})).unwrap().unwrap().entries.is_empty());
        assert!(parse(RTC_MEMBER, &json!({"memberships": [{"device_id": "x"}]}))
            .unwrap()
            .unwrap()
            .entries
            .is_empty());
        let bad = parse(RTC_MEMBER, &json!({"device_id": "D", "call_id": 3})).unwrap().unwrap();
        assert_eq!((bad.entries.len(), bad.skipped), (0, 1));
        assert_eq!(rtc_state_key("@a:x", "DEV", "m.call", "", false), "_@a:x_DEV_m.call");
        assert!(parse("m.room.member", &json!({})).unwrap().is_none());
    }

    #[test]
    fn parse_mut_gives_what_parse_gives() {
        let good = json!({"application": "m.call", "call_id": "c", "scope": "m.user", "device_id": "DEV",
            "membershipID": "m1", "expires": "7", "created_ts": 5.0,
            "focus_active": {"type": "livekit", "focus_selection": "oldest_membership"},
            "foci_preferred": [{"type": "livekit", "livekit_service_url": "https://sfu"}, {"type": "x"}]});
        let mut cases = vec![good.clone(), json!({}), json!({"leave_reason": "x"}), json!([1]), json!("s")];
        for (field, bad) in [
            ("device_id", json!(null)),
            ("device_id", json!("")),
            ("call_id", json!(null)),
            ("application", json!(3)),
            ("scope", json!(null)),
            ("scope", json!("x".repeat(300))),
            ("membershipID", json!("")),
            ("expires", json!(-1)),
            ("focus_active", json!(null)),
            ("focus_active", json!({"focus_selection": "multi_sfu"})),
            ("focus_active", json!("livekit")),
            ("foci_preferred", json!({})),
            ("memberships", json!(null)),
        ] {
            let mut c = good.clone();
            c[field] = bad;
            cases.push(c);
        }
        for content in cases {
            for event_type in [RTC_MEMBER, FAMEDLY_MEMBER, RTC_MEMBER_STICKY, "m.room.member"] {
                let mut owned = content.clone();
                assert_eq!(
                    parse_mut(event_type, &mut owned),
                    parse(event_type, &content),
                    "{event_type} {content}"
                );
            }
        }
        let p = parse(RTC_MEMBER, &good).unwrap().unwrap();
        assert_eq!((p.entries[0].scope.as_str(), p.entries[0].member_id.as_deref()), ("m.user", Some("m1")));
        assert_eq!((p.entries[0].created_ts, p.entries[0].expires), (Some(5), Some(7)));
    }

    #[test]
    fn state_key_ownership() {
        let a = "@a:x";
        assert!(state_key_owned_by(FAMEDLY_MEMBER, "@a:x", a));
        assert!(!state_key_owned_by(FAMEDLY_MEMBER, "@b:x", a));
        assert!(state_key_owned_by(FAMEDLY_MEMBER, "@a:x_DEV", a));
        assert!(!state_key_owned_by(FAMEDLY_MEMBER, "@b:x_DEV", a));
        assert!(state_key_owned_by(FAMEDLY_MEMBER, "DEV_@a:x", a));
        assert!(!state_key_owned_by(FAMEDLY_MEMBER, "DEV_@b:x", a));
        assert!(!state_key_owned_by(RTC_MEMBER, "DEV_@a:x", a));
        assert!(state_key_owned_by(RTC_MEMBER, "_@a:x_DEV_m.call", a));
        assert!(state_key_owned_by(RTC_MEMBER, "@a:x_DEV_m.call", a));
        assert!(state_key_owned_by(RTC_MEMBER, "@a:x", a));
        assert!(!state_key_owned_by(RTC_MEMBER, "_@b:x_DEV_m.call", a));
        // A user id that is a prefix of another's is not its owner.
        assert!(!state_key_owned_by(RTC_MEMBER, "_@a:xy_DEV_m.call", a));
        assert!(!state_key_owned_by(RTC_MEMBER, "_@a:x.evil_DEV", a));
    }

    #[test]
    fn sticky_member() {
        let c = json!({"slot_id": "m.call#ROOM", "application": {"type": "m.call"},
            "member": {"user_id": "@a:x", "device_id": "DEV", "id": "m1"},
            "rtc_transports": [{"type": "livekit", "livekit_service_url": "https://sfu"}], "versions": [],
            "msc4354_sticky_key": "m1"});
        let p = parse(RTC_MEMBER_STICKY, &c).unwrap().unwrap();
        assert_eq!(p.entries[0].call_id, "");
        assert_eq!(sticky_user(&c), Some("@a:x"));
        assert_eq!(sticky_key(&c), Some("m1"));
        let slot = |slot: &str| {
            let mut c = c.clone();
            c["slot_id"] = json!(slot);
            parse(RTC_MEMBER_STICKY, &c).map(|p| p.map(|p| p.entries[0].call_id.clone()))
        };
        assert_eq!(slot("m.call#abc").unwrap(), Some("abc".into()));
        assert_eq!(slot("org.example.app#ROOM").unwrap(), Some(String::new()));
        // Malformed slots are refused, not turned into a call id.
        for bad in ["m.call", "ROOM", "", "#ROOM", "m.call#"] {
            let e = slot(bad).expect_err(bad);
            assert_eq!(e.kind, WireErrorKind::Invalid, "{bad}: {e:?}");
        }
        assert!(parse(RTC_MEMBER_STICKY, &json!({"msc4354_sticky_key": "m1"}))
            .unwrap()
            .unwrap()
            .entries
            .is_empty());
    }
}
