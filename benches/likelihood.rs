fn main() {
    // Benchmarks for this crate are added with its issue.
}
