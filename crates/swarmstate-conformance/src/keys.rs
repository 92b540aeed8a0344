//! Cases for key rules, patterns and `keys` listings.

use std::sync::Arc;

use super::support::{assert_entry, expect_err, key, list};
use swarmstate_core::{Error, Key, KeyRule, MAX_KEY_LEN, Pattern, StateStore, StateStoreExt};

/// Asserts `text` is refused as a key, as a parsed key and as an exact pattern, with `rule`,
/// naming the key and the rule; and that nothing reached the store.
async fn assert_key_rejected(store: &dyn StateStore, text: &str, rule: KeyRule) {
    let err = expect_err(Key::new(text), "Key::new");
    assert!(
        matches!(&err, Error::InvalidKey { key, rule: broken } if key == text && *broken == rule),
        "{text:?}: {err}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&format!("{text:?}")) && message.contains(&rule.to_string()),
        "the error names the key and the rule: {message}"
    );
    let err = expect_err(text.parse::<Key>(), "parse");
    assert!(
        matches!(&err, Error::InvalidKey { rule: broken, .. } if *broken == rule),
        "{text:?}: {err}"
    );
    // Patterns accept reserved keys, and give `*` its own meaning.
    if rule != KeyRule::Reserved && !text.contains('*') {
        let err = expect_err(Pattern::new(text), "Pattern::new");
        assert!(
            matches!(&err, Error::InvalidKey { rule: broken, .. } if *broken == rule),
            "{text:?} as a pattern: {err}"
        );
    }
    assert_eq!(list(store, "*").await, Vec::<String>::new());
}

/// The empty key is refused with `KeyRule::Empty`.
pub async fn empty_key_is_rejected_with_its_rule(store: Arc<dyn StateStore>) {
    assert_key_rejected(&*store, "", KeyRule::Empty).await;
}

/// A key of 1025 bytes is refused with `KeyRule::TooLong` (also when made of valid tokens).
pub async fn key_over_1024_bytes_is_rejected_with_its_rule(store: Arc<dyn StateStore>) {
    assert_key_rejected(&*store, &"k".repeat(MAX_KEY_LEN + 1), KeyRule::TooLong).await;
    let dotted = format!("a{}", ".b".repeat(MAX_KEY_LEN / 2));
    assert_eq!(dotted.len(), MAX_KEY_LEN + 1);
    assert_key_rejected(&*store, &dotted, KeyRule::TooLong).await;
}

/// A leading, trailing or double dot (an empty token) is refused with `KeyRule::EmptyToken`.
pub async fn key_with_an_empty_token_is_rejected_with_its_rule(store: Arc<dyn StateStore>) {
    for text in [".a", "a.", "a..b", ".", "..", "a.b.", "a.b..c"] {
        assert_key_rejected(&*store, text, KeyRule::EmptyToken).await;
    }
}

/// A character outside `A-Z a-z 0-9 _ - / =` is refused with `KeyRule::InvalidCharacter`.
pub async fn key_with_an_invalid_character_is_rejected_with_its_rule(store: Arc<dyn StateStore>) {
    for text in [
        "a b", "a\tb", "a>", "a.>", "a.*", "*a", "a:b", "a,b", "a$b", "a\\b", "é", "a\u{0}b",
        "a+b", "a%b", "a@b", "a#b", "key\n",
    ] {
        assert_key_rejected(&*store, text, KeyRule::InvalidCharacter).await;
    }
}

/// A key whose first token starts with `_` is refused with `KeyRule::Reserved`; `_` elsewhere
/// is fine.
pub async fn reserved_key_is_rejected_with_its_rule(store: Arc<dyn StateStore>) {
    for text in ["_meta", "_meta.x", "_", "__x.y"] {
        assert_key_rejected(&*store, text, KeyRule::Reserved).await;
    }
    let allowed = key("meta._x");
    let revision = store.set(&allowed, "ok").await.unwrap();
    assert_entry(&*store, &allowed, b"ok", revision).await;
}

/// A `*` anywhere but alone or as the last token of a pattern is `InvalidInput`.
pub async fn misplaced_wildcards_in_patterns_are_rejected(store: Arc<dyn StateStore>) {
    for text in ["a.*.b", "*.a", "a*", "**", "a.**", "*a.*", "a.b*.*"] {
        let err = expect_err(Pattern::new(text), "Pattern::new");
        assert!(matches!(err, Error::InvalidInput { .. }), "{text:?}: {err}");
    }
    let err = expect_err(Pattern::new("a..b.*"), "Pattern::new");
    assert!(
        matches!(
            err,
            Error::InvalidKey {
                rule: KeyRule::EmptyToken,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(list(&*store, "*").await, Vec::<String>::new());
}

/// Keys of exactly 1024 bytes (one token, or many) are written, read, listed and deleted.
pub async fn longest_valid_key_round_trips(store: Arc<dyn StateStore>) {
    let one_token = "k".repeat(MAX_KEY_LEN);
    let many_tokens = format!("tt{}", ".t".repeat((MAX_KEY_LEN - 2) / 2));
    assert_eq!(many_tokens.len(), MAX_KEY_LEN);
    for text in [&one_token, &many_tokens] {
        let k = key(text);
        let revision = store.set(&k, text.clone()).await.unwrap();
        assert_entry(&*store, &k, text.as_bytes(), revision).await;
    }
    assert_eq!(
        list(&*store, "*").await,
        vec![one_token.clone(), many_tokens.clone()]
    );
    assert_eq!(list(&*store, "tt.t.*").await, vec![many_tokens.clone()]);
    assert_eq!(list(&*store, &many_tokens).await, vec![many_tokens.clone()]);
    for text in [&one_token, &many_tokens] {
        let deleted = store.delete(&key(text), None).await.unwrap();
        assert!(deleted.is_some(), "delete of the longest key");
    }
    assert_eq!(list(&*store, "*").await, Vec::<String>::new());
}

/// Keys using every allowed character (`A-Z a-z 0-9 _ - / =`), alone and mixed, round-trip
/// through put, get and `keys`.
pub async fn keys_with_every_allowed_character_round_trip(store: Arc<dyn StateStore>) {
    let texts = [
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "abcdefghijklmnopqrstuvwxyz",
        "0123456789",
        "-",
        "/",
        "=",
        "x._",
        "x._-/=",
        "a_b-c/d=e.F_0.9-z",
        "A",
        "z",
        "0",
        "-leading-dash./leading-slash.=leading-equals",
    ];
    for text in texts {
        let k = key(text);
        let revision = store.set(&k, text).await.unwrap();
        assert_entry(&*store, &k, text.as_bytes(), revision).await;
    }
    let mut expected: Vec<String> = texts.iter().map(|text| (*text).to_owned()).collect();
    expected.sort();
    assert_eq!(list(&*store, "*").await, expected);
}

/// `keys("*")` lists every present key in key (byte) order, and no reserved key; a reserved
/// key is still readable and selected by an exact pattern naming it.
pub async fn keys_star_lists_every_key_sorted_and_excludes_reserved_keys(
    store: Arc<dyn StateStore>,
) {
    for text in ["b", "a.z", "a", "c.b.a", "B", "a.b", "a-b", "a.b.c"] {
        store.set(&key(text), text).await.unwrap();
    }
    let reserved = Key::new_reserved("_conformance.hidden").unwrap();
    let revision = store.set(&reserved, "bookkeeping").await.unwrap();
    assert_eq!(
        list(&*store, "*").await,
        vec!["B", "a", "a-b", "a.b", "a.b.c", "a.z", "b", "c.b.a"]
    );
    assert_entry(&*store, &reserved, b"bookkeeping", revision).await;
    let listed = store.list_keys(&Pattern::exact(&reserved)).await.unwrap();
    assert_eq!(listed, vec![reserved]);
}

/// `keys("prefix.*")` lists keys under `prefix.` at every depth, and neither `prefix` itself
/// nor keys that merely start with the same letters.
pub async fn keys_prefix_matches_every_depth_and_nothing_else(store: Arc<dyn StateStore>) {
    for text in [
        "app",
        "app.a",
        "app.a.b",
        "app.a.b.c",
        "app.z",
        "apps.x",
        "app-x.y",
        "ap.p",
        "x.app.a",
        "appa",
    ] {
        store.set(&key(text), text).await.unwrap();
    }
    assert_eq!(
        list(&*store, "app.*").await,
        vec!["app.a", "app.a.b", "app.a.b.c", "app.z"]
    );
    assert_eq!(list(&*store, "app.a.*").await, vec!["app.a.b", "app.a.b.c"]);
    assert_eq!(list(&*store, "app.a.b.c.*").await, Vec::<String>::new());
    assert_eq!(list(&*store, "nothing.*").await, Vec::<String>::new());
}

/// An exact pattern lists that key if present, and never its children or siblings.
pub async fn keys_exact_lists_only_that_key(store: Arc<dyn StateStore>) {
    for text in ["app", "app.a", "app.a.b", "app.ab"] {
        store.set(&key(text), text).await.unwrap();
    }
    assert_eq!(list(&*store, "app.a").await, vec!["app.a"]);
    assert_eq!(list(&*store, "app").await, vec!["app"]);
    assert_eq!(list(&*store, "app.b").await, Vec::<String>::new());
}
