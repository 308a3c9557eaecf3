//! Glue to `voip-matrix` (feature `matrix`): OpenID tokens and transport discovery through the
//! app's logged-in matrix-sdk client.

use voip_matrix::MatrixAdapter;

use crate::discovery::{fetch_rtc_transports, DiscoveryError, RtcTransport};
use crate::jwt::{OpenIdSource, OpenIdToken};

impl From<voip_matrix::OpenIdToken> for OpenIdToken {
    fn from(t: voip_matrix::OpenIdToken) -> Self {
        OpenIdToken {
            access_token: t.access_token,
            token_type: t.token_type,
            matrix_server_name: t.matrix_server_name,
            expires_in: t.expires_in.as_secs(),
        }
    }
}

impl OpenIdSource for MatrixAdapter {
    async fn openid_token(&self) -> Result<OpenIdToken, String> {
        MatrixAdapter::openid_token(self).await.map(Into::into).map_err(|e| e.to_string())
    }
}

/// The homeserver's transports (`rtc/transports`), asked with the client's access token.
/// Empty when the server does not support MSC4143 or the client is not logged in.
pub async fn homeserver_transports(
    adapter: &MatrixAdapter,
    http: &reqwest::Client,
) -> Result<Vec<RtcTransport>, DiscoveryError> {
    let client = adapter.client();
    let Some(token) = client.access_token() else { return Ok(Vec::new()) };
    fetch_rtc_transports(http, client.homeserver().as_str(), &token).await
}
