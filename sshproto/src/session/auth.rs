//! User authentication (RFC 4252): the server's policy (`none` for listed users,
//! `publickey` for authorized keys) and the client's `none`-then-`publickey` sequence.

use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::{ClientAuth, Driver, Role};
use crate::config::NoneAuth;
use crate::error::{Error, Result};
use crate::kex::{self, Negotiated};
use crate::keys::{PublicKey, SignatureAlgorithm};
use crate::msg::{self, AuthMethod};
use crate::shared::SessionInfo;
use crate::wire;

impl<S> Driver<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    pub(super) fn set_authenticated(&mut self) {
        self.authenticated = true;
        let info = SessionInfo {
            peer_version: String::from_utf8_lossy(self.peer_version.as_deref().unwrap_or_default())
                .into_owned(),
            user: self.user.clone(),
            algorithms: self.negotiated.unwrap_or(Negotiated {
                kex: kex::KexAlgorithm::Curve25519Sha256,
                host_key: SignatureAlgorithm::Ed25519,
                cipher_c2s: crate::Cipher::ChaCha20Poly1305,
                cipher_s2c: crate::Cipher::ChaCha20Poly1305,
                mac_c2s: None,
                mac_s2c: None,
            }),
            strict_kex: self.strict,
            kex_count: self.kex_count,
            session_id: self.session_id.clone().unwrap_or_default(),
            host_key: self.host_key.clone(),
            client_key: self.client_key.clone(),
        };
        {
            let mut g = self.shared.lock();
            g.authenticated = true;
            g.info = Some(info);
        }
        if let Some(k) = self.common().keepalive {
            self.keepalive_timer = Some(Box::pin(tokio::time::sleep(k.interval)));
        }
        debug!(user = %self.user, "authenticated");
    }

    pub(super) fn on_userauth_request(
        &mut self,
        user: &str,
        service: &str,
        method: &AuthMethod<'_>,
    ) -> Result<()> {
        let Role::Server(cfg) = &self.role else {
            return Err(Error::Protocol("USERAUTH_REQUEST sent to a client".into()));
        };
        let cfg = cfg.clone();
        if self.authenticated {
            // RFC 4252 §5.1: requests after success are ignored.
            return Ok(());
        }
        if !self.service_accepted {
            return Err(Error::Protocol(
                "USERAUTH_REQUEST before ssh-userauth was accepted".into(),
            ));
        }
        self.auth_attempts += 1;
        if self.auth_attempts > self.common().limits.max_auth_attempts {
            return Err(Error::AuthFailed("too many attempts".into()));
        }
        let mut methods: Vec<&str> = Vec::new();
        if !cfg.auth.authorized_keys.is_empty() {
            methods.push("publickey");
        }
        let fail = |d: &mut Self| d.send(&msg::userauth_failure(&methods, false));
        if service != "ssh-connection" {
            fail(self);
            return Ok(());
        }
        match method {
            AuthMethod::None => {
                let ok = match &cfg.auth.none {
                    NoneAuth::Deny => false,
                    NoneAuth::AnyUser => true,
                    NoneAuth::Users(users) => users.iter().any(|u| u == user),
                };
                if ok {
                    self.user = user.to_string();
                    self.send(&[msg::USERAUTH_SUCCESS]);
                    self.set_authenticated();
                } else {
                    fail(self);
                }
            }
            AuthMethod::PublicKey {
                algorithm,
                blob,
                signature,
            } => {
                let alg = SignatureAlgorithm::from_name(algorithm);
                let key = PublicKey::from_blob(blob).ok();
                let authorized = key.as_ref().is_some_and(|k| {
                    cfg.auth.authorized_keys.iter().any(|a| {
                        a.to_blob().len() == k.to_blob().len()
                            && bool::from(a.to_blob().ct_eq(k.to_blob()))
                    })
                });
                match (alg, key, authorized) {
                    (Some(alg), Some(key), true) if key.supports(alg) => match signature {
                        None => self.send(&msg::userauth_pk_ok(algorithm, blob)),
                        Some(sig) => {
                            let sid = self.session_id.clone().unwrap_or_default();
                            let signed = msg::userauth_pk_signed_data(&sid, user, algorithm, blob);
                            if key.verify(alg, &signed, sig).is_ok() {
                                self.user = user.to_string();
                                self.client_key = Some(key);
                                self.send(&[msg::USERAUTH_SUCCESS]);
                                self.set_authenticated();
                            } else {
                                debug!("publickey signature did not verify");
                                fail(self);
                            }
                        }
                    },
                    _ => fail(self),
                }
            }
            AuthMethod::Password | AuthMethod::Other(_) => fail(self),
        }
        Ok(())
    }

    pub(super) fn on_userauth_failure(&mut self, methods: &str) -> Result<()> {
        let Role::Client(cfg) = &self.role else {
            return Err(Error::Protocol("USERAUTH_FAILURE sent to a server".into()));
        };
        let cfg = cfg.clone();
        if self.client_auth == ClientAuth::TriedNone
            && wire::names(methods).any(|m| m == "publickey")
        {
            if let Some(key) = &cfg.key {
                let alg = match cfg.key_algorithm {
                    Some(a) => a,
                    None => *key
                        .algorithms()
                        .first()
                        .ok_or(Error::AuthFailed("the user key cannot sign".into()))?,
                };
                let sid = self.session_id.clone().unwrap_or_default();
                let blob = key.public_key().to_blob().to_vec();
                let signed = msg::userauth_pk_signed_data(&sid, &self.user, alg.name(), &blob);
                let sig = key.sign(alg, &signed)?;
                let m = msg::userauth_pk_request(&self.user, alg.name(), &blob, Some(&sig));
                self.send(&m);
                self.client_auth = ClientAuth::TriedPublicKey;
                return Ok(());
            }
        }
        Err(Error::AuthFailed(methods.to_string()))
    }
}
