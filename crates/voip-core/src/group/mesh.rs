//! Mesh backend rules: who calls whom, and which calls a membership change ends or starts.

use crate::ids::{LocalDevice, Participant};

/// famedly's rule (also MSC3401's, device by device): of two member devices, the one whose
/// `userId:deviceId` sorts lower places the call; the other waits for its invite.
pub(crate) fn we_initiate(local: &LocalDevice, peer: &Participant) -> bool {
    let ours = format!("{}:{}", local.user_id, local.device_id);
    let theirs = format!("{}:{}", peer.user_id, peer.device_id);
    ours < theirs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{DeviceId, UserId};

    #[test]
    fn exactly_one_side_initiates() {
        let a = LocalDevice::new("@alice:x", "A");
        let b = LocalDevice::new("@bob:x", "B");
        let pa = Participant {
            user_id: UserId::from("@alice:x"),
            device_id: DeviceId::from("A"),
            member_id: "s".into(),
        };
        let pb = Participant {
            user_id: UserId::from("@bob:x"),
            device_id: DeviceId::from("B"),
            member_id: "s".into(),
        };
        assert!(we_initiate(&a, &pb));
        assert!(!we_initiate(&b, &pa));
        let a2 = LocalDevice::new("@alice:x", "B");
        assert!(we_initiate(
            &a,
            &Participant {
                user_id: a2.user_id.clone(),
                device_id: a2.device_id.clone(),
                member_id: "s".into()
            }
        ));
    }
}
