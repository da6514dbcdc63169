#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dnslens::fuzz::upstream_response(data);
});
