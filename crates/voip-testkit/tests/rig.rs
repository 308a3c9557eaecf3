//! The rig itself: a homeserver is there, users register, clients log in and sync.

use std::time::Duration;

use anyhow::Result;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_registers_users_and_clients_sync() -> Result<()> {
    let hs = voip_testkit::synapse();
    assert!(hs.url.starts_with("http://127.0.0.1:"), "{}", hs.url);

    let (alice, client) = voip_testkit::new_client("alice").await?;
    assert!(alice.user_id.starts_with("@alice-") && alice.user_id.ends_with(":localhost"));
    assert_eq!(client.user_id().map(|u| u.to_string()), Some(alice.user_id.clone()));
    // A second device of the same user has its own store and device id.
    let second = voip_testkit::login(&alice, Some("SECONDDEV")).await?;
    assert_eq!(second.device_id().map(|d| d.to_string()).as_deref(), Some("SECONDDEV"));

    let _sync = voip_testkit::Syncing::start(&client).await?;
    let versions = client.server_versions().await?;
    assert!(!versions.is_empty());
    let n = voip_testkit::wait_for("a value", Duration::from_secs(1), || async { Some(42) }).await?;
    assert_eq!(n, 42);
    Ok(())
}

#[tokio::test]
async fn random_names_do_not_collide() {
    let a = voip_testkit::rig::random_hex(3);
    let b = voip_testkit::rig::random_hex(3);
    assert_eq!(a.len(), 6);
    assert_ne!(a, b);
    assert!(voip_testkit::rig::venv_dir().ends_with("synapse-1.163.2/venv"));
}
