//! Key exchange (RFC 4253 §7–§8, curve25519-sha256 with strict-kex): our KEXINIT, the
//! negotiation, the ECDH messages of either role, and the switch to the new keys.

use rand_core::{OsRng, RngCore};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::{ClientAuth, Driver, KexState, Role};
use crate::cipher::{OpenState, PacketCipher};
use crate::error::{Error, Result};
use crate::kex::{self, HashInputs};
use crate::keys::PublicKey;
use crate::msg::{self, Message};
use crate::wire;

impl<S> Driver<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    pub(super) fn start_kex(&mut self) -> Result<()> {
        let mut cookie = [0u8; 16];
        OsRng
            .try_fill_bytes(&mut cookie)
            .map_err(|_| Error::Kex("the OS random number generator failed"))?;
        let first = !self.initial_kex_done;
        let common = self.common();
        let (host_algs, marker) = match &self.role {
            Role::Server(c) => (c.offered_host_algs(), kex::STRICT_SERVER),
            Role::Client(c) => (c.common.algorithms.host_key.clone(), kex::STRICT_CLIENT),
        };
        // The strict-kex marker only means something in the first KEXINIT.
        let extra: Vec<&str> = if first && common.strict_kex {
            vec![marker]
        } else {
            vec![]
        };
        let payload = kex::build_kexinit(cookie, &common.algorithms, &host_algs, &extra);
        let timeout = common.handshake_timeout;
        debug!(first, "sending KEXINIT");
        self.send(&payload);
        self.kex = KexState::SentInit { ours: payload };
        self.kex_timer = Some(Box::pin(tokio::time::sleep(timeout)));
        Ok(())
    }

    pub(super) fn on_kexinit(
        &mut self,
        seq: u32,
        payload: &[u8],
        theirs: &msg::KexInit<'_>,
    ) -> Result<()> {
        if matches!(self.kex, KexState::Idle) {
            self.start_kex()?;
        }
        let ours = match std::mem::replace(&mut self.kex, KexState::Idle) {
            KexState::SentInit { ours } => ours,
            _ => return Err(Error::Protocol("KEXINIT during a key exchange".into())),
        };
        if !self.initial_kex_done {
            let peer_marker = if self.is_server() {
                kex::STRICT_CLIENT
            } else {
                kex::STRICT_SERVER
            };
            self.strict =
                self.common().strict_kex && wire::names(theirs.kex).any(|n| n == peer_marker);
            if self.strict && seq != 0 {
                return Err(Error::Protocol(
                    "strict key exchange: KEXINIT was not the first packet".into(),
                ));
            }
        }
        let ours_parsed = match Message::parse(&ours)? {
            Message::KexInit(k) => k,
            _ => return Err(Error::Kex("internal: our KEXINIT does not parse")),
        };
        let (c, s) = if self.is_server() {
            (theirs, &ours_parsed)
        } else {
            (&ours_parsed, theirs)
        };
        let neg = kex::negotiate(c, s, self.is_server())?;
        let skip_next = theirs.first_kex_follows && kex::guess_was_wrong(c, s);
        debug!(?neg, strict = self.strict, "negotiated");
        let secret = if self.is_server() {
            None
        } else {
            let secret = x25519_dalek::StaticSecret::random_from_rng(OsRng);
            let q_c = x25519_dalek::PublicKey::from(&secret);
            self.send(&msg::kex_ecdh_init(q_c.as_bytes()));
            Some(secret)
        };
        self.kex = KexState::Exchanging {
            ours,
            theirs: payload.to_vec(),
            neg,
            secret,
            skip_next,
        };
        Ok(())
    }

    pub(super) fn on_ecdh_init(&mut self, q_c: &[u8]) -> Result<()> {
        let Role::Server(cfg) = &self.role else {
            return Err(Error::Protocol("ECDH_INIT sent to a client".into()));
        };
        let cfg = cfg.clone();
        let (ours, theirs, neg) = match &mut self.kex {
            KexState::Exchanging { skip_next, .. } if *skip_next => {
                *skip_next = false;
                return Ok(());
            }
            KexState::Exchanging {
                ours, theirs, neg, ..
            } => (std::mem::take(ours), std::mem::take(theirs), *neg),
            _ => return Err(Error::Protocol("unexpected ECDH_INIT".into())),
        };
        let key = cfg
            .host_keys
            .iter()
            .find(|k| k.algorithms().contains(&neg.host_key))
            .ok_or(Error::Kex("no host key for the negotiated algorithm"))?;
        let secret = x25519_dalek::StaticSecret::random_from_rng(OsRng);
        let q_s = x25519_dalek::PublicKey::from(&secret);
        let k = kex::x25519_shared(&secret, q_c)?;
        let k_mpint = kex::encode_shared_secret(&*k);
        let k_s = key.public_key().to_blob().to_vec();
        let peer_version = self.peer_version.clone().unwrap_or_default();
        let h = kex::exchange_hash(
            &HashInputs {
                v_c: &peer_version,
                v_s: &self.our_version,
                i_c: &theirs,
                i_s: &ours,
                k_s: &k_s,
                q_c,
                q_s: q_s.as_bytes(),
            },
            &k_mpint,
        );
        let sid = self.session_id.get_or_insert_with(|| h.to_vec()).clone();
        let sig = key.sign(neg.host_key, &h)?;
        self.send(&msg::kex_ecdh_reply(&k_s, q_s.as_bytes(), &sig));
        let keys = kex::derive_session_keys(&neg, &k_mpint, &h, &sid);
        self.send(&[msg::NEWKEYS]);
        self.tx = PacketCipher::new(&keys.s2c)?;
        if self.strict {
            self.tx_seq = 0;
        }
        if self.host_key.is_none() {
            self.host_key = Some(key.public_key().clone());
        }
        self.kex = KexState::AwaitNewKeys {
            rx_keys: keys.c2s,
            neg,
        };
        Ok(())
    }

    pub(super) fn on_ecdh_reply(&mut self, k_s: &[u8], q_s: &[u8], sig: &[u8]) -> Result<()> {
        let Role::Client(cfg) = &self.role else {
            return Err(Error::Protocol("ECDH_REPLY sent to a server".into()));
        };
        let cfg = cfg.clone();
        let (ours, theirs, neg, secret) = match &mut self.kex {
            KexState::Exchanging { skip_next, .. } if *skip_next => {
                *skip_next = false;
                return Ok(());
            }
            KexState::Exchanging {
                ours,
                theirs,
                neg,
                secret,
                ..
            } => (
                std::mem::take(ours),
                std::mem::take(theirs),
                *neg,
                secret.take().ok_or(Error::Kex("no ephemeral key"))?,
            ),
            _ => return Err(Error::Protocol("unexpected ECDH_REPLY".into())),
        };
        let host = PublicKey::from_blob(k_s)?;
        if !host.supports(neg.host_key) {
            return Err(Error::Kex(
                "host key does not match the negotiated algorithm",
            ));
        }
        match &self.host_key {
            None => {
                if !cfg.host_key_check.accepts(&host) {
                    return Err(Error::HostKeyRejected(host.fingerprint()));
                }
            }
            // A re-key must not switch host keys.
            Some(prev) if *prev != host => return Err(Error::HostKeyRejected(host.fingerprint())),
            Some(_) => {}
        }
        let k = kex::x25519_shared(&secret, q_s)?;
        let k_mpint = kex::encode_shared_secret(&*k);
        let q_c = x25519_dalek::PublicKey::from(&secret);
        let peer_version = self.peer_version.clone().unwrap_or_default();
        let h = kex::exchange_hash(
            &HashInputs {
                v_c: &self.our_version,
                v_s: &peer_version,
                i_c: &ours,
                i_s: &theirs,
                k_s,
                q_c: q_c.as_bytes(),
                q_s,
            },
            &k_mpint,
        );
        host.verify(neg.host_key, &h, sig)?;
        let sid = self.session_id.get_or_insert_with(|| h.to_vec()).clone();
        let keys = kex::derive_session_keys(&neg, &k_mpint, &h, &sid);
        self.send(&[msg::NEWKEYS]);
        self.tx = PacketCipher::new(&keys.c2s)?;
        if self.strict {
            self.tx_seq = 0;
        }
        self.host_key = Some(host);
        self.kex = KexState::AwaitNewKeys {
            rx_keys: keys.s2c,
            neg,
        };
        Ok(())
    }

    pub(super) fn on_newkeys(&mut self) -> Result<()> {
        let (rx_keys, neg) = match std::mem::replace(&mut self.kex, KexState::Idle) {
            KexState::AwaitNewKeys { rx_keys, neg } => (rx_keys, neg),
            _ => return Err(Error::Protocol("unexpected NEWKEYS".into())),
        };
        self.rx = PacketCipher::new(&rx_keys)?;
        self.open_state = OpenState::default();
        if self.strict {
            self.rx_seq = 0;
        }
        self.kex_timer = None;
        self.kex_count += 1;
        self.rx_bytes = 0;
        self.tx_bytes = 0;
        self.negotiated = Some(neg);
        if let Some(iv) = self.common().rekey_interval {
            self.rekey_timer = Some(Box::pin(tokio::time::sleep(iv)));
        }
        debug!(kex_count = self.kex_count, "key exchange complete");
        if self.authenticated {
            let mut g = self.shared.lock();
            if let Some(info) = g.info.as_mut() {
                info.algorithms = neg;
                info.kex_count = self.kex_count;
            }
        }
        if !self.initial_kex_done {
            self.initial_kex_done = true;
            if !self.is_server() {
                self.send(&msg::service_request("ssh-userauth"));
                self.client_auth = ClientAuth::ServiceRequested;
            }
        }
        Ok(())
    }
}
