//! `devices` (feature `devices`): the audio input and output devices, as the library lists them
//! (`voip::webrtc::media::audio::devices`); the names are what `--mic` and `--speaker` take.

use std::collections::BTreeSet;

use serde_json::json;
use voip::webrtc::media::audio::devices;

use crate::error::CliError;
use crate::output::Out;

/// Lists every input and output device, with its default configuration and what it supports.
pub fn list(out: &Out) -> Result<(), CliError> {
    let host = devices::host_name();
    let all = devices::list().map_err(|e| CliError::Other(anyhow::anyhow!("{host}: {e}")))?;
    for d in &all {
        let (rate, channels, format) = match &d.default_format {
            Some(f) => (Some(f.sample_rate), Some(f.channels), Some(f.format.clone())),
            None => (None, None, None),
        };
        let formats: BTreeSet<&str> = d.configs.iter().map(|c| c.format.as_str()).collect();
        let max_channels = d.configs.iter().map(|c| c.channels).max();
        let min_rate = d.configs.iter().map(|c| c.min_rate).min();
        let max_rate = d.configs.iter().map(|c| c.max_rate).max();
        out.event(
            "device",
            json!({ "host": host, "kind": d.direction.to_string(), "name": d.name, "default": d.is_default,
                    "sample_rate": rate, "channels": channels, "format": format,
                    "formats": formats, "max_channels": max_channels, "min_rate": min_rate, "max_rate": max_rate }),
            || {
                let default = match (rate, channels, &format) {
                    (Some(r), Some(c), Some(f)) => format!("{r} Hz, {c} ch, {f}"),
                    _ => "no default configuration".to_owned(),
                };
                let supports = match (min_rate, max_rate, max_channels) {
                    (Some(lo), Some(hi), Some(ch)) => {
                        let formats: Vec<&str> = formats.iter().copied().collect();
                        format!("; supports {lo}–{hi} Hz, up to {ch} ch, {}", formats.join("/"))
                    }
                    _ => String::new(),
                };
                format!(
                    "{:<6} {}{} ({default}{supports})",
                    d.direction.to_string(),
                    if d.is_default { "* " } else { "  " },
                    d.name
                )
            },
        );
    }
    if all.is_empty() {
        out.event("no_devices", json!({ "host": host }), || format!("No audio devices ({host})"));
    }
    Ok(())
}
