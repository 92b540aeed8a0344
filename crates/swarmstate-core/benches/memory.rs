//! MemoryStore benchmarks (filled in below).

fn main() {}
