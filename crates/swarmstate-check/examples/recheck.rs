//! Checks a saved history again: `cargo run -p swarmstate-check --example recheck -- PATH`.

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: recheck HISTORY_FILE");
    let history =
        swarmstate_check::History::load(&path).unwrap_or_else(|err| panic!("{path}: {err}"));
    let checked = swarmstate_check::check(&history, std::time::Duration::from_secs(300));
    println!("{checked}");
    if !checked.verdict.is_ok() {
        std::process::exit(1);
    }
}
