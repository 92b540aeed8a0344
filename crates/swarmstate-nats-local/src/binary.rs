//! Finding the `nats-server` binary, checking its version, and deciding whether a test without
//! one is skipped (locally) or fails (under CI).

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

/// The environment variable that names the `nats-server` binary to test with.
pub const SERVER_ENV: &str = "SWARMSTATE_NATS_SERVER";

/// The oldest `nats-server` swarmstate supports: 2.12.1 brought per-message TTLs, delete markers
/// for TTL expiry, and atomic batches with per-key expected revisions.
pub const MINIMUM_SERVER_VERSION: (u32, u32, u32) = (2, 12, 1);

/// Finds the `nats-server` binary to test with, or `None` if there is none.
///
/// In order: the path in the environment variable `SWARMSTATE_NATS_SERVER` (best absolute; a
/// bare name is looked up on `PATH`); the pinned copy `scripts/install-nats-server` installs in
/// `.tools/nats/bin` under the workspace root; `nats-server` on `PATH`. The answer is computed
/// once per process.
///
/// # Panics
///
/// If `SWARMSTATE_NATS_SERVER` names a file that does not exist, or the binary found is older than
/// [`MINIMUM_SERVER_VERSION`] or does not report a version: a wrong server is a setup error to
/// fix, not a reason to skip.
pub fn nats_server_binary() -> Option<PathBuf> {
    static BINARY: OnceLock<Option<PathBuf>> = OnceLock::new();
    BINARY.get_or_init(find_and_check_binary).clone()
}

/// Returns the `nats-server` binary for a test that needs one, or `None` when the test should
/// return early because none is installed.
///
/// Under CI a missing server is a failure, never a skip: when the environment variable `CI` is
/// set to anything but empty, `false` or `0`, this panics with instructions instead of returning
/// `None`. Elsewhere it prints a loud notice to stderr (past the test harness's output capture)
/// and returns `None`, so that `cargo test` works on a machine without NATS.
///
/// ```no_run
/// # async fn example() {
/// let Some(_) = swarmstate_nats_local::require_server() else { return };
/// # }
/// ```
///
/// # Panics
///
/// Under CI when no server is found, and in every case where [`nats_server_binary`] panics.
pub fn require_server() -> Option<PathBuf> {
    // Written to the process's stderr directly, not through `eprintln!`, which the test harness
    // captures and shows only for failing tests.
    nats_server_binary().or_else(|| missing_server(running_under_ci(), &mut io::stderr()))
}

/// What [`require_server`] does without a server: under CI, fail; elsewhere, skip loudly.
fn missing_server(ci: bool, notice: &mut dyn Write) -> Option<PathBuf> {
    let how = format!(
        "Install the pinned server with `scripts/install-nats-server` (scripts/test does this), \
         or set {SERVER_ENV}=/path/to/nats-server (version >= {}).",
        version_string(MINIMUM_SERVER_VERSION)
    );
    if ci {
        panic!("no nats-server found, and CI is set, so NATS tests must not be skipped. {how}");
    }
    static ANNOUNCED: AtomicBool = AtomicBool::new(false);
    let message = if ANNOUNCED.swap(true, Ordering::Relaxed) {
        "SKIPPED: NATS test (no nats-server found; see above)\n".to_string()
    } else {
        let rule = "=".repeat(78);
        format!(
            "{rule}\nSKIPPING NATS TESTS: no nats-server found, so tests that need one pass \
             without running.\n{how}\nUnder CI (CI=true) a missing server fails these tests \
             instead.\n{rule}\n"
        )
    };
    let _ = notice.write_all(message.as_bytes());
    None
}

/// The binary a fixture is about to start.
///
/// # Panics
///
/// If there is none, with instructions: callers ask [`require_server`] or
/// [`nats_server_binary`] first.
pub(crate) fn expect_binary() -> PathBuf {
    nats_server_binary().unwrap_or_else(|| {
        panic!(
            "no nats-server found: start the test with `let Some(_) = require_server() else \
             {{ return }};`, and install one with scripts/install-nats-server"
        )
    })
}

fn running_under_ci() -> bool {
    ci_value_means_ci(std::env::var("CI").ok().as_deref())
}

/// `CI` set to anything but empty, `0` or `false` (any case) means CI, as CI services set it to
/// `true` (or, on some, `1`).
fn ci_value_means_ci(value: Option<&str>) -> bool {
    value.is_some_and(|value| {
        let value = value.trim();
        !(value.is_empty() || value == "0" || value.eq_ignore_ascii_case("false"))
    })
}

fn find_and_check_binary() -> Option<PathBuf> {
    let binary = find_binary()?;
    let version = server_version(&binary);
    let minimum = version_string(MINIMUM_SERVER_VERSION);
    match version {
        Some(found) if found >= MINIMUM_SERVER_VERSION => Some(binary),
        Some(found) => panic!(
            "{} is nats-server {}, but swarmstate needs nats-server >= {minimum}. Install the \
             pinned version with scripts/install-nats-server (and unset {SERVER_ENV}), or point \
             {SERVER_ENV} at a newer server.",
            binary.display(),
            version_string(found)
        ),
        None => panic!(
            "`{} --version` did not report a nats-server version; need nats-server >= {minimum}",
            binary.display()
        ),
    }
}

fn find_binary() -> Option<PathBuf> {
    if let Some(value) = std::env::var_os(SERVER_ENV).filter(|value| !value.is_empty()) {
        let named = PathBuf::from(&value);
        let found = if named.components().count() == 1 {
            search_path(&named)
        } else {
            Some(named.clone()).filter(|path| path.is_file())
        };
        return Some(found.unwrap_or_else(|| {
            let problem = if named.components().count() == 1 {
                "names no program on PATH"
            } else {
                "is not a file (a relative path is taken from the test's working directory, the \
                 crate's directory: use an absolute path)"
            };
            panic!(
                "{SERVER_ENV}={} {problem}; point it at a nats-server binary or unset it",
                named.display()
            )
        }));
    }
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/nats/bin/nats-server");
    if installed.is_file() {
        return Some(installed.canonicalize().unwrap_or(installed));
    }
    search_path(Path::new("nats-server"))
}

fn search_path(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The version `nats-server --version` reports (`nats-server: v2.15.1`).
fn server_version(binary: &Path) -> Option<(u32, u32, u32)> {
    let output = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_version(&text)
}

fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let mut numbers = text[start..]
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    let major = numbers.next()?.ok()?;
    let minor = numbers.next()?.ok()?;
    let patch = numbers.next()?.ok()?;
    Some((major, minor, patch))
}

fn version_string((major, minor, patch): (u32, u32, u32)) -> String {
    format!("{major}.{minor}.{patch}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_nats_server_output() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15, 1)));
        assert_eq!(parse_version("nats-server: v2.12.1-RC.3"), Some((2, 12, 1)));
        assert_eq!(parse_version("nats-server: v10.0.12"), Some((10, 0, 12)));
        assert_eq!(parse_version("no version here"), None);
        assert!((2, 9, 10) < MINIMUM_SERVER_VERSION);
        assert!((2, 12, 1) >= MINIMUM_SERVER_VERSION);
    }

    #[test]
    fn ci_means_set_to_anything_but_empty_zero_or_false() {
        for value in ["true", "1", "yes", "TRUE"] {
            assert!(ci_value_means_ci(Some(value)), "{value}");
        }
        for value in [None, Some(""), Some("0"), Some("false"), Some("False")] {
            assert!(!ci_value_means_ci(value), "{value:?}");
        }
    }

    #[test]
    fn missing_server_is_a_skip_locally_and_a_failure_under_ci() {
        let mut notice = Vec::new();
        assert_eq!(missing_server(false, &mut notice), None);
        let notice = String::from_utf8(notice).unwrap();
        assert!(notice.contains("scripts/install-nats-server"), "{notice}");
        let under_ci = std::panic::catch_unwind(|| missing_server(true, &mut io::sink()));
        let message = under_ci.expect_err("a missing server must fail under CI");
        let message = message
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(message.contains("scripts/install-nats-server"), "{message}");
    }
}
