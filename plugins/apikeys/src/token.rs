//! Token format shared by the plug-in (which mints tokens) and the daemon (which checks their
//! shape before any RPC): `bkg_<id:12>_<secret:32><crc:6>` for API keys and `bkgs_…` for
//! sessions, base62, with a CRC32 over everything before it (auth.md §2).
//!
//! The shape check rejects typos and random strings in nanoseconds, without a call to the
//! plug-in and without bcrypt.

/// Prefix of API keys.
pub const KEY_PREFIX: &str = "bkg_";
/// Prefix of session tokens.
pub const SESSION_PREFIX: &str = "bkgs_";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 32;
const CRC_LEN: usize = 6;
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Which kind of credential a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ApiKey,
    Session,
}

/// A token that passed the shape check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub kind: Kind,
    /// The public id (key id or session id), used for lookup.
    pub id: &'a str,
    /// The secret part.
    pub secret: &'a str,
}

/// Why a string is not a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("unknown prefix")]
    Prefix,
    #[error("wrong length")]
    Length,
    #[error("invalid characters")]
    Charset,
    #[error("checksum mismatch")]
    Checksum,
}

fn is_base62(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn encode_crc(crc: u32) -> String {
    let mut n = u64::from(crc);
    let mut out = [b'0'; CRC_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out.iter().map(|b| *b as char).collect()
}

/// Checks prefix, length, alphabet and CRC; no I/O.
pub fn parse(token: &str) -> Result<Parsed<'_>, ShapeError> {
    let (kind, rest) = if let Some(rest) = token.strip_prefix(SESSION_PREFIX) {
        (Kind::Session, rest)
    } else if let Some(rest) = token.strip_prefix(KEY_PREFIX) {
        (Kind::ApiKey, rest)
    } else {
        return Err(ShapeError::Prefix);
    };
    if rest.len() != ID_LEN + 1 + SECRET_LEN + CRC_LEN {
        return Err(ShapeError::Length);
    }
    let (id, tail) = rest.split_at(ID_LEN);
    let Some(tail) = tail.strip_prefix('_') else { return Err(ShapeError::Charset) };
    let (secret, crc) = tail.split_at(SECRET_LEN);
    if !is_base62(id) || !is_base62(secret) || !is_base62(crc) {
        return Err(ShapeError::Charset);
    }
    let body = &token[..token.len() - CRC_LEN];
    if encode_crc(crc32fast::hash(body.as_bytes())) != crc {
        return Err(ShapeError::Checksum);
    }
    Ok(Parsed { kind, id, secret })
}

/// `n` base62 characters from the OS RNG, without modulo bias (bytes ≥ 248 are rejected).
pub fn random_base62(n: usize) -> String {
    use rand::RngCore;
    // ThreadRng is a CSPRNG (ChaCha12) seeded and periodically reseeded from the OS.
    let mut rng = rand::rng();
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        rng.fill_bytes(&mut buf);
        for b in buf {
            if b < 248 && out.len() < n {
                out.push(ALPHABET[(b % 62) as usize] as char);
            }
        }
    }
    out
}

/// Mints a token of `kind` with a fresh id and secret; returns `(token, id)`.
pub fn mint(kind: Kind) -> (String, String) {
    let prefix = match kind {
        Kind::ApiKey => KEY_PREFIX,
        Kind::Session => SESSION_PREFIX,
    };
    let id = random_base62(ID_LEN);
    let body = format!("{prefix}{id}_{}", random_base62(SECRET_LEN));
    let crc = encode_crc(crc32fast::hash(body.as_bytes()));
    (format!("{body}{crc}"), id)
}

/// The part of a key that is bcrypt-hashed: everything but the CRC (at most 71 bytes).
pub fn hashed_part(token: &str) -> &str {
    &token[..token.len().saturating_sub(CRC_LEN)]
}

/// A display hint that reveals no secret: `bkg_<id>_<first 4>…`.
pub fn hint(token: &str) -> String {
    match parse(token) {
        Ok(p) => {
            format!("{}{}_{}…", if p.kind == Kind::Session { SESSION_PREFIX } else { KEY_PREFIX }, p.id, &p.secret[..4])
        }
        Err(_) => "…".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_parse_and_fit_bcrypt() {
        for kind in [Kind::ApiKey, Kind::Session] {
            let (token, id) = mint(kind);
            let parsed = parse(&token).unwrap();
            assert_eq!((parsed.kind, parsed.id), (kind, id.as_str()));
            assert!(hashed_part(&token).len() <= 71);
        }
        let (key, _) = mint(Kind::ApiKey);
        assert_eq!(key.len(), 55);
    }

    #[test]
    fn shape_errors() {
        let (key, _) = mint(Kind::ApiKey);
        assert_eq!(parse("garbage"), Err(ShapeError::Prefix));
        assert_eq!(parse("bkg_short"), Err(ShapeError::Length));
        let mut wrong_crc = key.clone();
        let last = wrong_crc.pop().unwrap();
        wrong_crc.push(if last == 'a' { 'b' } else { 'a' });
        assert_eq!(parse(&wrong_crc), Err(ShapeError::Checksum));
        // By position: replacing the first occurrence of that character could hit the prefix.
        let mut bad_char = key.clone();
        bad_char.replace_range(5..6, "-");
        assert_eq!(parse(&bad_char), Err(ShapeError::Charset));
    }

    #[test]
    fn base62_is_unbiased_enough_and_right_length() {
        let s = random_base62(10_000);
        assert_eq!(s.len(), 10_000);
        assert!(is_base62(&s));
        let zeros = s.bytes().filter(|b| *b == b'0').count();
        assert!((80..250).contains(&zeros), "{zeros}");
    }

    #[test]
    fn hint_hides_the_secret() {
        let (key, id) = mint(Kind::ApiKey);
        let h = hint(&key);
        assert!(h.starts_with(&format!("bkg_{id}_")));
        assert!(h.len() < 25);
    }
}
