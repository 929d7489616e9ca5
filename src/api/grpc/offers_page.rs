//! `SearchOffersResponse` written by hand (build.rs maps the proto message to this type): its
//! `offers` (field 3) are bytes encoded once per rendered page (`OffersPage::offers_encoded`)
//! and copied into every answer of that page, as REST splices its rendered JSON, instead of
//! converting and encoding the same offers on every call. The other fields are encoded as
//! prost encodes them; the wire form is the proto's (a unit test decodes it with a derived
//! message of the same fields). Only ever encoded: the server never reads one.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};

use super::pb::ProviderReport;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct SearchOffersResponse {
    pub status: String,
    pub stale: bool,
    /// Field 3, `repeated Offer offers`, encoded: each offer's tag, length and message.
    pub offers: Bytes,
    pub total: u64,
    pub next_cursor: Option<String>,
    pub providers: HashMap<String, ProviderReport>,
}

/// `offers` as field 3 of the message.
pub fn encode_offers(offers: &[super::pb::Offer]) -> Bytes {
    let mut buf = Vec::new();
    for o in offers {
        encoding::message::encode(3, o, &mut buf);
    }
    Bytes::from(buf)
}

impl prost::Message for SearchOffersResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.status.is_empty() {
            encoding::string::encode(1, &self.status, buf);
        }
        if self.stale {
            encoding::bool::encode(2, &self.stale, buf);
        }
        buf.put_slice(&self.offers);
        if self.total != 0 {
            encoding::uint64::encode(4, &self.total, buf);
        }
        if let Some(c) = &self.next_cursor {
            encoding::string::encode(5, c, buf);
        }
        encoding::hash_map::encode(
            encoding::string::encode,
            encoding::string::encoded_len,
            encoding::message::encode,
            encoding::message::encoded_len,
            6,
            &self.providers,
            buf,
        );
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        (if self.status.is_empty() {
            0
        } else {
            encoding::string::encoded_len(1, &self.status)
        }) + (if self.stale {
            encoding::bool::encoded_len(2, &self.stale)
        } else {
            0
        }) + self.offers.len()
            + (if self.total != 0 {
                encoding::uint64::encoded_len(4, &self.total)
            } else {
                0
            })
            + self
                .next_cursor
                .as_ref()
                .map_or(0, |c| encoding::string::encoded_len(5, c))
            + encoding::hash_map::encoded_len(
                encoding::string::encoded_len,
                encoding::message::encoded_len,
                6,
                &self.providers,
            )
    }

    fn clear(&mut self) {
        *self = SearchOffersResponse::default();
    }
}

#[cfg(test)]
mod tests {
    use super::super::pb;
    use super::*;
    use prost::Message;

    /// The proto's message as prost derives it, to read the hand-written encoding back.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Derived {
        #[prost(string, tag = "1")]
        status: String,
        #[prost(bool, tag = "2")]
        stale: bool,
        #[prost(message, repeated, tag = "3")]
        offers: Vec<pb::Offer>,
        #[prost(uint64, tag = "4")]
        total: u64,
        #[prost(string, optional, tag = "5")]
        next_cursor: Option<String>,
        #[prost(map = "string, message", tag = "6")]
        providers: HashMap<String, pb::ProviderReport>,
    }

    #[test]
    fn the_hand_written_encoding_is_the_protos() {
        let offers: Vec<pb::Offer> = (0..3)
            .map(|i| pb::Offer {
                id: format!("vastai:{i}"),
                price_per_hour: "0.452".into(),
                gpu_count: i,
                reliability: Some(0.99),
                ..Default::default()
            })
            .collect();
        let mut providers = HashMap::new();
        providers.insert(
            "vastai".to_owned(),
            pb::ProviderReport {
                status: "ok".into(),
                offers: Some(3),
                ..Default::default()
            },
        );
        let ours = SearchOffersResponse {
            status: "partial".into(),
            stale: true,
            offers: encode_offers(&offers),
            total: 42,
            next_cursor: Some("20.ab".into()),
            providers: providers.clone(),
        };
        let bytes = ours.encode_to_vec();
        assert_eq!(bytes.len(), ours.encoded_len());
        let back = Derived::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            back,
            Derived {
                status: "partial".into(),
                stale: true,
                offers,
                total: 42,
                next_cursor: Some("20.ab".into()),
                providers,
            }
        );
        // and an empty answer is an empty message, as prost writes it
        assert!(SearchOffersResponse::default().encode_to_vec().is_empty());
    }
}
