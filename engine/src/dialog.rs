//! A dialog as RFC 3261 §12 defines its state: Call-ID, local and remote
//! tags and URIs, the remote target, the route set and both CSeq numbers.
//!
//! sipis is a signalling-only B2BUA, so each call has one dialog per leg:
//! towards the caller sipis is the UAS (built from the caller's INVITE,
//! §12.1.1), towards each phone the UAC (built from the INVITE sipis sent
//! it, §12.1.2). Both keep the caller's Call-ID and From-tag, so a phone's
//! CallKit sees the Call-ID that was in the push. A dialog is built once
//! per leg; requests sipis originates in it (ACK, BYE, PRACK, CANCEL, the
//! relayed ones) are written from it without parsing the INVITE again.

use crate::request::{put_cseq, put_party};
use bytes::{BufMut, Bytes, BytesMut};
use sipis_parser::{self as parser, HeaderName, Message, Method, Writer};

/// The state of one leg's dialog (early or confirmed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dialog {
    pub call_id: Bytes,
    /// The tag sipis uses on this leg.
    pub local_tag: Bytes,
    /// The peer's tag: `None` until its first answer on a UAC leg.
    pub remote_tag: Option<Bytes>,
    /// sipis's side as a name-addr, without tag and `pn-*` parameters
    /// (the From of requests sipis sends on this leg).
    pub local_uri: Bytes,
    /// The peer's side as a name-addr, without tag (the To).
    pub remote_uri: Bytes,
    /// Where requests in the dialog go: the peer's Contact (§12.2.1.1),
    /// refreshed by its target-refresh answers.
    pub remote_target: Bytes,
    /// Route headers for requests in the dialog, in order.
    pub route_set: Vec<Bytes>,
    /// The CSeq of the last request sipis sent on this leg.
    pub local_cseq: u32,
    /// The CSeq of the INVITE that made the dialog.
    pub invite_cseq: u32,
}

impl Dialog {
    /// The dialog of sipis as UAS of `invite` (RFC 3261 §12.1.1): the
    /// route set is the INVITE's Record-Route in order, the remote target
    /// its Contact. `local_cseq` starts sipis's own CSeq space.
    pub fn uas(
        invite: &Message<'_, '_>,
        local_tag: &[u8],
        local_cseq: u32,
    ) -> Result<Dialog, parser::Error> {
        let from = invite
            .header(HeaderName::From)
            .ok_or(parser::Error::MissingHeader(HeaderName::From))?;
        let to = invite
            .header(HeaderName::To)
            .ok_or(parser::Error::MissingHeader(HeaderName::To))?;
        let remote_tag = invite.from()?.tag().map(Bytes::copy_from_slice);
        Ok(Dialog {
            call_id: Bytes::copy_from_slice(invite.call_id()?),
            local_tag: Bytes::copy_from_slice(local_tag),
            remote_tag,
            local_uri: party(to)?,
            remote_uri: party(from)?,
            remote_target: crate::request::contact_uri(invite).unwrap_or_default(),
            route_set: invite
                .header_lines(HeaderName::RecordRoute)
                .map(Bytes::copy_from_slice)
                .collect(),
            local_cseq,
            invite_cseq: invite.cseq()?.seq,
        })
    }

    /// The dialog sipis opens as UAC towards a phone for a call whose
    /// INVITE is `invite` (RFC 3261 §12.1.2): the caller's Call-ID, From
    /// (and its tag) and To, the caller's CSeq; `target` is the phone's
    /// registered Contact.
    pub fn uac_for(invite: &Message<'_, '_>, target: Bytes) -> Result<Dialog, parser::Error> {
        let from = invite
            .header(HeaderName::From)
            .ok_or(parser::Error::MissingHeader(HeaderName::From))?;
        let to = invite
            .header(HeaderName::To)
            .ok_or(parser::Error::MissingHeader(HeaderName::To))?;
        let tag = invite.from()?.tag().unwrap_or_default();
        let cseq = invite.cseq()?.seq;
        Ok(Dialog {
            call_id: Bytes::copy_from_slice(invite.call_id()?),
            local_tag: Bytes::copy_from_slice(tag),
            remote_tag: None,
            local_uri: party(from)?,
            remote_uri: party(to)?,
            remote_target: target,
            route_set: Vec::new(),
            local_cseq: cseq,
            invite_cseq: cseq,
        })
    }

    /// The next CSeq of a request sipis sends on this leg (RFC 3261
    /// §12.2.1.1: one higher than the last).
    pub fn next_cseq(&mut self) -> u32 {
        self.local_cseq += 1;
        self.local_cseq
    }

    /// Writes From (local, with its tag), To (remote, with the peer's tag
    /// once known), Call-ID and `CSeq: <cseq> <method>`.
    pub fn write_parties(&self, w: &mut Writer<'_>, method: Method<'_>, cseq: u32) {
        let local_tag = Some(&self.local_tag[..]).filter(|t| !t.is_empty());
        w.header_with("From", |o| with_tag(o, &self.local_uri, local_tag));
        w.header_with("To", |o| {
            with_tag(o, &self.remote_uri, self.remote_tag.as_deref())
        });
        w.header("Call-ID", &self.call_id);
        put_cseq(w, cseq, method);
    }

    /// Writes a relayed request's From and To: the values the other leg's
    /// UA wrote (display names and parameters are its own), this leg's
    /// tags (RFC 3261 §12.2.1.1).
    pub fn write_relayed_parties(
        &self,
        w: &mut Writer<'_>,
        msg: &Message<'_, '_>,
        method: Method<'_>,
        cseq: u32,
    ) -> Result<(), parser::Error> {
        let from = msg
            .header(HeaderName::From)
            .ok_or(parser::Error::MissingHeader(HeaderName::From))?;
        let to = msg
            .header(HeaderName::To)
            .ok_or(parser::Error::MissingHeader(HeaderName::To))?;
        let local_tag = Some(&self.local_tag[..]).filter(|t| !t.is_empty());
        crate::request::put_party_header(w, "From", from, local_tag)?;
        crate::request::put_party_header(w, "To", to, self.remote_tag.as_deref())?;
        w.header("Call-ID", &self.call_id);
        put_cseq(w, cseq, method);
        Ok(())
    }

    /// A provisional or final answer of the peer on a UAC leg: its To-tag
    /// fixes the remote tag (the first one wins, RFC 3261 §12.1.2) and its
    /// Contact refreshes the remote target.
    pub fn update_from_response(&mut self, resp: &Message<'_, '_>) {
        if self.remote_tag.is_none() {
            self.remote_tag = resp
                .to()
                .ok()
                .and_then(|t| t.tag().map(Bytes::copy_from_slice));
        }
        if let Some(t) = crate::request::contact_uri(resp) {
            self.remote_target = t;
        }
    }

    /// Whether an in-dialog request from the peer belongs to this dialog:
    /// its From-tag is the peer's tag.
    pub fn is_from_peer(&self, from_tag: Option<&[u8]>) -> bool {
        self.remote_tag.is_some() && self.remote_tag.as_deref() == from_tag
    }
}

/// A From/To value rendered once: name-addr, `pn-*` and tag stripped.
fn party(value: &[u8]) -> Result<Bytes, parser::Error> {
    let mut out = BytesMut::with_capacity(value.len());
    put_party(&mut out, value, None)?;
    Ok(out.freeze())
}

fn with_tag(o: &mut BytesMut, uri: &[u8], tag: Option<&[u8]>) {
    o.put_slice(uri);
    if let Some(t) = tag {
        o.put_slice(b";tag=");
        o.put_slice(t);
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor a simulated clock
mod tests {
    use super::*;
    use sipis_parser::{parse, EMPTY_HEADER};

    const INVITE: &[u8] = b"INVITE sip:tok@sipis.example SIP/2.0\r\n\
        Via: SIP/2.0/UDP pbx.example:5060;branch=z9hG4bKup1\r\n\
        Record-Route: <sip:rr1.example;lr>\r\n\
        Record-Route: <sip:rr2.example;lr>\r\n\
        From: \"Bob\" <sip:bob@pbx.example>;tag=caller1\r\n\
        To: <sip:alice@pbx.example;pn-prid=x>\r\n\
        Call-ID: call-1@pbx\r\n\
        CSeq: 7 INVITE\r\n\
        Contact: <sip:bob@198.51.100.7:5060>\r\n\
        Content-Length: 0\r\n\r\n";

    fn invite<'h>(h: &'h mut [sipis_parser::Header<'static>]) -> Message<'h, 'static> {
        parse(INVITE, h).unwrap()
    }

    #[test]
    fn uas_dialog_takes_route_set_target_and_tags_from_the_invite() {
        let mut h = [EMPTY_HEADER; 16];
        let d = Dialog::uas(&invite(&mut h), b"up1", 100).unwrap();
        assert_eq!(&d.call_id[..], b"call-1@pbx");
        assert_eq!(d.remote_tag.as_deref(), Some(&b"caller1"[..]));
        assert_eq!(&d.remote_target[..], b"sip:bob@198.51.100.7:5060");
        assert_eq!(
            d.route_set,
            vec![
                Bytes::from_static(b"<sip:rr1.example;lr>"),
                Bytes::from_static(b"<sip:rr2.example;lr>")
            ]
        );
        assert_eq!((d.local_cseq, d.invite_cseq), (100, 7));
        let mut buf = BytesMut::new();
        let mut w = Writer::request(&mut buf, Method::Bye, &d.remote_target);
        let mut d = d;
        let n = d.next_cseq();
        d.write_parties(&mut w, Method::Bye, n);
        w.finish(b"");
        let text = std::str::from_utf8(&buf).unwrap();
        // sipis's side is the callee (To of the INVITE), without pn-*.
        assert!(
            text.contains("From: <sip:alice@pbx.example>;tag=up1\r\n"),
            "{text}"
        );
        assert!(text.contains("To: \"Bob\" <sip:bob@pbx.example>;tag=caller1\r\n"));
        assert!(text.contains("CSeq: 101 BYE\r\n"));
    }

    #[test]
    fn uac_dialog_keeps_the_callers_call_id_and_from_tag_and_learns_the_phones() {
        let mut h = [EMPTY_HEADER; 16];
        let mut d =
            Dialog::uac_for(&invite(&mut h), Bytes::from_static(b"sip:a@10.0.0.5:5060")).unwrap();
        assert_eq!(&d.local_tag[..], b"caller1");
        assert_eq!(d.remote_tag, None);
        assert_eq!((d.local_cseq, d.invite_cseq), (7, 7));
        let ringing = b"SIP/2.0 180 Ringing\r\n\
            Via: SIP/2.0/UDP sipis.example;branch=z9hG4bKleg\r\n\
            From: \"Bob\" <sip:bob@pbx.example>;tag=caller1\r\n\
            To: <sip:alice@pbx.example>;tag=phone1\r\n\
            Call-ID: call-1@pbx\r\nCSeq: 7 INVITE\r\n\
            Contact: <sip:a@203.0.113.9:40000;pn-prid=tok>\r\n\
            Content-Length: 0\r\n\r\n";
        let mut h2 = [EMPTY_HEADER; 16];
        d.update_from_response(&parse(ringing, &mut h2).unwrap());
        assert_eq!(d.remote_tag.as_deref(), Some(&b"phone1"[..]));
        assert_eq!(&d.remote_target[..], b"sip:a@203.0.113.9:40000");
        assert!(d.is_from_peer(Some(b"phone1")));
        assert!(!d.is_from_peer(Some(b"caller1")));
        let mut buf = BytesMut::new();
        let mut w = Writer::request(&mut buf, Method::Ack, &d.remote_target);
        d.write_parties(&mut w, Method::Ack, d.invite_cseq);
        w.finish(b"");
        let text = std::str::from_utf8(&buf).unwrap();
        assert!(text.contains("From: \"Bob\" <sip:bob@pbx.example>;tag=caller1\r\n"));
        assert!(text.contains("To: <sip:alice@pbx.example>;tag=phone1\r\n"));
        assert!(text.contains("Call-ID: call-1@pbx\r\nCSeq: 7 ACK\r\n"));
    }
}
