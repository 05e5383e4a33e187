#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pieskieo::fuzz::merge_description(data));
