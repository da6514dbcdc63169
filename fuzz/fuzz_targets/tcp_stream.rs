#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dnslens::fuzz::tcp_stream(data);
});
