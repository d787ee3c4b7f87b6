//! Byte streams portico follows without buffering: WebSocket frames in a tunnel (bytes from
//! clients and peers) and a refused upgrade's chunked body (bytes from peers). Cut into reads
//! anywhere, they must be followed the same way, and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<u8>, Vec<u8>)| {
    let (data, cuts) = input;
    let cuts: Vec<usize> = cuts.iter().map(|c| usize::from(*c)).collect();
    portico::tunnel::fuzz_frames(&data, &cuts);
    portico::websocket::fuzz_chunked(&data, &cuts);
});
