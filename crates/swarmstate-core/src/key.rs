//! Keys and key patterns.
//!
//! A [`Key`] is validated once, when it is built, so every backend can trust it: an invalid key
//! never reaches a store. A [`Pattern`] selects keys for `keys` and `watch`.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The longest key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// The rule an invalid key broke. Part of [`Error::InvalidKey`](crate::Error::InvalidKey).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyRule {
    /// A key has at least one byte.
    Empty,
    /// A key has at most [`MAX_KEY_LEN`] bytes.
    TooLong,
    /// Tokens are separated by single dots: no leading, trailing or double dot.
    EmptyToken,
    /// A token holds only `A-Z a-z 0-9 _ - / =`.
    InvalidCharacter,
    /// A key whose first token starts with `_` belongs to the store's own bookkeeping.
    Reserved,
}

impl fmt::Display for KeyRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyRule::Empty => "a key must not be empty",
            KeyRule::TooLong => "a key must be at most 1024 bytes",
            KeyRule::EmptyToken => {
                "a key is dot-separated tokens with no leading, trailing or double dot"
            }
            KeyRule::InvalidCharacter => "a key token may hold only A-Z a-z 0-9 _ - / =",
            KeyRule::Reserved => {
                "keys whose first token starts with '_' are reserved for the store itself"
            }
        })
    }
}

/// A validated key: dot-separated tokens of `A-Z a-z 0-9 _ - / =`, 1 to 1024 bytes,
/// e.g. `config.agent-pool.timeout`.
///
/// Cloning is cheap (the text is shared). Keys order and compare as their text.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Arc<str>);

impl Key {
    /// Builds a key, or fails with [`Error::InvalidKey`](crate::Error::InvalidKey) naming the
    /// key and the rule it broke. Keys whose first token starts with `_` are reserved.
    pub fn new(key: impl AsRef<str>) -> crate::Result<Key> {
        let key = key.as_ref();
        check(key, false).map_err(|rule| crate::Error::InvalidKey {
            key: key.to_owned(),
            rule,
        })?;
        Ok(Key(Arc::from(key)))
    }

    /// Builds a key that may be reserved (first token starting with `_`). For backends and
    /// recipes that keep their own bookkeeping beside user keys; applications use [`Key::new`].
    pub fn new_reserved(key: impl AsRef<str>) -> crate::Result<Key> {
        let key = key.as_ref();
        check(key, true).map_err(|rule| crate::Error::InvalidKey {
            key: key.to_owned(),
            rule,
        })?;
        Ok(Key(Arc::from(key)))
    }

    /// The key's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the key belongs to the store's own bookkeeping (first token starts with `_`).
    pub fn is_reserved(&self) -> bool {
        self.0.starts_with('_')
    }

    /// The key's dot-separated tokens.
    pub fn tokens(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }
}

fn check(key: &str, allow_reserved: bool) -> Result<(), KeyRule> {
    if key.is_empty() {
        return Err(KeyRule::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyRule::TooLong);
    }
    check_tokens(key)?;
    if !allow_reserved && key.starts_with('_') {
        return Err(KeyRule::Reserved);
    }
    Ok(())
}

fn check_tokens(text: &str) -> Result<(), KeyRule> {
    for token in text.split('.') {
        if token.is_empty() {
            return Err(KeyRule::EmptyToken);
        }
        if !token.bytes().all(is_token_byte) {
            return Err(KeyRule::InvalidCharacter);
        }
    }
    Ok(())
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'/' | b'=')
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?})", &*self.0)
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl FromStr for Key {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Key> {
        Key::new(s)
    }
}

impl TryFrom<&str> for Key {
    type Error = crate::Error;
    fn try_from(s: &str) -> crate::Result<Key> {
        Key::new(s)
    }
}

impl TryFrom<String> for Key {
    type Error = crate::Error;
    fn try_from(s: String) -> crate::Result<Key> {
        Key::new(s)
    }
}

/// Selects keys for [`keys`](crate::StateStore::keys) and [`watch`](crate::StateStore::watch).
///
/// - `*`: every key that is not reserved;
/// - `prefix.*`: every key under `prefix.` at any depth (not `prefix` itself);
/// - anything else: that exact key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// Every key that is not reserved.
    All,
    /// Every key under `prefix.` at any depth. Holds the prefix without the trailing dot.
    Prefix(Key),
    /// Exactly one key.
    Exact(Key),
}

impl Pattern {
    /// Parses `*`, `prefix.*` or an exact key. Errors are
    /// [`Error::InvalidKey`](crate::Error::InvalidKey) (for the key or prefix part) or
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) for a misplaced `*`.
    pub fn new(pattern: impl AsRef<str>) -> crate::Result<Pattern> {
        let text = pattern.as_ref();
        if text == "*" {
            return Ok(Pattern::All);
        }
        if let Some(prefix) = text.strip_suffix(".*") {
            if prefix.contains('*') {
                return Err(bad_wildcard(text));
            }
            return Ok(Pattern::Prefix(Key::new_reserved(prefix)?));
        }
        if text.contains('*') {
            return Err(bad_wildcard(text));
        }
        Ok(Pattern::Exact(Key::new_reserved(text)?))
    }

    /// Every key under `prefix.` at any depth.
    pub fn prefix(prefix: &Key) -> Pattern {
        Pattern::Prefix(prefix.clone())
    }

    /// Exactly `key`.
    pub fn exact(key: &Key) -> Pattern {
        Pattern::Exact(key.clone())
    }

    /// Whether `key` is selected. `*` never selects reserved keys; a prefix or exact pattern
    /// that names a reserved key selects it.
    pub fn matches(&self, key: &Key) -> bool {
        match self {
            Pattern::All => !key.is_reserved(),
            Pattern::Exact(exact) => exact == key,
            Pattern::Prefix(prefix) => {
                let (key, prefix) = (key.as_str(), prefix.as_str());
                key.len() > prefix.len() + 1
                    && key.starts_with(prefix)
                    && key.as_bytes()[prefix.len()] == b'.'
            }
        }
    }
}

fn bad_wildcard(text: &str) -> crate::Error {
    crate::Error::InvalidInput {
        message: format!(
            "pattern {text:?}: '*' may only stand alone or as the last token ('prefix.*')"
        ),
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::All => f.write_str("*"),
            Pattern::Prefix(prefix) => write!(f, "{prefix}.*"),
            Pattern::Exact(key) => write!(f, "{key}"),
        }
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({self})")
    }
}

impl FromStr for Pattern {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Pattern> {
        Pattern::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(key: &str) -> Option<KeyRule> {
        match Key::new(key) {
            Ok(_) => None,
            Err(crate::Error::InvalidKey { rule, .. }) => Some(rule),
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn valid_keys_are_accepted() {
        for key in ["a", "config.agent-pool.timeout", "A/b=c_d-e.0", "x.y.z.w"] {
            assert_eq!(rule(key), None, "{key}");
        }
        assert_eq!(rule(&"k".repeat(MAX_KEY_LEN)), None);
    }

    #[test]
    fn each_invalid_class_names_its_rule() {
        assert_eq!(rule(""), Some(KeyRule::Empty));
        assert_eq!(rule(&"k".repeat(MAX_KEY_LEN + 1)), Some(KeyRule::TooLong));
        assert_eq!(rule(".a"), Some(KeyRule::EmptyToken));
        assert_eq!(rule("a."), Some(KeyRule::EmptyToken));
        assert_eq!(rule("a..b"), Some(KeyRule::EmptyToken));
        assert_eq!(rule("a b"), Some(KeyRule::InvalidCharacter));
        assert_eq!(rule("a.*"), Some(KeyRule::InvalidCharacter));
        assert_eq!(rule("a.>"), Some(KeyRule::InvalidCharacter));
        assert_eq!(rule("é"), Some(KeyRule::InvalidCharacter));
        assert_eq!(rule("_meta.x"), Some(KeyRule::Reserved));
        assert!(Key::new_reserved("_meta.x").is_ok());
    }

    #[test]
    fn invalid_key_error_names_key_and_rule() {
        let err = Key::new("a..b").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("a..b") && text.contains("double dot"),
            "{text}"
        );
    }

    #[test]
    fn patterns_match_at_every_depth() {
        let key = |k: &str| Key::new(k).unwrap();
        let pattern = Pattern::new("config.*").unwrap();
        assert!(pattern.matches(&key("config.a")));
        assert!(pattern.matches(&key("config.a.b.c")));
        assert!(!pattern.matches(&key("config")));
        assert!(!pattern.matches(&key("configs.a")));
        let all = Pattern::new("*").unwrap();
        assert!(all.matches(&key("anything.at.all")));
        assert!(!all.matches(&Key::new_reserved("_lock.x").unwrap()));
        let exact = Pattern::new("config.a").unwrap();
        assert!(exact.matches(&key("config.a")));
        assert!(!exact.matches(&key("config.a.b")));
    }

    #[test]
    fn misplaced_wildcards_are_rejected() {
        for text in ["a.*.b", "*.a", "a*", "**"] {
            assert!(Pattern::new(text).is_err(), "{text}");
        }
    }
}
