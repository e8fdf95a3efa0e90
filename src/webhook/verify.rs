//! The signature check, over the exact bytes received and before anything
//! else looks at them.

use crate::secret::Secret;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Length of the hex digest after `sha256=`.
const HEX_LEN: usize = 64;

/// The digest of an `X-Clawmesh-Signature` value: exactly `sha256=` and 64
/// lowercase hex digits. Anything else (empty, truncated, uppercase, another
/// prefix, padding) is refused here, before any HMAC is computed.
pub fn parse_signature(header: &[u8]) -> Option<[u8; 32]> {
    let hex = header.strip_prefix(b"sha256=")?;
    if hex.len() != HEX_LEN {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// True when `digest` is the HMAC-SHA256 of `body` under any of `secrets`.
/// Every secret is tried (no early exit) and each comparison is constant
/// time (`verify_slice` compares with `subtle`), so timing tells nothing
/// about the digest nor about which secret matched.
pub fn verify(secrets: &[Secret], body: &[u8], digest: &[u8; 32]) -> bool {
    let mut ok = false;
    for s in secrets {
        let mut mac = HmacSha256::new_from_slice(s.expose().as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(body);
        ok |= mac.verify_slice(digest).is_ok();
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    // Signed as the simulator signs its deliveries, not by a copy of the
    // code under test.
    use crate::sim::sign_webhook as sign;

    #[test]
    fn only_the_exact_form_parses() {
        let good = sign("s", b"{}");
        assert!(parse_signature(good.as_bytes()).is_some());
        let hex = &good[7..];
        for bad in [
            String::new(),
            "sha256=".to_string(),
            format!("sha256={}", &hex[..63]),
            format!("sha256={}", &hex[..1]),
            format!("sha256={hex}0"),
            format!("sha256={}", hex.to_uppercase()),
            format!("sha1={hex}"),
            format!("SHA256={hex}"),
            format!(" sha256={hex}"),
            format!("sha256={hex} "),
            format!("sha256={}g", &hex[..63]),
        ] {
            assert!(parse_signature(bad.as_bytes()).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn either_of_two_secrets_verifies() {
        let secrets = [Secret::new("old"), Secret::new("new")];
        for s in ["old", "new"] {
            let d = parse_signature(sign(s, b"body").as_bytes()).unwrap();
            assert!(verify(&secrets, b"body", &d));
            assert!(!verify(&secrets, b"body\n", &d));
        }
        let d = parse_signature(sign("other", b"body").as_bytes()).unwrap();
        assert!(!verify(&secrets, b"body", &d));
    }
}
