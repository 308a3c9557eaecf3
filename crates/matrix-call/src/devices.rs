//! `devices` (feature `devices`): the audio input and output devices cpal sees.

use cpal::traits::{DeviceTrait, HostTrait};
use serde_json::json;

use crate::error::CliError;
use crate::output::Out;

/// Lists every input and output device, with its default configuration.
pub fn list(out: &Out) -> Result<(), CliError> {
    let host = cpal::default_host();
    let host_name = host.id().name();
    let default_input = host.default_input_device().and_then(|d| d.name().ok());
    let default_output = host.default_output_device().and_then(|d| d.name().ok());
    let mut count = 0;
    for (kind, default) in [("input", &default_input), ("output", &default_output)] {
        let devices = if kind == "input" { host.input_devices() } else { host.output_devices() };
        let devices = devices.map_err(|e| CliError::Other(anyhow::anyhow!("{host_name}: {e}")))?;
        for device in devices {
            let Ok(name) = device.name() else { continue };
            let config =
                if kind == "input" { device.default_input_config() } else { device.default_output_config() };
            let (rate, channels) = match &config {
                Ok(c) => (Some(c.sample_rate().0), Some(c.channels())),
                Err(_) => (None, None),
            };
            let is_default = default.as_deref() == Some(name.as_str());
            count += 1;
            out.event(
                "device",
                json!({ "host": host_name, "kind": kind, "name": name, "default": is_default,
                        "sample_rate": rate, "channels": channels }),
                || {
                    let format = match (rate, channels) {
                        (Some(r), Some(c)) => format!("{r} Hz, {c} ch"),
                        _ => "no default configuration".to_owned(),
                    };
                    format!("{kind:<6} {}{name} ({format})", if is_default { "* " } else { "  " })
                },
            );
        }
    }
    if count == 0 {
        out.event("no_devices", json!({ "host": host_name }), || format!("No audio devices ({host_name})"));
    }
    Ok(())
}
