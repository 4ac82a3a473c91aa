//! `Verdict-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, the Stripe
//! scheme: the timestamp inside the signed text lets a receiver refuse replays of old
//! deliveries, and `v1=` leaves room for a second scheme during a key or algorithm change.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header's name (a fixed contract, README "Webhooks").
pub const HEADER: &str = "Verdict-Signature";

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], t: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value for `body` sent at unix time `t`.
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    let tag = mac(secret, t, body).finalize().into_bytes();
    let mut hex = String::with_capacity(tag.len() * 2);
    for b in tag {
        hex.push_str(&format!("{b:02x}"));
    }
    format!("t={t},v1={hex}")
}

/// Checks a header value against `body` in constant time, and returns its timestamp.
/// Receivers (and the tests) use it; a receiver should also refuse an old `t`.
pub fn verify(secret: &[u8], header: &str, body: &[u8]) -> Option<i64> {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1 = decode_hex(value),
            _ => {}
        }
    }
    let (t, v1) = (t?, v1?);
    mac(secret, t, body).verify_slice(&v1).ok().map(|()| t)
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_a_changed_body_or_secret_does_not() {
        let header = sign(b"s3cret", 1_700_000_000, b"{\"a\":1}");
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(
            verify(b"s3cret", &header, b"{\"a\":1}"),
            Some(1_700_000_000)
        );
        assert_eq!(verify(b"s3cret", &header, b"{\"a\":2}"), None);
        assert_eq!(verify(b"other", &header, b"{\"a\":1}"), None);
        let moved = header.replace("t=1700000000", "t=1700000001");
        assert_eq!(verify(b"s3cret", &moved, b"{\"a\":1}"), None);
    }

    #[test]
    fn the_signed_text_is_t_dot_body() {
        // Computed independently: python3 -c 'import hmac,hashlib;
        // print(hmac.new(b"s3cret", b"1700000000.{\"a\":1}", hashlib.sha256).hexdigest())'
        assert_eq!(
            sign(b"s3cret", 1_700_000_000, b"{\"a\":1}"),
            "t=1700000000,v1=1698a50bc74d1ff1db85c4e0a5297c2ad9fdba245d5737cdb789e4cc6e098940"
        );
    }
}
