//! Token formats. A token is random (from a CSPRNG), never derived from the
//! value; determinism comes from the blind index lookup, not from here.

use rand::Rng;
use serde::Deserialize;

use crate::phone::country_code;

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const BASE32_LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
/// Prefix of opaque tokens.
pub const OPAQUE_PREFIX: &str = "TKN_";
/// Random base62 characters in an opaque token (about 143 bits).
pub const OPAQUE_LEN: usize = 24;
/// Random base32 characters in an email token's local part (130 bits).
pub const EMAIL_LOCAL_LEN: usize = 26;
/// Fewest positions a length-preserving format must randomize: fewer would
/// make the token guessable from the value's shape.
pub const MIN_RANDOM_POSITIONS: usize = 6;

/// How a class's tokens look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenFormat {
    /// `TKN_` and 24 base62 characters.
    Opaque,
    /// `<26 base32 characters>@<token_domain>`: a valid email address.
    Email,
    /// `+`, the input's country code, random digits, same length: valid E.164.
    Phone,
    /// Same length and character classes as the input, last four kept.
    KeepLast4,
    /// Same length and character classes as the input, all randomized.
    Alnum,
}

impl TokenFormat {
    /// The name used in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::Opaque => "opaque",
            Self::Email => "email",
            Self::Phone => "phone",
            Self::KeepLast4 => "keep_last4",
            Self::Alnum => "alnum",
        }
    }
}

/// Why a value cannot get a token of the class's format. No variant carries
/// the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// A phone token needs a `+<digits>` value with a known country code.
    #[error("value has no known country calling code")]
    UnknownCountryCode,
    /// A length-preserving format needs enough letters or digits to randomize.
    #[error("value is too short for a length-preserving token")]
    TooShort,
    /// No configured number block is short enough for the value's length.
    #[error("no token block of the class fits a number of this length")]
    NoBlockFits,
}

/// Fewest random digits a phone token drawn from a configured number block
/// keeps after the block's prefix. The prefix, not the value, decides the
/// rest, so the value's shape is not the concern here; a block of 100
/// numbers is the smallest that still serves a site.
pub const MIN_BLOCK_RANDOM_DIGITS: usize = 2;

/// Mints a fresh token for `normalized` in `format`; phone tokens come from
/// one of `blocks` (E.164 prefixes such as `+447700900`) when any are given.
pub fn mint_in_blocks(
    format: TokenFormat,
    normalized: &str,
    token_domain: &str,
    blocks: &[String],
) -> Result<String, FormatError> {
    if format == TokenFormat::Phone && !blocks.is_empty() {
        return block_phone_token(&mut rand::thread_rng(), normalized, blocks);
    }
    mint(format, normalized, token_domain)
}

/// A phone token of `normalized`'s length from one of `blocks`: blocks of
/// the value's own country first, any block that fits the length otherwise.
fn block_phone_token(
    rng: &mut impl Rng,
    normalized: &str,
    blocks: &[String],
) -> Result<String, FormatError> {
    let digits = normalized
        .strip_prefix('+')
        .ok_or(FormatError::UnknownCountryCode)?;
    let code = country_code(digits).ok_or(FormatError::UnknownCountryCode)?;
    let fits = |block: &&String| block.len() - 1 + MIN_BLOCK_RANDOM_DIGITS <= digits.len();
    let same_country: Vec<&String> = blocks
        .iter()
        .filter(fits)
        .filter(|block| block[1..].starts_with(code))
        .collect();
    let candidates: Vec<&String> = if same_country.is_empty() {
        blocks.iter().filter(fits).collect()
    } else {
        same_country
    };
    if candidates.is_empty() {
        return Err(FormatError::NoBlockFits);
    }
    let block = candidates[rng.gen_range(0..candidates.len())];
    let mut token = String::with_capacity(normalized.len());
    token.push_str(block);
    token
        .extend((block.len() - 1..digits.len()).map(|_| char::from(b'0' + rng.gen_range(0..10u8))));
    Ok(token)
}

/// Whether `prefix` can be a number block: `+`, a known country calling
/// code and more digits, leaving room for [`MIN_BLOCK_RANDOM_DIGITS`] in the
/// longest E.164 number (15 digits).
pub fn valid_block(prefix: &str) -> bool {
    prefix.strip_prefix('+').is_some_and(|digits| {
        !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && digits.len() + MIN_BLOCK_RANDOM_DIGITS <= 15
            && country_code(&format!("{digits}00")).is_some_and(|code| code.len() <= digits.len())
    })
}

/// Mints a fresh token for `normalized` in `format`.
pub fn mint(
    format: TokenFormat,
    normalized: &str,
    token_domain: &str,
) -> Result<String, FormatError> {
    let mut rng = rand::thread_rng();
    Ok(match format {
        TokenFormat::Opaque => {
            let mut token = String::with_capacity(OPAQUE_PREFIX.len() + OPAQUE_LEN);
            token.push_str(OPAQUE_PREFIX);
            token.extend((0..OPAQUE_LEN).map(|_| BASE62[rng.gen_range(0..BASE62.len())] as char));
            token
        }
        TokenFormat::Email => {
            let mut token = String::with_capacity(EMAIL_LOCAL_LEN + 1 + token_domain.len());
            token.extend(
                (0..EMAIL_LOCAL_LEN)
                    .map(|_| BASE32_LOWER[rng.gen_range(0..BASE32_LOWER.len())] as char),
            );
            token.push('@');
            token.push_str(token_domain);
            token
        }
        TokenFormat::Phone => phone_token(&mut rng, normalized)?,
        TokenFormat::KeepLast4 => shape_preserving(&mut rng, normalized, 4)?,
        TokenFormat::Alnum => shape_preserving(&mut rng, normalized, 0)?,
    })
}

fn phone_token(rng: &mut impl Rng, normalized: &str) -> Result<String, FormatError> {
    let digits = normalized
        .strip_prefix('+')
        .ok_or(FormatError::UnknownCountryCode)?;
    let code = country_code(digits).ok_or(FormatError::UnknownCountryCode)?;
    let national_len = digits.len() - code.len();
    if national_len < MIN_RANDOM_POSITIONS {
        return Err(FormatError::TooShort);
    }
    let mut token = String::with_capacity(normalized.len());
    token.push('+');
    token.push_str(code);
    // A national number does not start with 0 in international form.
    token.push(char::from(b'1' + rng.gen_range(0..9u8)));
    token.extend((1..national_len).map(|_| char::from(b'0' + rng.gen_range(0..10u8))));
    Ok(token)
}

/// Replaces every ASCII letter and digit with a random one of the same kind,
/// except the last `keep` characters; other characters (dashes, spaces) stay.
fn shape_preserving(
    rng: &mut impl Rng,
    normalized: &str,
    keep: usize,
) -> Result<String, FormatError> {
    let chars: Vec<char> = normalized.chars().collect();
    let cut = chars.len().saturating_sub(keep);
    let random_positions = chars[..cut]
        .iter()
        .filter(|c| c.is_ascii_alphanumeric())
        .count();
    if chars.len() <= keep || random_positions < MIN_RANDOM_POSITIONS {
        return Err(FormatError::TooShort);
    }
    let token = chars
        .iter()
        .enumerate()
        .map(|(i, &c)| match c {
            _ if i >= cut => c,
            '0'..='9' => char::from(b'0' + rng.gen_range(0..10u8)),
            'a'..='z' => char::from(b'a' + rng.gen_range(0..26u8)),
            'A'..='Z' => char::from(b'A' + rng.gen_range(0..26u8)),
            _ => c,
        })
        .collect();
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_shape() {
        let token = mint(TokenFormat::Opaque, "anything", "tokens.invalid").unwrap();
        assert!(token.starts_with("TKN_"));
        assert_eq!(token.len(), 4 + OPAQUE_LEN);
        assert!(token[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn email_shape() {
        let token = mint(TokenFormat::Email, "a@b.c", "tokens.invalid").unwrap();
        let (local, domain) = token.split_once('@').unwrap();
        assert_eq!(domain, "tokens.invalid");
        assert_eq!(local.len(), EMAIL_LOCAL_LEN);
        assert!(local.bytes().all(|b| BASE32_LOWER.contains(&b)));
    }

    #[test]
    fn phone_keeps_country_code_and_length() {
        for input in [
            "+919876543210",
            "+15550109494",
            "+447700900038",
            "+8613800138000",
            "+35312345678",
        ] {
            let token = mint(TokenFormat::Phone, input, "").unwrap();
            assert_eq!(token.len(), input.len(), "{input}");
            let code = country_code(&input[1..]).unwrap();
            assert!(token[1..].starts_with(code), "{input} -> {token}");
            assert!(token[1..].bytes().all(|b| b.is_ascii_digit()));
            assert_ne!(token, input);
        }
        assert_eq!(
            mint(TokenFormat::Phone, "+999123456789", ""),
            Err(FormatError::UnknownCountryCode)
        );
    }

    #[test]
    fn keep_last4_and_alnum_keep_shape() {
        let token = mint(TokenFormat::KeepLast4, "4111-1111-1111-1234", "").unwrap();
        assert_eq!(token.len(), 19);
        assert!(token.ends_with("1234"));
        assert_eq!(token.matches('-').count(), 3);
        let token = mint(TokenFormat::Alnum, "AB12cd34EF", "").unwrap();
        assert_eq!(token.len(), 10);
        for (a, b) in token.chars().zip("AB12cd34EF".chars()) {
            assert_eq!(a.is_ascii_digit(), b.is_ascii_digit());
            assert_eq!(a.is_ascii_uppercase(), b.is_ascii_uppercase());
        }
        assert_eq!(
            mint(TokenFormat::KeepLast4, "12345678", ""),
            Err(FormatError::TooShort)
        );
        assert_eq!(
            mint(TokenFormat::Alnum, "ab-cd", ""),
            Err(FormatError::TooShort)
        );
    }
}
