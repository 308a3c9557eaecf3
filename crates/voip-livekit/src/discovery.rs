//! Which LiveKit transport (JWT service) we publish on.
//!
//! Order, per membership dialect:
//!
//! * MatrixRTC (Element Call): the homeserver's transports
//!   (`GET /_matrix/client/unstable/org.matrix.msc4143/rtc/transports`), then the call's current
//!   memberships' `foci_preferred` (oldest member first), then the app's configuration;
//! * famedly: all members of a call share one backend, so the call's current memberships come
//!   first (their `foci_active` `livekit_service_url` and `livekit_alias`), then the
//!   homeserver, then the configuration.

use serde_json::Value;
use voip_core::{Focus, MemberInfo, MembershipDialect};

/// The unstable MSC4143 transport discovery endpoint.
pub const RTC_TRANSPORTS_PATH: &str = "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports";

/// A transport as the homeserver advertises it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RtcTransport {
    /// `{type: "livekit", livekit_service_url}`: a LiveKit SFU behind a JWT service.
    Livekit {
        /// The JWT service.
        livekit_service_url: String,
    },
    /// A LiveKit SFU named only by its own URL (`{type: "livekit" | "m.livekit", url}`, MSC4195's
    /// homeserver-issued tokens): not usable through a JWT service.
    LivekitSfu {
        /// The SFU URL.
        url: String,
    },
    /// Another transport type.
    Other {
        /// Its `type`.
        kind: String,
    },
}

/// Parses a `rtc/transports` answer (`{rtc_transports: [...]}`) leniently: malformed entries
/// are skipped.
pub fn parse_rtc_transports(body: &Value) -> Vec<RtcTransport> {
    let Some(list) = body.get("rtc_transports").and_then(Value::as_array) else { return Vec::new() };
    let s =
        |v: &Value, k: &str| v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
    list.iter()
        .take(32)
        .filter_map(|t| {
            let kind = t.get("type")?.as_str()?;
            Some(match (kind, s(t, "livekit_service_url"), s(t, "url")) {
                ("livekit", Some(livekit_service_url), _) => RtcTransport::Livekit { livekit_service_url },
                ("livekit" | "m.livekit", None, Some(url)) => RtcTransport::LivekitSfu { url },
                _ => RtcTransport::Other { kind: kind.chars().take(255).collect() },
            })
        })
        .collect()
}

/// Failures of transport discovery.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The request did not get an answer.
    #[error("rtc/transports request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The homeserver answered with an error other than "not supported".
    #[error("rtc/transports answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
}

/// Asks the homeserver for its transports. A server without MSC4143 (404 / `M_UNRECOGNIZED`)
/// yields an empty list.
pub async fn fetch_rtc_transports(
    http: &reqwest::Client,
    homeserver_url: &str,
    access_token: &str,
) -> Result<Vec<RtcTransport>, DiscoveryError> {
    let url = format!("{}{RTC_TRANSPORTS_PATH}", homeserver_url.trim_end_matches('/'));
    let r = http.get(&url).bearer_auth(access_token).send().await?;
    let status = r.status().as_u16();
    let bytes = r.bytes().await?;
    let body: Value = serde_json::from_slice(&bytes[..bytes.len().min(256 * 1024)]).unwrap_or(Value::Null);
    match status {
        200..=299 => Ok(parse_rtc_transports(&body)),
        404 => Ok(Vec::new()),
        400 if body.get("errcode").and_then(Value::as_str) == Some("M_UNRECOGNIZED") => Ok(Vec::new()),
        _ => Err(DiscoveryError::Status {
            status,
            body: String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned(),
        }),
    }
}

/// A LiveKit focus: a JWT service, plus the legacy alias (famedly, Element Call state mode).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LivekitFocus {
    /// `livekit_service_url`.
    pub service_url: String,
    /// `livekit_alias`.
    pub alias: Option<String>,
}

impl LivekitFocus {
    /// The focus of a membership, if it is a LiveKit one with a service URL.
    pub fn from_focus(focus: &Focus) -> Option<LivekitFocus> {
        match focus {
            Focus::Livekit { livekit_service_url: Some(url), livekit_alias } if !url.is_empty() => {
                Some(LivekitFocus { service_url: url.clone(), alias: livekit_alias.clone() })
            }
            _ => None,
        }
    }

    /// The first LiveKit focus of a member.
    pub fn of_member(m: &MemberInfo) -> Option<LivekitFocus> {
        m.foci.iter().find_map(LivekitFocus::from_focus)
    }

    /// As a core [`Focus`] for `Command::JoinGroupCall`. Without an alias, the room id is used,
    /// as Element Call does in state mode for older clients.
    pub fn to_focus(&self, room_id: &str) -> Focus {
        Focus::Livekit {
            livekit_service_url: Some(self.service_url.clone()),
            livekit_alias: Some(self.alias.clone().unwrap_or_else(|| room_id.to_owned())),
        }
    }
}

/// Where our transport came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportSource {
    /// The homeserver's `rtc/transports`.
    Homeserver,
    /// A current membership of the call.
    Membership,
    /// The app's configuration.
    Config,
}

/// The transport chosen for us, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnTransport {
    /// The focus.
    pub focus: LivekitFocus,
    /// Where it came from.
    pub source: TransportSource,
}

/// Chooses the transport we publish on (see the module docs for the order). `members` are the
/// call's current members, oldest first (as `Voip::group_call` lists them).
pub fn choose_own_transport(
    dialect: MembershipDialect,
    homeserver: &[RtcTransport],
    members: &[MemberInfo],
    config: Option<&LivekitFocus>,
) -> Option<OwnTransport> {
    let from_hs = || {
        homeserver.iter().find_map(|t| match t {
            RtcTransport::Livekit { livekit_service_url } => {
                Some(LivekitFocus { service_url: livekit_service_url.clone(), alias: None })
            }
            _ => None,
        })
    };
    let from_members = || members.iter().find_map(LivekitFocus::of_member);
    let with = |source| move |focus| OwnTransport { focus, source };
    let hs = || from_hs().map(with(TransportSource::Homeserver));
    let mem = || from_members().map(with(TransportSource::Membership));
    let cfg = || config.cloned().map(with(TransportSource::Config));
    match dialect {
        MembershipDialect::Famedly => mem().or_else(hs).or_else(cfg),
        MembershipDialect::MatrixRtc | MembershipDialect::Sticky => hs().or_else(mem).or_else(cfg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use voip_core::{DeviceId, Participant, Timestamp, UserId};

    fn member(url: &str, alias: Option<&str>, dialect: MembershipDialect) -> MemberInfo {
        MemberInfo {
            participant: Participant {
                user_id: UserId::from("@b:x"),
                device_id: DeviceId::from("B"),
                member_id: "m".into(),
            },
            dialect,
            application: "m.call".into(),
            scope: "m.room".into(),
            foci: vec![
                Focus::Mesh,
                Focus::Livekit {
                    livekit_service_url: Some(url.into()),
                    livekit_alias: alias.map(Into::into),
                },
            ],
            focus_selection: None,
            created: Timestamp(1),
            expires_at: Timestamp(10),
            feeds: Vec::new(),
        }
    }

    #[test]
    fn homeserver_answers_are_parsed_leniently() {
        let body = json!({"rtc_transports": [
            {"type": "livekit", "livekit_service_url": "https://jwt"},
            {"type": "livekit", "url": "ws://127.0.0.1:7880"},
            {"type": "m.livekit", "url": "wss://sfu"},
            {"type": "nextgen"},
            {"type": 5}, "junk", {"no": "type"}
        ]});
        assert_eq!(
            parse_rtc_transports(&body),
            vec![
                RtcTransport::Livekit { livekit_service_url: "https://jwt".into() },
                RtcTransport::LivekitSfu { url: "ws://127.0.0.1:7880".into() },
                RtcTransport::LivekitSfu { url: "wss://sfu".into() },
                RtcTransport::Other { kind: "nextgen".into() },
            ]
        );
        assert!(parse_rtc_transports(&json!({"rtc_transports": "x"})).is_empty());
        assert!(parse_rtc_transports(&Value::Null).is_empty());
    }

    #[test]
    fn discovery_order_depends_on_the_dialect() {
        let hs = vec![
            RtcTransport::LivekitSfu { url: "ws://sfu".into() },
            RtcTransport::Livekit { livekit_service_url: "https://hs-jwt".into() },
        ];
        let cfg = LivekitFocus { service_url: "https://cfg".into(), alias: None };
        let rtc = [member("https://member-jwt", Some("!r"), MembershipDialect::MatrixRtc)];
        let fam = [member("https://famedly-jwt", Some("alias1"), MembershipDialect::Famedly)];
        let pick = |d, hs: &[RtcTransport], m: &[MemberInfo], c| choose_own_transport(d, hs, m, c);

        let t = pick(MembershipDialect::MatrixRtc, &hs, &rtc, Some(&cfg)).unwrap();
        assert_eq!((t.focus.service_url.as_str(), t.source), ("https://hs-jwt", TransportSource::Homeserver));
        let t = pick(MembershipDialect::MatrixRtc, &hs[..1], &rtc, Some(&cfg)).unwrap();
        assert_eq!(
            (t.focus.service_url.as_str(), t.source),
            ("https://member-jwt", TransportSource::Membership)
        );
        let t = pick(MembershipDialect::MatrixRtc, &[], &[], Some(&cfg)).unwrap();
        assert_eq!(t.source, TransportSource::Config);
        assert_eq!(pick(MembershipDialect::MatrixRtc, &hs[..1], &[], None), None);

        let t = pick(MembershipDialect::Famedly, &hs, &fam, Some(&cfg)).unwrap();
        assert_eq!(t.source, TransportSource::Membership);
        assert_eq!(t.focus.alias.as_deref(), Some("alias1"));
        let t = pick(MembershipDialect::Famedly, &hs, &[], Some(&cfg)).unwrap();
        assert_eq!(t.source, TransportSource::Homeserver);
        assert_eq!(
            t.focus.to_focus("!room"),
            Focus::Livekit {
                livekit_service_url: Some("https://hs-jwt".into()),
                livekit_alias: Some("!room".into())
            }
        );
    }
}
