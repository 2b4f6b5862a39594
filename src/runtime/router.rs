//! Which shard owns a message that arrived on the shared phone port.
//!
//! Every shard listens on the public phone port (SO_REUSEPORT), so the
//! kernel hands a phone's packet to whichever shard its 4-tuple hashes to.
//! The router names the shard that owns the account the message is for, and
//! the receiving shard forwards it there over glommio's channel mesh. The
//! map is read by every shard and written by the control plane, so it is a
//! lock-free map (papaya), never a lock on the packet path.

use super::shard_of;
use crate::parser::{parse, Message, Uri, EMPTY_HEADER};
use crate::{AccountConfig, AccountId};
use sipis_engine::aor_key;

/// The routing keys of one account: its token key and AOR key.
type Keys = (Box<[u8]>, Option<Box<[u8]>>);

/// Token and AOR → account, shared by all shards.
pub struct Router {
    keys: papaya::HashMap<Box<[u8]>, AccountId>,
    by_id: papaya::HashMap<AccountId, Keys>,
    shards: usize,
    base_port: u16,
}

impl Router {
    pub fn new(shards: usize, base_port: u16) -> Router {
        Router {
            keys: papaya::HashMap::new(),
            by_id: papaya::HashMap::new(),
            shards,
            base_port,
        }
    }

    /// Learns (or re-learns) an account's token and AOR.
    pub fn insert(&self, cfg: &AccountConfig) {
        self.remove(cfg.id);
        let token = token_key(cfg.token.as_bytes());
        let aor = Uri::parse(cfg.aor.as_bytes())
            .ok()
            .and_then(|u| aor_key(&u));
        let keys = self.keys.pin();
        keys.insert(token.clone(), cfg.id);
        if let Some(a) = &aor {
            keys.insert(a.clone(), cfg.id);
        }
        self.by_id.pin().insert(cfg.id, (token, aor));
    }

    pub fn remove(&self, id: AccountId) {
        if let Some((token, aor)) = self.by_id.pin().remove(&id) {
            let keys = self.keys.pin();
            keys.remove(token);
            if let Some(a) = aor {
                keys.remove(a);
            }
        }
    }

    /// The account a message is for: a request by its Request-URI user (a
    /// Contact token: the provider calling an account) or else by its To
    /// AOR (a phone registering); `None` when unknown.
    pub fn account_of(&self, data: &[u8]) -> Option<AccountId> {
        let mut h = [EMPTY_HEADER; 64];
        let msg = parse(data, &mut h).ok()?;
        self.account_of_msg(&msg)
    }

    fn account_of_msg(&self, msg: &Message<'_, '_>) -> Option<AccountId> {
        if !msg.is_request() {
            return None;
        }
        let keys = self.keys.pin();
        if let Some(user) = msg.uri().ok().and_then(|u| u.user) {
            if let Some(id) = keys.get(&*token_key(user)) {
                return Some(*id);
            }
        }
        let to = msg.to().ok()?;
        keys.get(&*aor_key(&to.uri)?).copied()
    }

    /// The shard that should handle a datagram from the shared port:
    /// requests go to their account's shard, responses to the shard whose
    /// Via (its own port) they carry. `None`: handle it where it landed.
    /// The message is parsed once here; its owner parses it again, as the
    /// bytes cross threads and the parse borrows them.
    pub fn owner(&self, data: &[u8]) -> Option<usize> {
        let mut h = [EMPTY_HEADER; 64];
        let msg = parse(data, &mut h).ok()?;
        if msg.is_request() {
            return self
                .account_of_msg(&msg)
                .map(|id| shard_of(id, self.shards));
        }
        // A response to a request a shard sent from the shared port: its
        // branch names the shard. Else (a shard's own socket in the Via)
        // the Via port does.
        let via = msg.top_via().ok()?;
        if let Some(i) = via.branch().and_then(sipis_engine::shard_of_branch) {
            return (i < self.shards).then_some(i);
        }
        let i = via.port?.checked_sub(self.base_port)? as usize;
        (i < self.shards).then_some(i)
    }
}

fn token_key(token: &[u8]) -> Box<[u8]> {
    let mut k = Vec::with_capacity(token.len() + 2);
    k.extend_from_slice(b"t:");
    k.extend_from_slice(token);
    k.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AccountSecret, Registrar};

    fn cfg(id: u64) -> AccountConfig {
        AccountConfig {
            id,
            aor: format!("sip:user{id}@Provider.Example"),
            auth_user: "u".into(),
            secret: AccountSecret::Password("p".into()),
            registrar: Some(Registrar::new(
                "sip:provider.example",
                "127.0.0.1:5060".parse().unwrap(),
                None,
            )),
            expires: 3600,
            token: format!("tok{id}"),
        }
    }

    #[test]
    fn routes_by_token_then_aor_then_via_port() {
        let r = Router::new(4, 5061);
        for id in 1..=10 {
            r.insert(&cfg(id));
        }
        let invite = b"INVITE sip:tok7@10.0.0.1:5061 SIP/2.0\r\nTo: <sip:someone@else>\r\n\r\n";
        assert_eq!(r.account_of(invite), Some(7));
        let register = b"REGISTER sip:sipis SIP/2.0\r\nTo: <sip:user3@provider.example>\r\n\r\n";
        assert_eq!(r.account_of(register), Some(3));
        assert_eq!(r.owner(register), Some(shard_of(3, 4)));
        let resp = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1:5063;branch=z9hG4bKx\r\n\r\n";
        assert_eq!(r.owner(resp), Some(2));
        r.remove(3);
        assert_eq!(r.account_of(register), None);
        assert_eq!(r.owner(b"garbage"), None);
    }

    #[test]
    fn a_phones_response_via_the_shared_port_finds_its_shard_by_branch() {
        let r = Router::new(4, 5061);
        // The INVITE left from the shared port 5060 and said so in its Via.
        let resp = b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK0123456789abcdef-s3\r\n\r\n";
        assert_eq!(r.owner(resp), Some(3));
        // A mark past the shard count is nobody's.
        let resp = b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK0123456789abcdef-s9\r\n\r\n";
        assert_eq!(r.owner(resp), None);
    }
}
