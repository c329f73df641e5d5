//! Code generation and user-code normalisation (RFC 8628 §5.1, §5.2, §6.1).

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use rand::{rngs::OsRng, Rng, RngCore};
use sha2::{Digest, Sha256};

/// The user-code alphabet of RFC 8628 §6.1: no vowels (no words), no digits, no look-alikes.
pub const USER_CODE_ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";
/// Characters in a user code: 20^8 ≈ 2.56e10 possibilities (≈ 34.5 bits).
pub const USER_CODE_LEN: usize = 8;

/// A fresh random identifier of `bytes` random bytes from the OS CSPRNG, base64url.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// The SHA-256 of a device code, hex. Stores keep only this, so a leaked store does not hand
/// out live device codes.
pub fn hash_device_code(device_code: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(device_code.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// A user code in canonical form: 8 characters from [`USER_CODE_ALPHABET`], no dash.
pub fn new_user_code() -> String {
    let mut rng = OsRng;
    (0..USER_CODE_LEN)
        .map(|_| USER_CODE_ALPHABET[rng.gen_range(0..USER_CODE_ALPHABET.len())] as char)
        .collect()
}

/// The random parts of a new grant.
pub struct NewCodes {
    pub device_code: String,
    pub id: String,
    pub user_code: String,
}

/// Draws a new grant's device code (256 bits, URL-safe: §5.2, it is a bearer secret until
/// used), id (128 bits) and user code with one read of the OS CSPRNG instead of a dozen (each
/// `getrandom` is a system call).
pub fn new_codes() -> NewCodes {
    let mut buf = [0u8; 32 + 16 + 24];
    OsRng.fill_bytes(&mut buf);
    let (device, rest) = buf.split_at(32);
    let (id, letters) = rest.split_at(16);
    // Unbiased letters: bytes below 240 (12 × 20) are used mod 20, others skipped; 24 bytes hold
    // 8 usable ones except with probability ~1e-15, and then the slow path draws afresh.
    let n = USER_CODE_ALPHABET.len() as u8;
    let user_code: String = letters
        .iter()
        .filter(|b| **b < 240)
        .take(USER_CODE_LEN)
        .map(|b| char::from(USER_CODE_ALPHABET[usize::from(b % n)]))
        .collect();
    NewCodes {
        device_code: URL_SAFE_NO_PAD.encode(device),
        id: URL_SAFE_NO_PAD.encode(id),
        user_code: if user_code.len() == USER_CODE_LEN {
            user_code
        } else {
            new_user_code()
        },
    }
}

/// The user code as shown to people: `XXXX-XXXX`.
pub fn display_user_code(canonical: &str) -> String {
    if canonical.len() == USER_CODE_LEN && canonical.is_ascii() {
        format!("{}-{}", &canonical[..4], &canonical[4..])
    } else {
        canonical.to_string()
    }
}

/// Normalises what a person typed (§6.1): case is ignored, and so are dashes and white space.
/// Returns `None` when the rest is not exactly 8 characters of the alphabet, so a malformed code
/// never reaches the store.
pub fn normalize_user_code(input: &str) -> Option<String> {
    if input.len() > 64 {
        return None;
    }
    let mut out = String::with_capacity(USER_CODE_LEN);
    for c in input.chars() {
        if c == '-' || c.is_whitespace() {
            continue;
        }
        let up = c.to_ascii_uppercase();
        if !up.is_ascii() || !USER_CODE_ALPHABET.contains(&(up as u8)) {
            return None;
        }
        out.push(up);
    }
    (out.len() == USER_CODE_LEN).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn user_codes_use_the_alphabet_and_length() {
        let mut seen = HashSet::new();
        for _ in 0..2000 {
            let c = new_user_code();
            assert_eq!(c.len(), USER_CODE_LEN);
            assert!(c.bytes().all(|b| USER_CODE_ALPHABET.contains(&b)), "{c}");
            seen.insert(c);
        }
        // 2000 draws from 2.56e10: a collision here means the generator is broken.
        assert_eq!(seen.len(), 2000);
        // Every letter of the alphabet shows up: the draw is not biased to a subset.
        let letters: HashSet<char> = seen.iter().flat_map(|c| c.chars()).collect();
        assert_eq!(letters.len(), USER_CODE_ALPHABET.len());
    }

    #[test]
    fn device_codes_are_long_and_url_safe() {
        let a = new_codes().device_code;
        let b = new_codes().device_code;
        assert_ne!(a, b);
        assert_eq!(a.len(), 43); // 32 bytes base64url without padding
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(hash_device_code(&a).len(), 64);
        assert_ne!(hash_device_code(&a), hash_device_code(&b));
    }

    #[test]
    fn normalisation_ignores_case_dashes_and_spaces() {
        assert_eq!(
            normalize_user_code("WDJB-MJHT").as_deref(),
            Some("WDJBMJHT")
        );
        assert_eq!(
            normalize_user_code("wdjb mjht").as_deref(),
            Some("WDJBMJHT")
        );
        assert_eq!(
            normalize_user_code(" w-d-j-b-m-j-h-t ").as_deref(),
            Some("WDJBMJHT")
        );
        assert_eq!(normalize_user_code("WDJB-MJH"), None); // too short
        assert_eq!(normalize_user_code("WDJB-MJHTX"), None); // too long
        assert_eq!(normalize_user_code("WDJB-MJHA"), None); // vowel: not in the alphabet
        assert_eq!(normalize_user_code("WDJB-MJH1"), None); // digit
        assert_eq!(normalize_user_code("WDJB-MJHÉ"), None); // non-ASCII
        assert_eq!(normalize_user_code(""), None);
        assert_eq!(normalize_user_code(&"B".repeat(10_000)), None);
    }

    #[test]
    fn hash_is_lowercase_hex_sha256() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            hash_device_code("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn new_codes_have_every_part_well_formed() {
        let mut users = HashSet::new();
        let mut letters = [0usize; 20];
        for _ in 0..2000 {
            let c = new_codes();
            assert_eq!(c.device_code.len(), 43);
            assert_eq!(c.id.len(), 22);
            assert_ne!(c.device_code[..22], c.id);
            assert_eq!(c.user_code.len(), USER_CODE_LEN);
            for b in c.user_code.bytes() {
                let i = USER_CODE_ALPHABET.iter().position(|a| *a == b).unwrap();
                letters[i] += 1;
            }
            users.insert(c.user_code);
        }
        assert_eq!(users.len(), 2000);
        // 16 000 letters, 800 expected each: a biased mapping would show here.
        assert!(
            letters.iter().all(|n| (650..950).contains(n)),
            "{letters:?}"
        );
    }

    #[test]
    fn display_form() {
        assert_eq!(display_user_code("WDJBMJHT"), "WDJB-MJHT");
    }
}
