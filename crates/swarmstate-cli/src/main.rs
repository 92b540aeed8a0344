//! The `swarmstate` command-line tool.

fn main() {}
