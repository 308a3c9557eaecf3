//! LiveKit SFU mode: tokens from the JWT service for a group call, and the core's media keys fed
//! into an app's LiveKit key provider.

use std::sync::{Arc, Mutex};

use voip_livekit::{
    apply_encryption_key, IdentityScheme, JwtServiceClient, KeyProvider, LivekitCredentials, OpenIdSource,
    TokenRequest,
};

mod session;
pub use session::{LivekitSession, LivekitUpdate};

use crate::group::{GroupCall, GroupCallBackend};
use crate::runtime::VoipBuilder;
use crate::VoipError;

impl VoipBuilder {
    /// Installs every media key the core reports (ours when it is to be used, and each member's)
    /// into `provider` under the member's LiveKit identity per `scheme` (`Plain`
    /// `@user:server:DEVICE` for state-event memberships and `/sfu/get` tokens, `Hashed` for
    /// `/get_token`), before any app subscriber sees the key event. In shared-key mode the key
    /// becomes the shared key.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use voip::livekit_sfu::{IdentityScheme, InMemoryKeyProvider, KeyProviderOptions};
    /// # fn build(builder: voip::VoipBuilder) -> voip::VoipBuilder {
    /// let provider = Arc::new(Mutex::new(InMemoryKeyProvider::new(KeyProviderOptions::element_call())));
    /// builder.livekit_key_provider(provider.clone(), IdentityScheme::Plain)
    /// # }
    /// ```
    pub fn livekit_key_provider<P: KeyProvider + 'static>(
        self,
        provider: Arc<Mutex<P>>,
        scheme: IdentityScheme,
    ) -> Self {
        self.on_encryption_key(move |event| {
            let mut p = provider.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = apply_encryption_key(&mut *p, event, scheme) {
                tracing::warn!("media key not installed: {e}");
            }
        })
    }
}

impl GroupCall {
    /// Credentials for the app's LiveKit client (`Room::connect(url, jwt)`): an OpenID token from
    /// the homeserver exchanged at the call's JWT service (`/get_token`, falling back to
    /// `/sfu/get`). Call after [`GroupCall::enter`]; fetch again before `expires_at`.
    pub async fn livekit_credentials(&self) -> Result<LivekitCredentials, VoipError> {
        let GroupCallBackend::LiveKit { service_url, alias } = self.backend() else {
            return Err(VoipError::NotLiveKit);
        };
        let me = self.local_participant().ok_or(VoipError::NotEntered)?;
        let adapter = self.handle.ctx.adapter.as_ref().ok_or(VoipError::NoHomeserver)?;
        let openid = OpenIdSource::openid_token(adapter).await.map_err(voip_livekit::JwtError::OpenId)?;
        let request = TokenRequest::for_group(self.id(), me).with_alias(alias.clone());
        Ok(JwtServiceClient::new(service_url.clone()).get_token(&openid, &request).await?)
    }
}
