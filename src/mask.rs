//! Masking secrets: the one rule behind every setting that masks
//! (`[enrich] mask_api_key_keep` / `mask_oauth_token_keep`, applied to every
//! record before any output, and `[channel] mask_keep`, applied to what the
//! channel serves on top of that).
//!
//! # The rule
//!
//! - The secrets are `api_key` and `oauth_access_token`. Absent values
//!   (`""`, `-`) and `unknown` (Local Edition's "no key") are not secrets
//!   and stay as they are.
//! - A secret of `n` characters keeps `keep` characters at each end and the
//!   rest becomes `*` (same length): `k7q2****************5ta6` with 4, as
//!   the hosted export masks. Only while at least half of it stays hidden
//!   (`n >= 4 * keep`): a shorter secret is masked entirely (`****`), never
//!   left clear.
//! - Wherever the secret appears in `uri`, `request_id` or `referrer`,
//!   as it is or percent-encoded (`%2B`, `%2b`, every byte encoded or
//!   some), that occurrence is replaced by the masked secret. (A very
//!   short key thus also masks text that merely looks like it: safe, and
//!   real keys are long.)
//!
//! Pure: no I/O, no allocation when nothing is masked.

use crate::record::{is_absent, Field, Record};

/// The fields that hold a secret.
pub const SECRET_FIELDS: [Field; 2] = [Field::ApiKey, Field::OauthAccessToken];

/// The fields a secret may also appear in.
pub const CARRIER_FIELDS: [Field; 3] = [Field::Uri, Field::RequestId, Field::Referrer];

/// What to mask: characters kept at each end of each secret (`None`: that
/// secret is not masked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Masking {
    /// For `api_key`.
    pub api_key_keep: Option<usize>,
    /// For `oauth_access_token`.
    pub oauth_token_keep: Option<usize>,
}

impl Masking {
    /// Both secrets with the same `keep` (`[channel] mask_keep`, `parse
    /// --mask-keep`).
    pub fn both(keep: Option<usize>) -> Masking {
        Masking { api_key_keep: keep, oauth_token_keep: keep }
    }

    /// True when nothing is masked.
    pub fn is_off(&self) -> bool {
        self.api_key_keep.is_none() && self.oauth_token_keep.is_none()
    }

    /// Masks the record's secrets, in their own fields and wherever they
    /// appear in [`CARRIER_FIELDS`].
    pub fn apply(&self, rec: &mut Record<'_>) {
        for (field, keep) in [(Field::ApiKey, self.api_key_keep), (Field::OauthAccessToken, self.oauth_token_keep)] {
            let Some(keep) = keep else { continue };
            let secret = rec.get(field);
            let Some(masked) = mask(secret, keep) else { continue };
            let secret = secret.to_string();
            for carrier in CARRIER_FIELDS {
                if let Some(v) = replace_occurrences(rec.get(carrier), &secret, &masked) {
                    rec.set(carrier, v);
                }
            }
            rec.set(field, masked);
        }
    }
}

/// The masked form of a secret, or `None` when `value` is not one (absent
/// or `unknown`): see the module docs.
pub fn mask(value: &str, keep: usize) -> Option<String> {
    if is_absent(value) || value == "unknown" {
        return None;
    }
    let n = value.chars().count();
    let keep = if n >= keep.saturating_mul(4) { keep } else { 0 };
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        out.push(if i < keep || i >= n - keep { c } else { '*' });
    }
    Some(out)
}

/// `text` with every occurrence of `secret` (as it is or percent-encoded)
/// replaced by `masked`; `None` when there is none.
pub fn replace_occurrences(text: &str, secret: &str, masked: &str) -> Option<String> {
    if secret.is_empty() || (!text.contains('%') && !text.contains(secret)) {
        return None;
    }
    let (t, s) = (text.as_bytes(), secret.as_bytes());
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < t.len() {
        // A match starts and ends on character boundaries (the secret is
        // UTF-8, a `%` is ASCII); checked all the same.
        match match_at(t, i, s).filter(|&end| text.is_char_boundary(i) && text.is_char_boundary(end)) {
            Some(end) => {
                let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
                o.push_str(&text[copied..i]);
                o.push_str(masked);
                copied = end;
                i = end;
            }
            None => i += 1,
        }
    }
    let mut o = out?;
    o.push_str(&text[copied..]);
    Some(o)
}

/// Where a match of `secret` starting at `t[i]` ends: each byte of the
/// secret as it is or as `%XX` (either case).
fn match_at(t: &[u8], mut i: usize, secret: &[u8]) -> Option<usize> {
    for &want in secret {
        match t.get(i)? {
            &b if b == want => i += 1,
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                let (h, l) = (hex(*t.get(i + 1)?)?, hex(*t.get(i + 2)?)?);
                if (h * 16 + l) as u8 != want {
                    return None;
                }
                i += 3;
            }
            _ => return None,
        }
    }
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_table() {
        for (value, keep, expected) in [
            ("k7q2mzp4rb9d3hxw8cyn5ta6", 4, Some("k7q2****************5ta6")),
            ("k7q2mzp4rb9d3hxw8cyn5ta6", 2, Some("k7********************a6")),
            ("abcdefghijklmnop", 4, Some("abcd********mnop")),
            // Short: masked entirely, never left clear.
            ("abcdefghi", 4, Some("*********")),
            ("abcd", 2, Some("****")),
            ("abc", 0, Some("***")),
            ("a", 3, Some("*")),
            ("ééééé", 1, Some("é***é")),
            // Not secrets.
            ("-", 2, None),
            ("unknown", 1, None),
            ("", 0, None),
        ] {
            assert_eq!(mask(value, keep).as_deref(), expected, "{value} keep {keep}");
        }
    }

    #[test]
    fn occurrences_plain_and_percent_encoded() {
        let check = |text: &str, secret: &str, expected: Option<&str>| {
            assert_eq!(replace_occurrences(text, secret, "S**T").as_deref(), expected, "{text}");
        };
        check("/v2?api_key=abc123&x=abc123", "abc123", Some("/v2?api_key=S**T&x=S**T"));
        check("/v2?api_key=a%2Bb%2fc", "a+b/c", Some("/v2?api_key=S**T"));
        check("/v2?api_key=%61%62%63%31%32%33", "abc123", Some("/v2?api_key=S**T"));
        check("/v2?k=%61bc12", "abc123", None);
        check("/v2?k=%6", "abc123", None);
        check("/v2/orders", "abc123", None);
        check("é%é abc123", "abc123", Some("é%é S**T"));
        check("", "abc", None);
        check("x", "", None);
    }

    #[test]
    fn a_record_is_masked_in_every_field_the_secrets_appear_in() {
        let mut r = Record::new_ml();
        r.set(Field::ApiKey, "abcdefgh");
        r.set(Field::OauthAccessToken, "tok+12345678");
        r.set(Field::RequestId, "1542643301.250_abcdefgh_svc");
        r.set(Field::Uri, "/v2?api_key=abcdefgh&access_token=tok%2B12345678");
        r.set(Field::Referrer, "https://a.example/?k=%61bcdefgh");
        Masking { api_key_keep: Some(2), oauth_token_keep: Some(3) }.apply(&mut r);
        assert_eq!(r.get(Field::ApiKey), "ab****gh");
        assert_eq!(r.get(Field::OauthAccessToken), "tok******678");
        assert_eq!(r.get(Field::RequestId), "1542643301.250_ab****gh_svc");
        assert_eq!(r.get(Field::Uri), "/v2?api_key=ab****gh&access_token=tok******678");
        assert_eq!(r.get(Field::Referrer), "https://a.example/?k=ab****gh");
        // Off: nothing changes.
        let mut r = Record::new_ml();
        r.set(Field::ApiKey, "abcdefgh");
        Masking::default().apply(&mut r);
        assert_eq!(r.get(Field::ApiKey), "abcdefgh");
        assert!(Masking::default().is_off() && !Masking::both(Some(0)).is_off());
    }
}
