//! Audio devices (feature `devices`) through ALSA's `null` PCM, so that the device path runs on
//! a machine without a sound card: a real loopback call (libopus, webrtc-rs) whose remote audio
//! plays into a `Speaker` and whose input is a `Microphone`.
//!
//! cpal's ALSA host lists `default` and the sound cards, not ALSA's `null` PCM by name, so the
//! test runs itself again in a child process whose ALSA configuration (`$XDG_CONFIG_HOME/alsa/
//! asoundrc` and `$HOME/.asoundrc`, in a temporary directory) makes `default` the `null` PCM.
//! The developer's own ALSA configuration is not touched, and a real sound card never plays.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Pair;
use voip_core::media::{CallType, MediaKind};
use voip_core::StreamId;
use voip_webrtc::media::audio::devices::{self, DeviceError, DeviceOptions, Direction, Microphone, Speaker};
use voip_webrtc::media::audio::{AudioConfig, AudioHub, PcmSource, Tone};
use voip_webrtc::WebrtcConfig;

/// Set in the child process that runs with `default` = ALSA `null`.
const CHILD: &str = "VOIP_TEST_ALSA_NULL";

/// Runs test `name` of this binary again with an ALSA configuration whose `default` PCM is
/// `null`; its output is passed through.
fn in_child_with_alsa_null(name: &str) {
    let dir = std::env::temp_dir().join(format!("voip-alsa-null-{}-{name}", std::process::id()));
    let conf = "pcm.!default { type null }\n";
    std::fs::create_dir_all(dir.join("alsa")).unwrap();
    std::fs::write(dir.join("alsa/asoundrc"), conf).unwrap();
    std::fs::write(dir.join(".asoundrc"), conf).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("XDG_CONFIG_HOME", &dir)
        .env("HOME", &dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    // Without alsa-lib's complaints about the PCMs cpal probes (pipewire, pulse, jack, oss).
    for line in String::from_utf8_lossy(&out.stderr).lines().filter(|l| !l.starts_with("ALSA lib ")) {
        eprintln!("{line}");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the child run of {name} failed");
    assert!(stdout.contains("1 passed"), "the child did not run {name}");
}

/// CPU time of this process (user + system), from /proc.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // After the name: state (3), …, utime (14), stime (15).
    let ticks = field(11) + field(12);
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

#[test]
fn devices_are_listed_and_a_missing_one_is_an_error() {
    if std::env::var_os(CHILD).is_none() {
        return in_child_with_alsa_null("devices_are_listed_and_a_missing_one_is_an_error");
    }
    let all = devices::list().expect("list");
    for d in &all {
        let channels: Vec<u16> = d.configs.iter().map(|c| c.channels).collect();
        let formats: std::collections::BTreeSet<&str> = d.configs.iter().map(|c| c.format.as_str()).collect();
        println!(
            "{} {:<6} {}{} default {:?}; {} configurations ({} to {} channels, formats {formats:?})",
            devices::host_name(),
            d.direction,
            if d.is_default { "* " } else { "  " },
            d.name,
            d.default_format,
            d.configs.len(),
            channels.iter().min().unwrap_or(&0),
            channels.iter().max().unwrap_or(&0),
        );
    }
    for direction in [Direction::Input, Direction::Output] {
        let null = all
            .iter()
            .find(|d| d.direction == direction && d.name == "default")
            .unwrap_or_else(|| panic!("no {direction} device `default` (the null PCM) in {all:?}"));
        assert!(null.is_default);
        let format = null.default_format.as_ref().expect("a default format");
        assert!(format.sample_rate > 0 && format.channels > 0);
        assert!(!null.configs.is_empty());
        assert!(null.configs.iter().any(|c| c.format == "f32" || c.format == "i16"));
    }
    match Microphone::open(Some("no such microphone")) {
        Err(DeviceError::NotFound { direction: Direction::Input, name, available }) => {
            assert_eq!(name, "no such microphone");
            assert!(available.iter().any(|n| n == "default"), "{available:?}");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(matches!(Speaker::open(Some("no such speaker")), Err(DeviceError::NotFound { .. })));
    // A rate and a sample format asked for explicitly: 16 kHz i16 capture, 48 kHz i16 playback.
    let options =
        DeviceOptions { sample_rate: Some(16_000), format: Some("i16".into()), ..DeviceOptions::default() };
    let mut mic = Microphone::open_with(&options).expect("16 kHz i16 microphone");
    assert_eq!((mic.format().sample_rate, mic.format().format.as_str()), (16_000, "i16"));
    let options = DeviceOptions { format: Some("i16".into()), sample_rate: Some(48_000), ..options };
    let speaker = Speaker::open_with(&options).expect("48 kHz i16 speaker");
    assert_eq!(speaker.format().format, "i16");
    let unsupported = DeviceOptions { format: Some("i24".into()), ..DeviceOptions::default() };
    assert!(matches!(Speaker::open_with(&unsupported), Err(DeviceError::Config { .. })));
    // Both run: the speaker plays pushed PCM (mono 48 kHz, remixed to the device's channels),
    // the microphone gives samples once its prebuffer is filled.
    let start = std::time::Instant::now();
    let mut read = 0;
    let mut buf = vec![1.0f32; 320 * usize::from(mic.format().channels)];
    while start.elapsed() < Duration::from_millis(600) {
        speaker.push_f32(48_000, 1, &[0.25; 960]);
        read += mic.read(&mut buf);
        std::thread::sleep(Duration::from_millis(20));
    }
    let (s, m) = (speaker.stats(), mic.stats());
    println!("i16 speaker {s:?}; i16 microphone {m:?}");
    assert!(s.delivered > 48_000 / 4, "the i16 speaker played {} samples", s.delivered);
    assert!(m.delivered > 16_000 / 4 && read > 0, "the i16 microphone gave {} samples", m.delivered);
    assert!(buf.iter().all(|&x| x == 0.0), "null capture is silence");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_plays_on_a_speaker_and_sends_a_microphone() {
    if std::env::var_os(CHILD).is_none() {
        return in_child_with_alsa_null("a_call_plays_on_a_speaker_and_sends_a_microphone");
    }
    common::init_tracing();
    // By name and by default: both are the null PCM here.
    let speaker = Speaker::open(Some("default")).expect("speaker on the null PCM");
    let mic = Microphone::open(None).expect("microphone on the null PCM");
    let (sf, mf) = (speaker.format(), mic.format());
    println!("speaker {} {sf:?}; microphone {} {mf:?}", speaker.device_name(), mic.device_name());
    let mic_monitor = mic.monitor();

    let hub_a = AudioHub::new(AudioConfig::default());
    let hub_b = AudioHub::new(AudioConfig::default());
    let mut pair = Pair::new(
        WebrtcConfig::loopback().with_audio(hub_a.clone()),
        WebrtcConfig::loopback().with_audio(hub_b.clone()),
    );
    let call = pair.call.clone();
    // A talks into the microphone and listens on the speaker; B sends a tone.
    hub_a.input(&call).replace(mic);
    hub_b.input(&call).replace(Tone::new(440.0, 0.5));
    let player = speaker.play(hub_a.remote_audio(&call, &StreamId::from("b-user")));
    let mut heard_by_b = hub_b.remote_audio(&call, &StreamId::from("a-user"));
    pair.connect(CallType::Voice).await;
    let flowing = pair
        .pump_until(Duration::from_secs(10), |p| {
            p.a.remote_packets(&call, "b-user", MediaKind::Audio) >= 25
                && p.b.remote_packets(&call, "a-user", MediaKind::Audio) >= 25
        })
        .await;
    assert!(flowing, "no audio both ways");

    // Measure a window of steady state.
    let window = Duration::from_secs(3);
    let (s0, m0, cpu0, t0) = (speaker.stats(), mic_monitor.stats(), cpu_time(), Instant::now());
    let packets_b0 = pair.b.remote_packets(&call, "a-user", MediaKind::Audio);
    let mut b_level = Vec::new();
    let end = tokio::time::Instant::now() + window;
    while let Ok(Some(f)) = tokio::time::timeout_at(end, heard_by_b.next()).await {
        b_level.push(f.level_dbfs());
    }
    let elapsed = t0.elapsed();
    let (s1, m1, cpu) = (speaker.stats(), mic_monitor.stats(), cpu_time().saturating_sub(cpu0));
    let packets_b = pair.b.remote_packets(&call, "a-user", MediaKind::Audio) - packets_b0;

    let secs = elapsed.as_secs_f64();
    let rate = |samples: u64, sample_rate: u32| samples as f64 / secs / f64::from(sample_rate);
    let speaker_device = rate(s1.device_samples - s0.device_samples, sf.sample_rate);
    let speaker_call = rate(s1.delivered - s0.delivered, sf.sample_rate);
    let speaker_underrun = rate(s1.underrun - s0.underrun, sf.sample_rate);
    let mic_device = rate(m1.device_samples - m0.device_samples, mf.sample_rate);
    let mic_call = rate(m1.delivered - m0.delivered, mf.sample_rate);
    let loudest_at_b = b_level.iter().copied().fold(-100.0f32, f32::max);
    println!(
        "over {elapsed:?}: speaker took {speaker_device:.3} s of audio per second ({:.3} s from the call, \
         {speaker_underrun:.3} s silence for underruns; callbacks {}, overflow {}, paced {}); \
         microphone gave {mic_device:.3} s per second, the call took {mic_call:.3} s per second \
         (overflow {}, paced {}); B received {packets_b} packets, decoded {} frames, loudest {loudest_at_b:.1} dBFS; \
         CPU {cpu:?} ({:.0} % of one core)",
        speaker_call,
        s1.callbacks - s0.callbacks,
        s1.overflow - s0.overflow,
        s1.paced,
        m1.overflow - m0.overflow,
        m1.paced,
        b_level.len(),
        100.0 * cpu.as_secs_f64() / secs,
    );
    // The null PCM is not clocked: both streams were recognised as such and held to real time.
    assert!(s1.paced && m1.paced, "null PCM streams not paced: {s1:?} {m1:?}");
    assert!((0.9..1.15).contains(&speaker_device), "speaker device rate {speaker_device:.3}");
    assert!((0.9..1.15).contains(&mic_device), "microphone device rate {mic_device:.3}");
    // The call's decoded audio fed the speaker at real time (little of it was silence).
    assert!((0.85..1.1).contains(&speaker_call), "speaker fed {speaker_call:.3} s per second");
    assert!(speaker_underrun < 0.15, "{speaker_underrun:.3} s per second of underrun");
    // The microphone's samples went into the call at real time and reached B (as silence:
    // a null capture gives zeros).
    assert!((0.85..1.1).contains(&mic_call), "microphone fed {mic_call:.3} s per second");
    assert!(packets_b as f64 >= 40.0 * secs, "B received {packets_b} packets in {elapsed:?}");
    assert!(b_level.len() as f64 >= 40.0 * secs, "B decoded {} frames", b_level.len());
    assert!(loudest_at_b < -60.0, "the null microphone is silent, B heard {loudest_at_b:.1} dBFS");
    // Paced, the device threads do not spin: a spinning one alone would take a whole core.
    assert!(cpu.as_secs_f64() < 0.8 * secs, "CPU {cpu:?} in {elapsed:?}");

    pair.hang_up_and_check_no_leaks().await;
    let frames = tokio::time::timeout(Duration::from_secs(5), player).await.expect("player ended").unwrap();
    assert!(frames as f64 >= 50.0 * secs * 0.85, "the speaker got {frames} frames");
    drop(speaker);
}
