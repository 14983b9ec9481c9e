//! Raw bytes on a socket: tiny_http's request parsing with sessiond's limits, then sessiond's
//! request-target decoding and routing.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sessiond_fuzz::raw_exchange(data);
});
