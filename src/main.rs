//! The portico binary: the library's [`portico::Builder`] with the built-in filters.

/// jemalloc: an idle WebSocket costs about 0.7 KiB less RSS than with glibc's malloc (less
/// fragmentation between long-lived tunnel allocations and short-lived request ones;
/// measured with tests/bench/ws_memory.py, docs/performance.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    portico::Builder::new().run()
}
