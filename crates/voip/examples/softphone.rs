//! A softphone: a voice call on the microphone and the speaker (feature `devices`), or on WAV
//! files (`--play in.wav` is sent instead of the microphone, `--record out.wav` records the peer
//! instead of playing it). Decoded audio through libopus (feature `codecs`).
//!
//! ```text
//! # A real account: call someone in your DM room with them (or --room !id:server) ...
//! cargo run -p voip --features devices --example softphone -- \
//!     --homeserver https://matrix.example.org --user @me:example.org --call @friend:example.org
//! # ... or wait for a call and answer it (the password comes from $SOFTPHONE_PASSWORD or --password).
//! cargo run -p voip --features devices --example softphone -- --homeserver … --user @me:example.org
//! # The audio devices cpal sees.
//! cargo run -p voip --features devices --example softphone -- --list-devices
//! # Self-test: the softphone calls a second, in-process user that answers with a 660 Hz tone
//! # and checks what went each way; it ends by itself.
//! cargo run -p voip --features devices --example softphone -- --self-test [--play in.wav] [--record out.wav]
//! ```
//!
//! Other options: `--mic NAME`, `--speaker NAME` (a device by name, see `--list-devices`; the
//! default devices otherwise), `--hangup-after SECONDS`. Without the `devices` feature the
//! softphone sends silence unless `--play` is given and only measures what it hears unless
//! `--record` is. `matrix-call` (crates/matrix-call) is the full terminal client: session
//! store, DM lookup, status line, Ctrl-C hangs up.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use voip::local::LocalHomeserver;
use voip::webrtc::media::audio::{
    goertzel_power, level_dbfs, AudioConfig, AudioHub, RemoteAudio, Tone, WavRecorder, WavSource,
};
use voip::webrtc::WebrtcConfig;
use voip::StreamExt;
use voip::{Call, CallState, CallType, Voip, VoipBuilder};

/// What the self-test's peer says.
const PEER_TONE: f64 = 660.0;

#[derive(Debug, Default)]
struct Opts {
    play: Option<PathBuf>,
    record: Option<PathBuf>,
    mic: Option<String>,
    speaker: Option<String>,
    hangup_after: Option<Duration>,
    homeserver: Option<String>,
    user: Option<String>,
    password: Option<String>,
    call: Option<String>,
    room: Option<String>,
    self_test: bool,
    list_devices: bool,
}

fn parse_args() -> Result<Opts> {
    let mut o = Opts::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--play" => o.play = Some(value()?.into()),
            "--record" => o.record = Some(value()?.into()),
            "--mic" => o.mic = Some(value()?),
            "--speaker" => o.speaker = Some(value()?),
            "--hangup-after" => o.hangup_after = Some(Duration::from_secs_f64(value()?.parse()?)),
            "--homeserver" => o.homeserver = Some(value()?),
            "--user" => o.user = Some(value()?),
            "--password" => o.password = Some(value()?),
            "--call" => o.call = Some(value()?),
            "--room" => o.room = Some(value()?),
            "--self-test" => o.self_test = true,
            "--list-devices" => o.list_devices = true,
            other => bail!("unknown argument {other:?} (see the top of examples/softphone.rs)"),
        }
    }
    Ok(o)
}

/// What the softphone heard and sent during a call.
#[derive(Debug, Default)]
struct Heard {
    frames: u64,
    /// The last 2 s of the peer's audio, mono 48 kHz (for the self-test's check).
    tail: Vec<f32>,
    /// Samples per channel the speaker played from the call (`None` without a speaker).
    speaker_played: Option<u64>,
    /// Samples per channel the microphone gave the call (`None` without a microphone).
    mic_delivered: Option<u64>,
}

/// The audio of a call: the microphone or a WAV file in; the speaker or a WAV file out.
struct Audio {
    output: tokio::task::JoinHandle<Result<Heard>>,
    #[cfg(feature = "devices")]
    mic: Option<voip::webrtc::media::audio::devices::DeviceMonitor>,
}

impl Audio {
    fn start(call: &Call, opts: &Opts) -> Result<Self> {
        // In: the file, else the microphone, else silence.
        #[cfg(feature = "devices")]
        let mut mic = None;
        if let Some(p) = &opts.play {
            let wav = WavSource::open(p).with_context(|| format!("{}", p.display()))?;
            call.replace_audio_input(wav);
            println!("sending {}", p.display());
        } else {
            #[cfg(feature = "devices")]
            {
                use voip::webrtc::media::audio::devices::Microphone;
                let m = Microphone::open(opts.mic.as_deref()).context("microphone")?;
                println!("microphone: {} ({:?})", m.device_name(), m.format());
                mic = Some(m.monitor());
                call.replace_audio_input(m);
            }
            #[cfg(not(feature = "devices"))]
            println!("built without the `devices` feature: sending silence (use --play FILE.wav)");
        }
        // Out: the file, else the speaker, else only measured.
        let record = opts.record.clone();
        #[cfg(feature = "devices")]
        let speaker = match &record {
            None => {
                use voip::webrtc::media::audio::devices::Speaker;
                let s = Speaker::open(opts.speaker.as_deref()).context("speaker")?;
                println!("speaker: {} ({:?})", s.device_name(), s.format());
                Some(s)
            }
            Some(_) => None,
        };
        let call = call.clone();
        let output = tokio::spawn(async move {
            let mut audio = remote_audio(&call).await?;
            let mut rec = match &record {
                Some(p) => Some(WavRecorder::create(p, 1).with_context(|| format!("{}", p.display()))?),
                None => None,
            };
            let mut heard = Heard::default();
            let (mut second, mut since) = (Vec::new(), Instant::now());
            while let Some(frame) = audio.next().await {
                heard.frames += 1;
                if let Some(r) = &mut rec {
                    r.write_frame(&frame)?;
                }
                #[cfg(feature = "devices")]
                if let Some(s) = &speaker {
                    s.push(&frame);
                }
                let mono = frame.mono_f32();
                second.extend_from_slice(&mono);
                heard.tail.extend_from_slice(&mono);
                let excess = heard.tail.len().saturating_sub(96_000);
                heard.tail.drain(..excess);
                if since.elapsed() >= Duration::from_secs(1) {
                    println!("  hearing the peer at {:.1} dBFS", level_dbfs(&second));
                    (second, since) = (Vec::new(), Instant::now());
                }
            }
            if let Some(r) = rec {
                r.finish()?;
            }
            #[cfg(feature = "devices")]
            if let Some(s) = &speaker {
                let st = s.stats();
                println!(
                    "speaker: {:.2} s played from the call, {:.2} s of underrun, {} callbacks{}",
                    st.delivered as f64 / f64::from(s.format().sample_rate),
                    st.underrun as f64 / f64::from(s.format().sample_rate),
                    st.callbacks,
                    if st.paced { " (unclocked device, paced)" } else { "" }
                );
                heard.speaker_played = Some(st.delivered * 48_000 / u64::from(s.format().sample_rate.max(1)));
            }
            Ok(heard)
        });
        Ok(Audio {
            output,
            #[cfg(feature = "devices")]
            mic,
        })
    }

    async fn finish(self) -> Result<Heard> {
        let heard = tokio::time::timeout(Duration::from_secs(5), self.output)
            .await
            .context("the peer's audio did not end with the call")???;
        #[cfg(feature = "devices")]
        let heard = match &self.mic {
            Some(m) => {
                let st = m.stats();
                println!(
                    "microphone: {} samples given to the call, {} callbacks",
                    st.delivered, st.callbacks
                );
                Heard { mic_delivered: Some(st.delivered), ..heard }
            }
            None => heard,
        };
        Ok(heard)
    }
}

/// Decoded audio of the peer's first stream (its id comes with the SDP stream metadata).
async fn remote_audio(call: &Call) -> Result<RemoteAudio> {
    loop {
        if let Some(s) = call.streams().1.into_iter().next() {
            return call.remote_audio(&s.stream_id).context("no decoded audio");
        }
        if call.state() == CallState::Ended {
            bail!("the call ended before the peer's stream was known");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Holds a connected call until it ends (or `hangup_after`), with its audio.
async fn hold(call: &Call, opts: &Opts) -> Result<Heard> {
    tokio::time::timeout(Duration::from_secs(30), call.wait_for_state(CallState::Connected))
        .await
        .context("not connected within 30 s")?
        .context("the call ended before it connected")?;
    println!("connected");
    let audio = match Audio::start(call, opts) {
        Ok(a) => a,
        Err(e) => {
            // No microphone or speaker: end the call rather than leave the peer hanging.
            let _ = call.hangup().await;
            return Err(e);
        }
    };
    match opts.hangup_after {
        Some(d) => {
            if tokio::time::timeout(d, call.ended()).await.is_err() {
                println!("hanging up");
                call.hangup().await?;
            }
        }
        None => {
            call.ended().await;
        }
    }
    let ended = call.ended().await;
    println!("call ended: {ended:?}");
    audio.finish().await
}

fn media() -> WebrtcConfig {
    WebrtcConfig::default().with_audio(AudioHub::new(AudioConfig::default()))
}

/// A real account: log in, sync, call or answer.
async fn real_account(opts: &Opts) -> Result<()> {
    let url = opts.homeserver.as_deref().context("--homeserver")?;
    let user = opts.user.as_deref().context("--homeserver needs --user")?;
    let password = match &opts.password {
        Some(p) => p.clone(),
        None => std::env::var("SOFTPHONE_PASSWORD").context("--password or $SOFTPHONE_PASSWORD")?,
    };
    let client = matrix_sdk::Client::builder().homeserver_url(url).build().await?;
    client.matrix_auth().login_username(user, &password).initial_device_display_name("softphone").await?;
    let voip = Voip::from_client(&client)?.webrtc(media()).build()?;
    let mut incoming = voip.incoming_calls();
    let sync_client = client.clone();
    let sync = tokio::spawn(async move {
        voip::sync::sync(&sync_client, matrix_sdk::config::SyncSettings::default()).await
    });
    let result = async {
        let call = match &opts.call {
            Some(peer) => {
                let peer_id = matrix_sdk::ruma::UserId::parse(peer.as_str())?;
                let room = match &opts.room {
                    Some(r) => r.clone(),
                    None => {
                        // The DM room is known after the first sync.
                        let deadline = Instant::now() + Duration::from_secs(10);
                        loop {
                            if let Some(r) = client.get_dm_room(&peer_id) {
                                break r.room_id().to_string();
                            }
                            ensure!(Instant::now() < deadline, "no DM room with {peer}: pass --room");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                };
                println!("calling {peer} in {room}");
                voip.invite_to_call(&room, CallType::Voice, peer.as_str()).await?
            }
            None => {
                println!("waiting for a call");
                let call = incoming.next().await.context("no incoming call")?;
                println!("answering {:?}", call.remote_user());
                call.answer_with(CallType::Voice).await?;
                call
            }
        };
        hold(&call, opts).await.map(|_| ())
    }
    .await;
    voip.shutdown().await;
    sync.abort();
    result
}

/// The softphone calls an in-process peer that answers with a tone; checks both directions.
async fn self_test(opts: &Opts) -> Result<()> {
    let hs = LocalHomeserver::new();
    let room = hs.create_room(&["@phone:local", "@peer:local"]);
    let loopback = || WebrtcConfig::loopback().with_audio(AudioHub::new(AudioConfig::default()));
    let c = hs.connect("@peer:local", "PEER");
    let peer = VoipBuilder::new(c.device, c.transport, c.inputs).webrtc(loopback()).build()?;
    let c = hs.connect("@phone:local", "PHONE");
    let phone = VoipBuilder::new(c.device, c.transport, c.inputs).webrtc(loopback()).build()?;

    let mut incoming = peer.incoming_calls();
    let peer_side = tokio::spawn(async move {
        let call = incoming.next().await.context("no call at the peer")?;
        call.replace_audio_input(Tone::new(PEER_TONE, 0.4));
        call.answer_with(CallType::Voice).await?;
        let mut audio = remote_audio(&call).await?;
        let (mut frames, mut loudest) = (0u64, -100.0f32);
        while let Some(f) = audio.next().await {
            frames += 1;
            loudest = loudest.max(f.level_dbfs());
        }
        anyhow::Ok((frames, loudest))
    });

    let call = phone.invite_to_call(&room, CallType::Voice, "@peer:local").await?;
    let span = opts.hangup_after.unwrap_or(Duration::from_secs(3));
    let opts = Opts { hangup_after: Some(span), ..Opts::default_like(opts) };
    let started = Instant::now();
    let heard = hold(&call, &opts).await?;
    let (peer_frames, peer_loudest) = peer_side.await??;
    let talked = started.elapsed().as_secs_f64().min(span.as_secs_f64() + 1.0);
    phone.shutdown().await;
    peer.shutdown().await;

    let on = goertzel_power(&heard.tail, 48_000, PEER_TONE);
    let off = [440.0, 900.0, 1300.0, 2000.0]
        .iter()
        .map(|&f| goertzel_power(&heard.tail, 48_000, f))
        .fold(0.0, f64::max);
    let margin = 10.0 * (on / off.max(1e-20)).log10();
    println!(
        "self-test: the softphone heard {} frames, the peer's {PEER_TONE} Hz {margin:.1} dB above other \
         frequencies; the peer heard {peer_frames} frames, loudest {peer_loudest:.1} dBFS",
        heard.frames
    );
    ensure!(margin >= 20.0, "the peer's tone did not come through ({margin:.1} dB)");
    // 50 frames a second for most of the call (the first ones fill the jitter buffer).
    let expected = 50.0 * (span.as_secs_f64() - 1.0);
    ensure!(heard.frames as f64 >= expected, "the softphone heard only {} frames", heard.frames);
    ensure!(peer_frames as f64 >= expected, "the peer heard only {peer_frames} frames");
    if opts.play.is_some() {
        ensure!(peer_loudest > -40.0, "the peer did not hear the played file ({peer_loudest:.1} dBFS)");
    }
    if let Some(played) = heard.speaker_played {
        let secs = played as f64 / 48_000.0;
        println!("self-test: the speaker played {secs:.2} s of the peer in {talked:.2} s");
        ensure!(secs >= 0.7 * (span.as_secs_f64() - 1.0), "the speaker played only {secs:.2} s");
    }
    if let Some(given) = heard.mic_delivered {
        ensure!(given > 0, "the microphone gave the call nothing");
    }
    println!("self-test passed");
    Ok(())
}

impl Opts {
    /// The audio options of `o` (what `hold` uses).
    fn default_like(o: &Opts) -> Opts {
        Opts {
            play: o.play.clone(),
            record: o.record.clone(),
            mic: o.mic.clone(),
            speaker: o.speaker.clone(),
            ..Opts::default()
        }
    }
}

fn list_devices() -> Result<()> {
    #[cfg(feature = "devices")]
    {
        use voip::webrtc::media::audio::devices;
        let all = devices::list()?;
        if all.is_empty() {
            println!("no audio devices ({})", devices::host_name());
        }
        for d in all {
            let format = d
                .default_format
                .map(|f| format!("{} Hz, {} ch, {}", f.sample_rate, f.channels, f.format))
                .unwrap_or_else(|| "no default configuration".into());
            println!("{:<6} {}{} ({format})", d.direction, if d.is_default { "* " } else { "  " }, d.name);
        }
        Ok(())
    }
    #[cfg(not(feature = "devices"))]
    bail!("built without the `devices` feature")
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error,matrix_sdk::http_client=off".into()),
        )
        .try_init();
    let opts = parse_args()?;
    if opts.list_devices {
        return list_devices();
    }
    if opts.self_test {
        return tokio::time::timeout(Duration::from_secs(60), self_test(&opts))
            .await
            .context("the self-test did not finish within 60 s")?;
    }
    if opts.homeserver.is_none() {
        bail!("--homeserver URL --user @me:server [--call @peer:server], or --self-test, or --list-devices");
    }
    real_account(&opts).await
}
