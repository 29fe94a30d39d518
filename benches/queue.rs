//! Queue benchmarks (being written).
fn main() {}
