//! Ctrl-C (SIGINT) and SIGTERM: the first one asks the running command to stop cleanly (a call
//! is hung up and the hangup sent before the program exits); a second one exits at once.

use tokio::sync::watch;

/// The interrupt flag; cheap to clone.
#[derive(Clone, Debug)]
pub struct Interrupt {
    rx: watch::Receiver<bool>,
}

impl Interrupt {
    /// Installs the signal handler (once per process; Unix only, elsewhere Ctrl-C ends the
    /// process as usual).
    pub fn install() -> std::io::Result<Interrupt> {
        let (tx, rx) = watch::channel(false);
        #[cfg(unix)]
        {
            use signal_hook::consts::{SIGINT, SIGTERM};
            let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
            std::thread::Builder::new().name("signals".into()).spawn(move || {
                let mut count = 0u32;
                for _ in signals.forever() {
                    count += 1;
                    if count > 1 {
                        eprintln!("\nmatrix-call: interrupted twice: exiting without cleaning up");
                        std::process::exit(i32::from(crate::error::exit::INTERRUPTED));
                    }
                    let _ = tx.send(true);
                }
            })?;
        }
        #[cfg(not(unix))]
        drop(tx);
        Ok(Interrupt { rx })
    }

    /// Waits for an interrupt (returns at once if one arrived already; never without a
    /// handler).
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        if rx.wait_for(|set| *set).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
